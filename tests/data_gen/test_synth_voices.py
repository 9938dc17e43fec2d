"""The synthesizers sing the contour they are given (pitch checked with librosa.pyin), are
deterministic, click-free, and have the spectra their docstrings promise."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.synth import KINDS, SynthError, contour_from_notes, synthesize, whistle_octaves
from data_gen.synth import sung as sung_module
from data_gen.synth.contour import Contour

NOTES = [(0.15, 0.55, 55), (0.55, 0.95, 57), (0.95, 1.35, 59), (1.35, 2.1, 60), (2.3, 2.7, 64), (2.7, 3.3, 59)]


def contour() -> Contour:
    return contour_from_notes(NOTES, gap_s=0.04)


def pitch_error_cents(audio: np.ndarray, target: Contour, fmin: float, fmax: float) -> tuple[float, float, float]:
    """(median |error| in cents, fraction of frames within 50 cents, fraction of the target's
    voiced frames that pyin also finds voiced) over frames voiced in both."""
    import librosa

    frame = 1024 if fmin < 300 else 512
    f0, voiced, _ = librosa.pyin(audio.astype(np.float64), fmin=fmin, fmax=fmax, sr=C.SAMPLE_RATE,
                                 frame_length=frame, hop_length=C.PITCH_HOP)
    n = min(f0.shape[0], target.n_frames)
    both = voiced[:n] & target.voiced[:n]
    err = 1200.0 * np.abs(np.log2(f0[:n][both] / target.f0_hz[:n][both]))
    return float(np.median(err)), float(np.mean(err < 50.0)), float(both.sum() / target.voiced[:n].sum())


def check_output(audio: np.ndarray, c: Contour) -> None:
    assert audio.dtype == np.float32
    assert audio.shape == (c.n_samples,)
    assert np.all(np.isfinite(audio))
    assert np.max(np.abs(audio)) <= 1.0
    assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 0.01


def assert_tracks(audio, target, fmin, fmax, max_median=30.0, min_within=0.85, min_voiced=0.8):
    median, within, found = pitch_error_cents(audio, target, fmin, fmax)
    assert median < max_median, (median, within, found)
    assert within >= min_within, (median, within, found)
    assert found >= min_voiced, (median, within, found)


@pytest.mark.parametrize("seed", [0, 1])
def test_hum_tracks_contour(seed):
    c = contour()
    audio = synthesize("hum", c, seed=seed)
    check_output(audio, c)
    assert_tracks(audio, c, 80.0, 600.0)


def test_whistle_tracks_contour_octaves_up():
    c = contour()
    shift = whistle_octaves(c)
    assert shift >= 1
    assert 700.0 <= c.median_hz() * 2**shift <= 2500.0
    audio = synthesize("whistle", c, seed=3)
    check_output(audio, c)
    assert_tracks(audio, c.transpose(12 * shift), 500.0, 3500.0)
    explicit = synthesize("whistle", c, seed=3, octaves=1)
    assert_tracks(explicit, c.transpose(12), 250.0, 1500.0)


@pytest.mark.parametrize("waveform", ["sine", "triangle"])
def test_tone_tracks_contour(waveform):
    c = contour()
    audio = synthesize("tone", c, seed=0, waveform=waveform)
    check_output(audio, c)
    assert_tracks(audio, c, 80.0, 600.0, max_median=15.0, min_within=0.95)


@pytest.mark.parametrize("engine", ["world", "formant"])
def test_sung_tracks_contour(engine):
    if engine == "world" and not sung_module.espeak_available():
        pytest.skip("espeak-ng is not installed (the 'world' sung engine needs it)")
    c = contour()
    audio = synthesize("sung", c, seed=2, engine=engine, syllables=("la", "da"))
    check_output(audio, c)
    assert_tracks(audio, c, 80.0, 600.0)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_for_a_seed(kind):
    c = contour_from_notes(NOTES[:3])
    a, b = synthesize(kind, c, seed=7), synthesize(kind, c, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, synthesize(kind, c, seed=8))


def test_tone_has_no_clicks():
    """A click is a sample-to-sample jump larger than a smooth sinusoid can make."""
    c = contour()
    audio = synthesize("tone", c, seed=0, waveform="sine", attack_s=0.01, release_s=0.01).astype(np.float64)
    f_max = float(c.f0_hz.max())
    bound = 2 * np.pi * f_max / C.SAMPLE_RATE * np.max(np.abs(audio))
    assert np.max(np.abs(np.diff(audio))) <= 1.05 * bound
    # Silence between notes is silence (the envelope closes before the gap).
    gap = slice(int(2.15 * C.SAMPLE_RATE), int(2.25 * C.SAMPLE_RATE))
    assert np.max(np.abs(audio[gap])) < 1e-6


def band_db(audio: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(audio.shape[0], 1.0 / C.SAMPLE_RATE)
    return float(10 * np.log10(spec[(freqs >= lo) & (freqs < hi)].sum() + 1e-20))


def test_hum_spectrum_is_harmonic_and_nasal():
    """A steady hummed note: energy at the harmonics, not between them; most energy below
    ~450 Hz (the nasal murmur's first resonance), little above 2 kHz."""
    f0 = 196.0
    c = Contour(np.full(200, f0, np.float32), np.ones(200, bool))
    audio = synthesize("hum", c, seed=4, breath_db=-30.0, jitter_cents=0.0, shimmer=0.0)
    steady = audio[4000:28000].astype(np.float64) * np.hanning(24000)
    spec = np.abs(np.fft.rfft(steady)) ** 2
    freqs = np.fft.rfftfreq(steady.shape[0], 1.0 / C.SAMPLE_RATE)
    for k in (1, 2, 3):
        peak = spec[np.abs(freqs - k * f0) < 5].sum()
        between = spec[np.abs(freqs - (k + 0.5) * f0) < 5].sum()
        assert 10 * np.log10(peak / between) > 20.0
    assert band_db(steady, 150, 450) - band_db(steady, 2000, 4000) > 12.0


def test_hum_long_term_spectrum_resembles_real_hums(shared_data_dir):
    """Per-band level (relative to the loudest band) of synthetic hums is within 10 dB of the
    median over real hums (qbh_demo) from 150 Hz to 4 kHz."""
    import glob

    import librosa
    import soundfile as sf

    edges = [150, 250, 350, 450, 600, 800, 1000, 1300, 1600, 2000, 2500, 3200, 4000]

    def profile(x):
        s = np.abs(librosa.stft(x.astype(np.float64), n_fft=1024, hop_length=C.PITCH_HOP)) ** 2
        e = s.sum(axis=0)
        psd = s[:, e > np.percentile(e, 50)].mean(axis=1)
        fr = librosa.fft_frequencies(sr=C.SAMPLE_RATE, n_fft=1024)
        db = np.array([10 * np.log10(psd[(fr >= a) & (fr < b)].mean() + 1e-20) for a, b in zip(edges[:-1], edges[1:])])
        return db - db.max()

    files = sorted(glob.glob(str(shared_data_dir / "qbh_demo" / "hums" / "*" / "*.ogg")))[::6]
    if not files:
        pytest.skip("no qbh_demo hums in the shared data")
    real = []
    for f in files:
        x, rate = sf.read(f, dtype="float32")
        real.append(profile(librosa.resample(x, orig_sr=rate, target_sr=C.SAMPLE_RATE)))
    rng = np.random.default_rng(0)
    synth = []
    for seed in range(8):
        base = rng.uniform(48, 64)
        notes = [(0.2 + 0.4 * i, 0.55 + 0.4 * i, base + rng.integers(-3, 8)) for i in range(10)]
        synth.append(profile(synthesize("hum", contour_from_notes(notes), seed=seed)))
    diff = np.abs(np.median(real, axis=0) - np.median(synth, axis=0))
    assert diff.max() < 10.0, np.round(diff, 1)


def test_dispatch_errors():
    c = contour()
    with pytest.raises(SynthError, match="unknown query kind"):
        synthesize("yodel", c)
    with pytest.raises(SynthError, match="unknown HumVoice parameter"):
        synthesize("hum", c, vibrato=3)
    with pytest.raises(SynthError, match="waveform"):
        synthesize("tone", c, waveform="square")
    with pytest.raises(SynthError, match="syllable"):
        synthesize("sung", c, engine="formant", syllables=("xo",))


def test_note_envelope_handles_one_frame_notes():
    """Notes as short as one 10 ms frame (from pitch tracks) must not break the envelope."""
    import numpy as np

    from data_gen.synth.contour import Contour
    from data_gen.synth.dsp import note_envelope

    voiced = np.array([0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0], bool)
    f0 = np.where(voiced, 220.0, 0.0).astype(np.float32)
    env = note_envelope(Contour(f0, voiced), np.random.default_rng(0))
    assert env.shape == (voiced.size,)
    assert np.all(env[~voiced] == 0) and np.all(env[voiced] > 0)
