"""The failure table's pitch-track figures: alignment, tempo, intonation, likely cause."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.explain import (
    FRAME_S,
    Miss,
    align_contours,
    failures_markdown,
    intonation_spread,
    likely_cause,
)


def _melody(n_notes: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    notes = 60 + rng.integers(-5, 8, n_notes)
    return np.repeat(notes, 8).astype(np.float64)  # 0.4 s notes on the 50 ms grid


def test_alignment_finds_tempo_start_and_transposition():
    master = _melody()
    master[::13] = np.nan  # unvoiced frames here and there
    start, ratio = 60, 1.25  # the hum covers the master from 3 s, sung 1.25x faster, 5 semitones up
    src = start + np.arange(0, 120) * ratio
    hum = np.interp(src, np.arange(master.size), np.nan_to_num(master, nan=60.0)) + 5.0
    hum = np.round(hum)  # held notes
    found = align_contours(hum, master)
    assert found is not None
    r, at, distance = found
    assert r == pytest.approx(ratio, rel=0.05)
    assert at == pytest.approx(start * FRAME_S, abs=0.3)
    assert distance < 0.6  # note edges land a frame off here and there


def test_alignment_of_unrelated_tunes_is_poor_and_of_nothing_is_none():
    found = align_contours(_melody(30, seed=1), _melody(seed=2))
    assert found is not None and found[2] > 1.0
    assert align_contours(np.full(50, np.nan), _melody()) is None


def test_intonation_spread_in_cents():
    steady = np.repeat([60.0, 62.0, 64.0], 20) + 0.3  # in tune with itself, 30 cents sharp overall
    assert intonation_spread(steady) == pytest.approx(0.0, abs=1.0)
    wavering = steady + np.random.default_rng(0).normal(0, 0.3, steady.size)
    assert intonation_spread(wavering) > 15
    assert intonation_spread(np.full(5, np.nan)) is None


def _miss(**kw) -> Miss:
    base = dict(query_id="q", kind="hum_real", true_track="t", rank=None, true_score=0.4, winner="w",
                winner_score=0.6, true_offset_s=0.0, hum_voiced=0.8, intonation_spread_cents=12.0,
                master_voiced=0.7, master_seconds=12.0, tempo_ratio=1.0, aligned_start_s=0.0,
                contour_distance=0.5, cause="")
    return Miss(**{**base, **kw})


def test_likely_causes():
    assert "the model" in likely_cause(_miss())
    assert "does not carry the hummed tune" in likely_cause(_miss(contour_distance=2.5))
    assert "tempo" in likely_cause(_miss(tempo_ratio=1.8))
    assert "little pitched sound" in likely_cause(_miss(hum_voiced=0.2))
    assert "wavering" in likely_cause(_miss(intonation_spread_cents=45.0))


def test_failures_markdown_table():
    text = failures_markdown([_miss(rank=3, cause=likely_cause(_miss(contour_distance=2.0)))], 20, "earworm-temporal")
    assert "1 of 20" in text and "| `q` | 3 | 0.400 | 0.600 |" in text
    assert "Causes: 1 × the master's pitch track does not carry the hummed tune" in text
    assert "Every in-catalogue query" in failures_markdown([], 5, "m")
    tempo = [_miss(cause=likely_cause(_miss(tempo_ratio=r))) for r in (0.5, 1.8)]
    assert "Causes: 2 × sung at another tempo" in failures_markdown(tempo, 20, "m")
