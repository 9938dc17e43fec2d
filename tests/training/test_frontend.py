"""The spectrogram front-end: shapes, semitone spacing, and gain invariance."""

import numpy as np
import pytest
import tensorflow as tf

from data_gen import constants as C
from training.frontend import FrontendConfig, SpectrogramFrontend, filterbank_matrix, log_power


def sine(hz: float, seconds: float = C.WINDOW_SECONDS) -> np.ndarray:
    t = np.arange(int(seconds * C.SAMPLE_RATE)) / C.SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("kind", ["logfreq", "logmel"])
def test_output_shape(kind):
    cfg = FrontendConfig(kind=kind)
    layer = SpectrogramFrontend(**cfg.to_dict())
    out = layer(np.zeros((2, C.WINDOW_SAMPLES), np.float32) + sine(440.0))
    assert out.shape == (2, cfg.window_frames, cfg.bins, 1)
    assert cfg.window_frames == 1 + (C.WINDOW_SAMPLES - cfg.n_fft) // cfg.hop
    assert np.all(np.isfinite(out.numpy()))


def test_filters_are_semitone_spaced_and_cover_every_bin():
    cfg = FrontendConfig(kind="logfreq", bins_per_semitone=1)
    centers = cfg.center_hz()
    np.testing.assert_allclose(centers[1:] / centers[:-1], 2 ** (1 / 12), rtol=1e-9)
    fb = filterbank_matrix(cfg)
    assert fb.shape == (cfg.n_fft // 2 + 1, cfg.bins)
    assert np.all(fb.max(axis=0) > 0.3)  # no blind band, even below the FFT's resolution


@pytest.mark.parametrize("semitones", [3, -5, 7])
def test_pitch_shift_of_input_is_a_shift_of_the_logfreq_spectrogram(semitones):
    cfg = FrontendConfig(kind="logfreq")
    base_hz = 440.0 * 2 ** (-2 / 12)  # G4, away from the edges
    a = log_power(tf.constant(sine(base_hz)), cfg).numpy().mean(axis=0)
    b = log_power(tf.constant(sine(base_hz * 2 ** (semitones / 12))), cfg).numpy().mean(axis=0)
    assert int(np.argmax(b)) - int(np.argmax(a)) == semitones * cfg.bins_per_semitone
    # Beyond the peak, the shape of the spectrum moves along with it.
    k = semitones
    lo, hi = max(0, -k) + 20, min(cfg.bins, cfg.bins - k) - 20
    corr = np.corrcoef(a[lo:hi], b[lo + k:hi + k])[0, 1]
    assert corr > 0.95


def test_normalised_output_ignores_gain():
    cfg = FrontendConfig()
    layer = SpectrogramFrontend(**cfg.to_dict())
    x = sine(330.0)[None] + 0.01 * np.random.default_rng(0).standard_normal((1, C.WINDOW_SAMPLES)).astype(np.float32)
    loud, soft = layer(x).numpy(), layer(0.05 * x).numpy()
    np.testing.assert_allclose(loud, soft, atol=1e-3)
    assert abs(loud.mean()) < 1e-4 and abs(loud.std() - 1) < 1e-2


def test_cropping_frames_equals_frontend_of_cropped_audio():
    """What training does (crop the cached spectrogram of a 6 s clip) is what serving computes."""
    cfg = FrontendConfig()
    rng = np.random.default_rng(1)
    clip = (0.1 * rng.standard_normal(C.EXAMPLE_SAMPLES)).astype(np.float32)
    start = 7
    full = log_power(tf.constant(clip), cfg).numpy()[start:start + cfg.window_frames]
    window = clip[start * cfg.hop: start * cfg.hop + C.WINDOW_SAMPLES]
    direct = log_power(tf.constant(window), cfg).numpy()
    np.testing.assert_allclose(full, direct, atol=1e-3)
