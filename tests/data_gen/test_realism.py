"""Hum statistics measure what they name, and compare ranks the gaps."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.synth.realism import compare, hum_stats, summarize
from tests.conftest import sung_tone

NOTES = (57, 60, 64, 62, 65, 67, 64, 60, 62, 57)


def test_vibrato_and_onsets_are_measured():
    wobbly = hum_stats(sung_tone(NOTES, note_s=0.5, vibrato_cents=30.0))
    steady = hum_stats(sung_tone(NOTES, note_s=0.5, vibrato_cents=0.0))
    assert 15 < wobbly.vibrato_cents < 28  # a 30-cent sine has a standard deviation of 21 cents
    assert steady.vibrato_cents < 3
    assert steady.onsets_per_s == pytest.approx(2.0, abs=0.3)  # 10 notes in 5 s
    assert abs(steady.tempo_drift) < 0.3


def test_spectrum_and_noise_statistics():
    rng = np.random.default_rng(0)
    tone = sung_tone(NOTES, note_s=0.5)
    bright = tone + 0.05 * rng.standard_normal(tone.size).astype(np.float32)
    assert hum_stats(bright).energy_above_4k_db > hum_stats(tone).energy_above_4k_db + 10
    gaps = np.zeros(tone.size + C.SAMPLE_RATE, np.float32)
    gaps[: tone.size] = tone
    gaps += 0.001 * rng.standard_normal(gaps.size).astype(np.float32)
    assert hum_stats(gaps).noise_floor_db < -20
    assert hum_stats(tone).spectral_tilt_db_per_octave < 0


def test_compare_ranks_gaps_in_real_iqrs():
    real = summarize([hum_stats(sung_tone(NOTES, note_s=0.5, vibrato_cents=c, seed=i))
                      for i, c in enumerate((20.0, 30.0, 40.0))])
    synthetic = summarize([hum_stats(sung_tone(NOTES, note_s=0.5, vibrato_cents=0.0, seed=i)) for i in range(3)])
    gaps = compare(real, synthetic)
    assert dict(gaps)["vibrato_cents"] < -1  # the synthetic set holds its notes far steadier
    assert [abs(g) for _, g in gaps] == sorted((abs(g) for _, g in gaps), reverse=True)
