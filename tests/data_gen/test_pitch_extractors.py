"""CREPE, pYIN and YIN recover the pitch of a sung-like tone; weight lookup and errors are clear."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen import constants as C
from data_gen import pitch
from data_gen.pitch import crepe as crepe_mod
from tests.conftest import sung_tone

NOTES = (57, 60, 64, 67, 72)  # A3 C4 E4 G4 C5
NOTE_S = 0.4
VIBRATO_HZ = 5.5
VIBRATO_CENTS = 30.0


def _true_f0(times: np.ndarray) -> np.ndarray:
    """The f0 that `sung_tone(NOTES, NOTE_S)` sings at `times` (seconds)."""
    note = np.clip((times // NOTE_S).astype(int), 0, len(NOTES) - 1)
    hz = 440.0 * 2 ** ((np.asarray(NOTES)[note] - 69) / 12)
    return hz * 2 ** (VIBRATO_CENTS / 1200 * np.sin(2 * np.pi * VIBRATO_HZ * times))


def _interior_errors_cents(track: pitch.PitchTrack, num_samples: int) -> np.ndarray:
    """|error| in cents on frames at least 40 ms away from note changes and the ends."""
    times = track.times
    in_note = times % NOTE_S
    keep = (in_note > 0.04) & (in_note < NOTE_S - 0.04) & (times < num_samples / C.SAMPLE_RATE - 0.04)
    return np.abs(1200 * np.log2(track.f0_hz[keep] / _true_f0(times[keep])))


@pytest.fixture(scope="module")
def tone() -> np.ndarray:
    return sung_tone(NOTES, note_s=NOTE_S, vibrato_hz=VIBRATO_HZ, vibrato_cents=VIBRATO_CENTS)


@pytest.fixture(scope="module")
def crepe_activations(crepe_weights, tone):
    extractor = pitch.make_extractor("crepe", weights_path=str(crepe_weights), decoder="average")
    return extractor, extractor.activations(tone)


@pytest.mark.parametrize("decoder", ["average", "viterbi"])
def test_crepe_recovers_sung_notes_with_vibrato(crepe_weights, tone, decoder):
    extractor = pitch.make_extractor("crepe", weights_path=str(crepe_weights), decoder=decoder)
    track = extractor.extract(tone)
    assert len(track) == 1 + tone.size // C.PITCH_HOP
    errors = _interior_errors_cents(track, tone.size)
    assert errors.size > 100
    assert np.median(errors) < 15 and np.percentile(errors, 95) < 25, (np.median(errors), errors.max())
    assert track.voiced[5:-5].mean() > 0.95
    assert np.all((track.confidence >= 0) & (track.confidence <= 1))


def test_crepe_silence_is_unvoiced_and_batching_does_not_change_output(crepe_weights, tone):
    audio = np.concatenate([np.zeros(C.SAMPLE_RATE // 2, np.float32), tone[: C.SAMPLE_RATE // 2]])
    small = pitch.make_extractor("crepe", weights_path=str(crepe_weights), batch_size=7)
    big = pitch.make_extractor("crepe", weights_path=str(crepe_weights), batch_size=4096)
    a, b = small.activations(audio), big.activations(audio)
    assert a.shape == (1 + audio.size // C.PITCH_HOP, 360)
    np.testing.assert_allclose(a, b, atol=1e-5)
    track = small.decode(a)
    assert not track.voiced[5:40].any()  # the first 0.4 s is digital silence
    assert track.voiced[60:-5].mean() > 0.95


def test_crepe_local_average_interpolates_between_bins():
    activation = np.zeros((2, 360), np.float32)
    activation[0, 100] = 1.0
    activation[1, 100] = activation[1, 101] = 0.5  # halfway between bins 100 and 101
    cents = crepe_mod.local_average_cents(activation)
    np.testing.assert_allclose(cents, crepe_mod.BIN0_CENTS + 20 * np.array([100.0, 100.5]))
    # bin 0 is ~31.7 Hz, as documented for the official model
    assert abs(pitch.cents_to_hz(crepe_mod.BIN0_CENTS) - 31.7) < 0.05


def test_viterbi_ignores_a_single_frame_octave_jump(crepe_activations):
    _, activation = crepe_activations
    spiked = activation[40:80].copy()
    bins = np.argmax(spiked, axis=1)
    spiked[20] = 0.0
    spiked[20, min(bins[20] + 60, 359)] = 0.9  # an isolated octave error
    path = crepe_mod.viterbi_bins(spiked, crepe_mod.transition_matrix(12))
    assert abs(int(path[20]) - int(bins[20])) <= 3
    assert abs(int(np.argmax(spiked[20])) - int(bins[20])) >= 57  # plain argmax would jump


def test_missing_crepe_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "model-tiny.h5"
    with pytest.raises(pitch.PitchModelUnavailableError, match="CREPE weights file not found"):
        pitch.make_extractor("crepe", weights_path=str(missing))


def test_no_weights_anywhere_names_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("EARWORM_SHARED", str(tmp_path))
    monkeypatch.setattr(crepe_mod, "installed_crepe_weights", lambda capacity: None)
    with pytest.raises(pitch.PitchModelUnavailableError) as info:
        crepe_mod.find_crepe_weights("tiny")
    assert "model-tiny.h5" in str(info.value) and "weights_path" in str(info.value)
    assert not crepe_mod.crepe_weights_available("tiny")
    extractor = pitch.default_extractor()
    assert extractor.name == "pyin"


def test_weights_of_the_wrong_capacity_are_refused(crepe_weights):
    with pytest.raises(pitch.PitchModelUnavailableError, match="wrong capacity"):
        pitch.make_extractor("crepe", capacity="small", weights_path=str(crepe_weights))


def test_a_file_that_is_not_crepe_weights_is_refused(tmp_path):
    import h5py

    bogus = tmp_path / "model-tiny.h5"
    with h5py.File(bogus, "w") as f:
        f.create_dataset("something", data=np.zeros(3))
    with pytest.raises(pitch.PitchModelUnavailableError, match="no layer 'conv1'"):
        pitch.make_extractor("crepe", weights_path=str(bogus))


def test_default_extractor_prefers_crepe(crepe_weights):
    assert pitch.default_extractor().name == "crepe"


def test_pyin_recovers_sung_notes_with_vibrato(tone):
    extractor = pitch.make_extractor("pyin")
    track = extractor.extract(tone)
    assert len(track) == 1 + tone.size // C.PITCH_HOP
    errors = _interior_errors_cents(track, tone.size)
    assert np.median(errors) < 15 and np.percentile(errors, 95) < 25, (np.median(errors), errors.max())
    assert track.voiced[10:-10].mean() > 0.95


def test_yin_recovers_sung_notes_with_vibrato(tone):
    track = pitch.make_extractor("yin").extract(tone)
    assert len(track) == 1 + tone.size // C.PITCH_HOP
    errors = _interior_errors_cents(track, tone.size)
    assert np.median(errors) < 15 and np.percentile(errors, 95) < 30, (np.median(errors), errors.max())
    assert track.voiced[10:-10].mean() > 0.95


def test_yin_finds_no_pitch_in_noise_or_silence():
    yin = pitch.make_extractor("yin")
    noise = np.random.default_rng(0).standard_normal(C.SAMPLE_RATE * 3).astype(np.float32) * 0.1
    assert yin.extract(noise).voiced.mean() < 0.05
    assert not yin.extract(np.zeros(C.SAMPLE_RATE, np.float32)).voiced.any()
    assert not yin.extract(np.full(C.SAMPLE_RATE, 0.3, np.float32)).voiced.any()  # DC is not a pitch


def test_yin_reaches_whistle_and_low_hum_range():
    yin = pitch.make_extractor("yin")
    t = np.arange(C.SAMPLE_RATE) / C.SAMPLE_RATE
    for hz in (70.0, 1800.0):
        track = yin.extract((0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32))
        inner = track.f0_hz[10:-10]
        assert np.median(np.abs(1200 * np.log2(inner / hz))) < 20, hz
    with pytest.raises(ValueError, match="too short"):
        pitch.make_extractor("yin", fmin=20.0)


def test_unknown_backend_and_option_are_value_errors():
    with pytest.raises(ValueError, match="unknown pitch backend"):
        pitch.make_extractor("swipe")
    with pytest.raises(ValueError, match="bad option"):
        pitch.make_extractor("pyin", hop=3)
    with pytest.raises(ValueError, match="decoder"):
        pitch.make_extractor("crepe", decoder="beam")


def test_held_notes_of_a_contour():
    midi = np.r_[np.full(5, 60.2), np.full(3, 61.9), np.full(2, np.nan), np.full(4, 64.0), [59.6]]
    semitones, starts, stops = pitch.held_notes(midi, min_frames=3)
    assert semitones.tolist() == [60, 62, 64] and starts.tolist() == [0, 5, 10] and stops.tolist() == [5, 8, 14]
    assert [a.size for a in pitch.held_notes(np.zeros(0), 3)] == [0, 0, 0]


def test_yin_decimation_is_resample_poly_up_to_rounding():
    from scipy.signal import resample_poly

    from data_gen.pitch.yin import decimate

    rng = np.random.default_rng(0)
    for down in (2, 4, 5):
        for n in (1, 7, 41, 1601, 16_003):
            x = rng.standard_normal(n).astype(np.float32)
            want = resample_poly(x, 1, down).astype(np.float32)
            got = decimate(x, down)
            assert got.dtype == np.float32 and got.shape == want.shape, (down, n)
            np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"down {down}, {n} samples")
