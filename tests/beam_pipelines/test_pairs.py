"""Aligned (query, master) window cutting: plain numpy, no Beam."""

from __future__ import annotations

import numpy as np
import pytest

from beam_pipelines.pairs import TimeMap, WindowPair, aligned_windows, example_id, slice_padded
from data_gen import constants as C

SR = C.SAMPLE_RATE


def clock(seconds: float) -> np.ndarray:
    """A 'recording' whose every sample holds its own time in seconds: [time] float32."""
    return (np.arange(int(seconds * SR)) / SR).astype(np.float32)


def test_time_map_composition():
    perf_to_master = TimeMap(offset_s=2.0, tempo_factor=1.0)
    query_to_perf = TimeMap(offset_s=0.5, tempo_factor=1.2)
    both = perf_to_master.after(query_to_perf)
    for t in (0.0, 1.0, 3.7):
        assert both.to_master(t) == pytest.approx(perf_to_master.to_master(query_to_perf.to_master(t)))


def test_slice_padded_zero_fills_outside():
    a = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(slice_padded(a, -2, 5), [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(slice_padded(a, 8, 4), [9, 10, 0, 0])


@pytest.mark.parametrize("tempo", [1.0, 0.9, 1.15])
def test_windows_hold_the_same_content_at_their_centres(tempo):
    master = clock(40.0)
    offset = 3.0
    # the query's sample at query time t holds the master time it performs: offset + t * tempo
    q_len = int(20.0 / tempo * SR)
    query = (offset + np.arange(q_len) / SR * tempo).astype(np.float32)
    pairs = [p for p in aligned_windows(query, master, TimeMap(offset, tempo), None, hop_s=3.0)
             if isinstance(p, WindowPair)]
    assert len(pairs) >= 5
    centre = C.EXAMPLE_SAMPLES // 2
    for p in pairs:
        assert p.query.shape == p.master.shape == (C.EXAMPLE_SAMPLES,)
        assert p.master[centre] == pytest.approx(p.query[centre], abs=2.0 / SR)
        # edges drift by at most |1 - tempo| * EXAMPLE_SECONDS / 2
        drift = abs(1 - tempo) * C.EXAMPLE_SECONDS / 2 + 2.0 / SR
        assert abs(p.master[0] - p.query[0]) <= drift
    if tempo == 1.0:
        for p in pairs:
            assert p.master_offset_s == pytest.approx(offset + p.query_offset_s, abs=1 / SR)
            np.testing.assert_allclose(p.master, p.query, atol=1e-5)


def test_unvoiced_windows_are_skipped_and_reported():
    query = clock(12.0)
    voiced = np.zeros(12 * C.PITCH_FRAME_RATE + 1, bool)
    voiced[: 6 * C.PITCH_FRAME_RATE] = True  # only the first 6 s hold melody
    items = list(aligned_windows(query, query, TimeMap(), voiced, hop_s=3.0, min_voiced_fraction=0.5))
    kept = [i for i in items if isinstance(i, WindowPair)]
    skipped = [i for i in items if isinstance(i, float)]
    assert [p.query_offset_s for p in kept] == [0.0, 3.0]
    assert skipped == [0.0]  # the window at 6 s holds no voiced frame


def test_short_query_gives_one_padded_window_and_max_windows_caps():
    q = clock(4.5)
    (p,) = list(aligned_windows(q, q, TimeMap(), None, hop_s=3.0))
    assert p.query.shape == (C.EXAMPLE_SAMPLES,)
    assert np.all(p.query[int(4.5 * SR):] == 0)
    assert len(list(aligned_windows(clock(30), clock(30), TimeMap(), None, hop_s=1.0, max_windows=3))) == 3


def test_example_ids_are_stable_and_unique():
    a = example_id("song", "hum", "mir1k:song_01", 2)
    assert a == example_id("song", "hum", "mir1k:song_01", 2) == "song/hum/mir1k:song_01/synth-002"
    assert a != example_id("song", "hum", "mir1k:song_02", 2)
    assert a != example_id("song", "hum", "mir1k:song_01", 2, origin="real")
