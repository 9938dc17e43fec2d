"""Background noise, reverb and the phone microphone (data_gen.synth.channel)."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.synth import SynthError, contour_from_notes, synthesize
from data_gen.synth.channel import NOISE_KINDS, PhoneMic, add_noise, make_noise, phone_mic, reverberate


def hum(seconds: float = 2.0) -> np.ndarray:
    notes = [(0.1 + 0.3 * i, 0.38 + 0.3 * i, 57 + (i % 5)) for i in range(int((seconds - 0.3) / 0.3))]
    return synthesize("hum", contour_from_notes(notes), seed=0).astype(np.float64)


def band_db(x: np.ndarray, lo: float, hi: float) -> float:
    """Mean power spectral density (dB) between lo and hi Hz."""
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.shape[0], 1.0 / C.SAMPLE_RATE)
    return float(10 * np.log10(spec[(f >= lo) & (f < hi)].mean() + 1e-30))


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("snr", [0.0, 12.0])
def test_noise_is_mixed_at_the_requested_snr(kind, snr):
    clean = hum()
    noisy = add_noise(clean, kind, snr, np.random.default_rng(1))
    noise = noisy - clean
    measured = 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))
    assert measured == pytest.approx(snr, abs=0.5)
    assert np.all(np.isfinite(noisy))


def test_noise_colours():
    n = 4 * C.SAMPLE_RATE
    rng = np.random.default_rng(2)
    white, pink = make_noise("white", n, rng), make_noise("pink", n, rng)
    room, babble = make_noise("room", n, rng), make_noise("babble", n, rng)
    for x in (white, pink, room, babble):
        assert x.shape == (n,) and np.sqrt(np.mean(x**2)) == pytest.approx(1.0, rel=1e-6)
    # white: flat; pink: about -3 dB per octave (~-10 dB from 250 Hz to 2.5 kHz); room: rumble.
    assert abs(band_db(white, 200, 300) - band_db(white, 2000, 3000)) < 1.5
    assert band_db(pink, 200, 300) - band_db(pink, 2000, 3000) == pytest.approx(10.0, abs=1.5)
    assert band_db(room, 20, 200) - band_db(room, 2000, 4000) > 12.0
    # babble: speech-like (most energy below 2 kHz) and syllabically modulated.
    assert band_db(babble, 100, 1500) - band_db(babble, 4000, 7000) > 15.0
    frames = babble[: n // 400 * 400].reshape(-1, 400)  # 25 ms
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    assert np.std(level) > 1.5
    with pytest.raises(SynthError, match="unknown noise kind"):
        make_noise("traffic", 100, rng)


def test_phone_mic_band_limits():
    x = make_noise("white", 2 * C.SAMPLE_RATE, np.random.default_rng(3)) * 0.1
    mic = PhoneMic(low_hz=300.0, high_hz=3400.0, ratio=2.0, threshold_db=-20.0, drive=1.5)
    y = phone_mic(x, mic)
    assert y.shape == x.shape and np.all(np.isfinite(y))
    assert np.max(np.abs(y)) == pytest.approx(np.max(np.abs(x)), rel=1e-6)
    inband = band_db(y, 800, 2500)
    assert inband - band_db(y, 20, 100) > 15.0
    assert inband - band_db(y, 5000, 8000) > 30.0


def test_phone_mic_codec_and_mu_law_keep_the_tune():
    """Degraded, but the same harmonics at the same times: the log spectrograms (400-3000 Hz)
    of input and output stay strongly correlated."""
    import librosa

    def logspec(v):
        s = np.abs(librosa.stft(v, n_fft=1024, hop_length=C.PITCH_HOP)) ** 2
        f = librosa.fft_frequencies(sr=C.SAMPLE_RATE, n_fft=1024)
        return 10 * np.log10(s[(f >= 400) & (f < 3000)] + 1e-8).ravel()

    x = hum()
    for mic in (PhoneMic(codec_keep_db=25.0), PhoneMic(mu_law=True, high_hz=7600.0),
                PhoneMic.sample(np.random.default_rng(4))):
        y = phone_mic(x, mic)
        assert np.all(np.isfinite(y))
        assert np.corrcoef(logspec(x), logspec(y))[0, 1] > 0.7, mic


def test_reverb_adds_a_decaying_tail():
    x = np.zeros(C.SAMPLE_RATE)
    x[:1600] = np.sin(2 * np.pi * 300 * np.arange(1600) / C.SAMPLE_RATE)
    y = reverberate(x, rt60_s=0.5, drr_db=3.0, rng=np.random.default_rng(5))
    assert y.shape == x.shape
    np.testing.assert_allclose(y[:40], x[:40], atol=1e-9)  # the direct sound comes first
    tail1 = np.mean(y[2000:3600] ** 2)
    tail2 = np.mean(y[6000:7600] ** 2)
    assert tail1 > 1e-5 and tail2 < tail1  # a tail after the sound stops, and it decays
    np.testing.assert_array_equal(reverberate(x, 0.0, 3.0, np.random.default_rng(5)), x)
