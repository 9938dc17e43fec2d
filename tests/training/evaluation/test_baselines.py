"""Each baseline ranks the right track first on a tiny clean case."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen.audio import load_audio
from data_gen.manifest import read_catalogue, read_queries
from training.evaluation.baselines.melody_dtw import (
    MelodyDtwBaseline,
    MissingMelodyError,
    melody_contour,
    query_contour,
    subsequence_dtw_last_row,
)
from training.evaluation.baselines.note_histogram import NUM_NOTES, NoteHistogramBaseline, note_histogram
from training.evaluation.baselines.pitch_cache import SharedPitch


@pytest.fixture(scope="module")
def pitch(crepe_weights):
    return SharedPitch()


def _queries(tiny_bench):
    return {q.query_id: (q, load_audio(q.path)) for q in read_queries(tiny_bench["queries"])}


def test_note_histogram_ranks_right_track_first(tiny_bench, pitch, tmp_path):
    tracks = read_catalogue(tiny_bench["catalogue"])
    base = NoteHistogramBaseline(pitch)
    base.prepare(tracks, tmp_path)
    q, audio = _queries(tiny_bench)["q_a"]
    result = base.rank(audio, top_k=3)
    assert [m.track_id for m in result.matches][0] == "song_a"
    assert not result.no_match
    assert result.matches[0].score > result.matches[1].score
    # the master histograms were cached: a second prepare reads them back identically
    again = NoteHistogramBaseline(pitch)
    again.prepare(tracks, tmp_path)
    np.testing.assert_allclose(again._matrix, base._matrix)


def test_melody_dtw_ranks_right_track_first_despite_key_and_tempo(tiny_bench, pitch, tmp_path):
    tracks = read_catalogue(tiny_bench["catalogue"])
    base = MelodyDtwBaseline(pitch)
    base.prepare(tracks, tmp_path)
    queries = _queries(tiny_bench)
    for qid, expected in (("q_a", "song_a"), ("q_b", "song_b")):
        result = base.rank(queries[qid][1], top_k=3)
        assert result.matches[0].track_id == expected, (qid, result.matches)
        assert len(result.matches) == 3


def test_melody_dtw_without_melody_midi_tracks_the_masters_melody(tiny_bench, pitch, tmp_path):
    from dataclasses import replace

    from training.evaluation.baselines.melody_dtw import MelodyDtwConfig

    tracks = read_catalogue(tiny_bench["catalogue"])
    no_midi = [replace(t, melody_midi=None) for t in tracks]
    with pytest.raises(MissingMelodyError, match="melody_midi"):
        MelodyDtwBaseline(SharedPitch(extractor=object()), MelodyDtwConfig(master_melody="midi")).prepare(no_midi, tmp_path)
    # one track without MIDI: every master's melody comes from its audio (one source for all); here
    # the masters are the melodies alone, so the tracked melody is the true one
    from data_gen.audio import write_audio
    from tests.training.evaluation.conftest import MELODIES, melody_notes, synth

    plain = []
    for i, t in enumerate(tracks):
        write_audio(tmp_path / f"{t.track_id}.flac", synth(melody_notes(MELODIES[t.track_id]), harmonics=6, seed=i))
        plain.append(replace(t, path=tmp_path / f"{t.track_id}.flac", melody_midi=None if i == 0 else t.melody_midi))
    base = MelodyDtwBaseline(pitch)
    base.prepare(plain, tmp_path)
    assert base.source == "audio" and "polyphonic mix" in base.description
    queries = _queries(tiny_bench)
    for qid, expected in (("q_a", "song_a"), ("q_b", "song_b")):
        assert base.rank(queries[qid][1], top_k=3).matches[0].track_id == expected, qid
    assert MelodyDtwBaseline(pitch).melody_source(tracks) == "midi"
    with pytest.raises(ValueError, match="master_melody"):
        MelodyDtwConfig(master_melody="score")


def test_subsequence_dtw_finds_the_passage_at_another_tempo():
    q = np.array([0.0, 2, 4, 5, 7, 5, 4, 2])
    noise = np.random.default_rng(0).integers(-5, 6, 40).astype(np.float64)
    ref = np.concatenate([noise, np.repeat(q, 2) + 0.0, noise, [np.nan, np.nan], q + 0.5])
    last = subsequence_dtw_last_row(q, ref, 4.0)
    assert np.isinf(last[0])
    assert last[40 + 15] == pytest.approx(0.0)       # end of the 2x slower copy: a perfect match
    assert last[-1] == pytest.approx(0.5 * len(q))   # the shifted copy after the separator
    assert np.all(np.isinf(last[-10:-8]))             # separator columns are impassable


def test_contours(tiny_bench):
    from data_gen.pitch import PitchTrack

    c, times = melody_contour(read_catalogue(tiny_bench["catalogue"])[0].melody_midi, 0.05)
    assert c.size == times.size and np.all(np.diff(times) > 0)
    assert c[0] == 60 and np.all(np.isfinite(c))
    f0 = np.r_[np.full(50, 220.0), np.full(50, 440.0 * 2 ** (-7 / 12))]
    track = PitchTrack(f0, np.ones(100), np.r_[np.ones(50, bool), np.ones(50, bool)])
    qc = query_contour(track, 0.05)
    assert qc.size == 20 and np.ptp(qc) == pytest.approx(5.0, abs=1e-6)
    h = note_histogram(track)
    assert h.shape == (NUM_NOTES,) and h[57] > 0 and h[62] > 0 and np.linalg.norm(h) == pytest.approx(1.0)
