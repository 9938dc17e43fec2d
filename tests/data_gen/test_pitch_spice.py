"""SPICE: the real loading code on a tiny SavedModel with SPICE's signature; calibration; errors."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen import constants as C
from data_gen import pitch
from data_gen.pitch import spice as spice_mod

PITCH_START, PITCH_STEP = 0.30, 0.002  # fake model: pitch of SPICE frame j = 0.30 + 0.002 j
VOICED_UNCERTAINTY, UNVOICED_UNCERTAINTY = 0.05, 0.8


@pytest.fixture(scope="module")
def tiny_spice_dir(tmp_path_factory):
    """A SavedModel with SPICE's interface: float32 [samples] -> {pitch, uncertainty} [frames].

    One output frame per 512 samples (frame j centred at j * 32 ms: 1 + samples // 512 frames);
    the first half of the frames are confident, the rest are not.
    """
    import tensorflow as tf

    class TinySpice(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="input_1")])
        def __call__(self, waveform):
            frames = tf.shape(waveform)[0] // spice_mod.SPICE_HOP + 1
            index = tf.cast(tf.range(frames), tf.float32)
            half = tf.cast(frames // 2, tf.float32)
            uncertainty = tf.where(index < half, VOICED_UNCERTAINTY, UNVOICED_UNCERTAINTY)
            return {"pitch": PITCH_START + PITCH_STEP * index, "uncertainty": uncertainty}

    module = TinySpice()
    path = tmp_path_factory.mktemp("spice") / "saved_model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.__call__})
    return path


def test_published_calibration_maps_to_hz():
    # Inverse of the calibration by hand: 440 Hz is CQT bin 12 * log2(440 / 10).
    pitch_for_440 = (12 * np.log2(44.0) - spice_mod.PT_OFFSET) / spice_mod.PT_SLOPE
    np.testing.assert_allclose(spice_mod.spice_pitch_to_hz(np.array([pitch_for_440])), [440.0], rtol=1e-9)
    # One unit of SPICE pitch spans PT_SLOPE semitones.
    low, high = spice_mod.spice_pitch_to_hz(np.array([0.2, 0.3]))
    np.testing.assert_allclose(12 * np.log2(high / low), 0.1 * spice_mod.PT_SLOPE)


def test_tiny_savedmodel_loads_and_is_regridded_to_10ms(tiny_spice_dir):
    extractor = pitch.make_extractor("spice", model=str(tiny_spice_dir), voicing_threshold=0.5)
    assert extractor.name == "spice"
    audio = np.random.default_rng(0).standard_normal(2 * C.SAMPLE_RATE + 100).astype(np.float32) * 0.1
    track = extractor.extract(audio)
    assert len(track) == 1 + audio.size // C.PITCH_HOP  # 201 frames on the 10 ms grid
    spice_frames = 1 + audio.size // spice_mod.SPICE_HOP  # 63
    spice_hz = spice_mod.spice_pitch_to_hz(PITCH_START + PITCH_STEP * np.arange(spice_frames))

    # Where a 10 ms frame coincides with a SPICE frame (every 160 ms) the value is SPICE's.
    for j in (0, 5, 10):
        np.testing.assert_allclose(track.f0_hz[j * 16 // 5], spice_hz[j], rtol=1e-5)
    # In between, f0 is interpolated in cents: 20 ms lies 0.625 of the way from frame 0 to 1.
    expected = spice_hz[0] * (spice_hz[1] / spice_hz[0]) ** 0.625
    np.testing.assert_allclose(track.f0_hz[2], expected, rtol=1e-5)
    # Confidence = 1 - uncertainty; voiced while the fake model is confident (first 31 frames).
    np.testing.assert_allclose(track.confidence[0], 1 - VOICED_UNCERTAINTY, rtol=1e-6)
    np.testing.assert_allclose(track.confidence[-1], 1 - UNVOICED_UNCERTAINTY, rtol=1e-6)
    last_confident_s = (spice_frames // 2 - 1) * spice_mod.SPICE_HOP_SECONDS
    assert track.voiced[track.times <= last_confident_s].all()
    assert not track.voiced[track.times >= last_confident_s + spice_mod.SPICE_HOP_SECONDS].any()
    # Past the last SPICE frame (at 1.984 s) the edge frame is held.
    np.testing.assert_allclose(track.f0_hz[-1], spice_hz[-1], rtol=1e-5)


def test_no_spice_model_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(spice_mod.SPICE_MODEL_ENV, raising=False)
    with pytest.raises(pitch.PitchModelUnavailableError) as info:
        pitch.make_extractor("spice")
    message = str(info.value)
    assert "no SPICE model is available offline" in message
    assert "--spice-model" in message and spice_mod.SPICE_MODEL_ENV in message


def test_spice_model_folder_from_environment(monkeypatch, tiny_spice_dir):
    monkeypatch.setenv(spice_mod.SPICE_MODEL_ENV, str(tiny_spice_dir))
    track = pitch.make_extractor("spice").extract(np.zeros(C.SAMPLE_RATE, np.float32))
    assert len(track) == 101


def test_missing_or_broken_spice_folder_is_a_clear_error(tmp_path):
    with pytest.raises(pitch.PitchModelUnavailableError, match="neither a folder nor a URL"):
        pitch.make_extractor("spice", model=str(tmp_path / "nope"))
    with pytest.raises(pitch.PitchModelUnavailableError, match="loading .* failed"):
        pitch.make_extractor("spice", model=str(tmp_path))  # a folder without a SavedModel
