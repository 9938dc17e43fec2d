"""Melody metrics on hand-made frames, and the PitchTrack / re-gridding helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_gen import constants as C
from data_gen import pitch
from data_gen.pitch import benchmark as B

# Six frames, worked out by hand:
#   0: ref 100 Hz, est +49 cents, voiced      -> pitch ok, overall ok
#   1: ref 100 Hz, est +51 cents, voiced      -> pitch wrong
#   2: ref 200 Hz, est 400 Hz (octave), voiced -> pitch wrong, chroma ok
#   3: ref unvoiced, est voiced               -> false alarm
#   4: ref unvoiced, est unvoiced             -> overall ok
#   5: ref 440 Hz, est 440 Hz but unvoiced    -> pitch ok (raw ignores est voicing), overall wrong
REF_HZ = np.array([100.0, 100.0, 200.0, 0.0, 0.0, 440.0])
REF_VOICED = REF_HZ > 0
EST_HZ = np.array([100 * 2 ** (49 / 1200), 100 * 2 ** (51 / 1200), 400.0, 150.0, 150.0, 440.0])
EST_VOICED = np.array([True, True, True, True, False, False])


def test_metrics_on_hand_made_frames():
    assert B.raw_pitch_accuracy(REF_HZ, REF_VOICED, EST_HZ) == pytest.approx(2 / 4)
    assert B.raw_chroma_accuracy(REF_HZ, REF_VOICED, EST_HZ) == pytest.approx(3 / 4)
    assert B.voicing_recall(REF_VOICED, EST_VOICED) == pytest.approx(3 / 4)
    assert B.voicing_false_alarm(REF_VOICED, EST_VOICED) == pytest.approx(1 / 2)
    assert B.overall_accuracy(REF_HZ, REF_VOICED, EST_HZ, EST_VOICED) == pytest.approx(2 / 6)


def test_chroma_forgives_octaves_both_ways_but_not_fifths():
    ref = np.array([220.0, 220.0, 220.0, 220.0])
    est = np.array([55.0, 880.0 * 2 ** (30 / 1200), 330.0, 110.0 * 2 ** (-60 / 1200)])
    voiced = np.ones(4, bool)
    assert B.raw_chroma_accuracy(ref, voiced, est) == pytest.approx(2 / 4)
    assert B.raw_pitch_accuracy(ref, voiced, est) == 0.0
    assert B.raw_chroma_accuracy(ref, voiced, est, tolerance_cents=70) == pytest.approx(3 / 4)


def test_counts_pool_across_clips_and_empty_denominators_are_nan():
    first = B.frame_counts(REF_HZ, REF_VOICED, EST_HZ, EST_VOICED)
    silent = B.frame_counts(np.zeros(3), np.zeros(3, bool), np.full(3, 100.0), np.zeros(3, bool))
    assert math.isnan(silent.scores().raw_pitch_accuracy)
    assert silent.scores().overall_accuracy == 1.0
    pooled = (first + silent).scores()
    assert pooled.raw_pitch_accuracy == pytest.approx(2 / 4)
    assert pooled.voicing_false_alarm == pytest.approx(1 / 5)
    assert pooled.overall_accuracy == pytest.approx(5 / 9)


def test_metric_inputs_must_line_up():
    with pytest.raises(ValueError, match="one length"):
        B.frame_counts(REF_HZ, REF_VOICED, EST_HZ[:-1], EST_VOICED)


def test_pitch_track_validates_and_converts():
    track = pitch.PitchTrack([220.0, 440.0], [0.9, 0.1], [1, 0])
    assert track.f0_hz.dtype == np.float32 and track.voiced.dtype == bool and len(track) == 2
    np.testing.assert_allclose(track.f0_midi()[0], 57.0, atol=1e-4)
    assert np.isnan(track.f0_midi()[1])
    np.testing.assert_allclose(track.times, [0.0, C.PITCH_HOP_SECONDS])
    with pytest.raises(ValueError, match="same length"):
        pitch.PitchTrack([220.0], [0.9, 0.1], [1, 0])
    with pytest.raises(ValueError, match="positive"):
        pitch.PitchTrack([0.0], [0.9], [1])


def test_at_times_takes_the_nearest_frame():
    track = pitch.PitchTrack(np.arange(100, 110, dtype=float), np.ones(10), np.ones(10, bool))
    picked = track.at_times(np.array([0.0, 0.014, 0.016, 0.5]))
    np.testing.assert_allclose(picked.f0_hz, [100, 101, 102, 109])  # last one clipped to the end


def test_frame_count_convention():
    assert pitch.num_pitch_frames(0) == 1
    assert pitch.num_pitch_frames(C.SAMPLE_RATE) == C.PITCH_FRAME_RATE + 1
    assert pitch.num_pitch_frames(C.PITCH_HOP - 1) == 1


def test_regrid_does_not_glide_across_a_voicing_boundary():
    # Source frames every 30 ms: voiced 200 Hz, then unvoiced "garbage" at 1000 Hz.
    times = np.array([0.0, 0.03, 0.06])
    track = pitch.resample_to_pitch_grid(times, np.array([200.0, 200.0, 1000.0]), np.array([1.0, 1.0, 0.0]), 8, 0.5)
    np.testing.assert_allclose(track.f0_hz[:4], 200.0, rtol=1e-5)
    np.testing.assert_allclose(track.f0_hz[4], 200.0, rtol=1e-5)  # 40 ms is nearer the 30 ms frame
    np.testing.assert_allclose(track.f0_hz[5:], 1000.0, rtol=1e-5)  # nearest (60 ms) and held edge
    np.testing.assert_allclose(track.confidence[4], 2 / 3, rtol=1e-5)
    assert track.voiced.tolist() == [True] * 5 + [False] * 3
