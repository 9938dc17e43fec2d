"""Synthetic query sets for a catalogue (data_gen.synth.queries, `earworm queries make`)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.audio import load_audio, write_audio
from data_gen.manifest import Track, read_queries, write_catalogue
from data_gen.synth.queries import QueryGenerationError, make_queries, query_id, query_seed
from tests.data_gen.test_synth_contour import write_midi


def tiny_catalogue(tmp_path, with_midi=True):
    """Two tracks: 20 s melodies (their audio is a placeholder; queries only read the MIDI)."""
    tracks = []
    rng = np.random.default_rng(0)
    for i, tid in enumerate(["song-a", "song b"]):
        notes = [(0.5 + 0.5 * k, 0.95 + 0.5 * k, 60 + int(rng.integers(-5, 8))) for k in range(40)]
        midi = write_midi(tmp_path / "cat" / "midi" / f"{i}.mid", notes) if with_midi else None
        audio = tmp_path / "cat" / "audio" / f"{i}.wav"
        write_audio(audio, np.zeros(C.SAMPLE_RATE, np.float32) + 0.01)
        tracks.append(Track(tid, f"Title {i}", "Artist", audio, midi))
    manifest = tmp_path / "cat" / "manifest.csv"
    write_catalogue(manifest, tracks)
    return manifest


@pytest.fixture
def catalogue(tmp_path):
    (tmp_path / "cat" / "midi").mkdir(parents=True)
    return tiny_catalogue(tmp_path)


def test_make_queries_writes_a_valid_query_set(catalogue, tmp_path):
    out = tmp_path / "q"
    csv_path = make_queries(catalogue, out, kinds=("hum", "tone", "whistle"), per_track=2, seed=3,
                            min_s=3.0, max_s=4.0, progress=False)
    assert csv_path == out / "queries.csv"
    queries = read_queries(csv_path)
    assert len(queries) == 4
    assert [q.extra["kind"] for q in queries] == ["hum", "tone", "whistle", "hum"]
    assert {q.track_id for q in queries} == {"song-a", "song b"}
    for q in queries:
        assert q.path.parent == (out / "audio").resolve()
        audio = load_audio(q.path)
        seconds = audio.shape[0] / C.SAMPLE_RATE
        assert 3.0 - 0.02 <= seconds <= 4.0 + 0.02
        assert float(q.extra["duration_s"]) == pytest.approx(seconds, abs=0.002)
        assert 0.0 <= float(q.extra["start_s"]) < 21.0
        assert np.max(np.abs(audio)) <= 1.0
    infos = [json.loads(line) for line in (out / "queries_info.jsonl").read_text().splitlines()]
    assert [i["query_id"] for i in infos] == [q.query_id for q in queries]
    assert all("tempo_factor" in i and "voice" in i for i in infos)


def test_make_queries_is_deterministic_and_limit_stable(catalogue, tmp_path):
    a = read_queries(make_queries(catalogue, tmp_path / "a", kinds=("tone",), seed=5, min_s=3, max_s=3, progress=False))
    b = read_queries(make_queries(catalogue, tmp_path / "b", kinds=("tone",), seed=5, min_s=3, max_s=3, progress=False))
    c = read_queries(make_queries(catalogue, tmp_path / "c", kinds=("tone",), seed=5, min_s=3, max_s=3, limit=1, progress=False))
    assert len(a) == 2 and len(c) == 1
    for qa, qb in zip(a, b):
        assert qa.path.read_bytes() == qb.path.read_bytes()
    assert a[0].path.read_bytes() == c[0].path.read_bytes()  # a query does not depend on limit
    d = read_queries(make_queries(catalogue, tmp_path / "d", kinds=("tone",), seed=6, min_s=3, max_s=3, progress=False))
    assert a[0].path.read_bytes() != d[0].path.read_bytes()


def test_missing_melody_midi_is_a_clear_error(tmp_path):
    (tmp_path / "cat" / "audio").mkdir(parents=True)
    manifest = tiny_catalogue(tmp_path, with_midi=False)
    with pytest.raises(QueryGenerationError, match="melody_midi"):
        make_queries(manifest, tmp_path / "q", progress=False)
    with pytest.raises(QueryGenerationError, match="unknown query kind"):
        make_queries(manifest, tmp_path / "q", kinds=("yodel",), progress=False)


def test_query_ids_and_seeds():
    assert query_id("song-a", "hum", 0) == "song-a-hum-0"
    odd = query_id("a/b c", "hum", 1)
    assert "/" not in odd and " " not in odd and odd != query_id("a_b_c", "hum", 1)
    assert query_seed(1, "x", 0) == query_seed(1, "x", 0) != query_seed(1, "x", 1)


def test_cli_queries_make(catalogue, tmp_path, capsys):
    from data_gen import cli_queries

    parser = argparse.ArgumentParser(prog="earworm")
    cli_queries.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(["queries", "make", "--catalogue", str(catalogue), "--out", str(out),
                              "--kinds", "tone,sung", "--min-seconds", "3", "--max-seconds", "3.5",
                              "--seed", "1", "--limit", "1", "--per-track", "2"])
    assert args.func(args) == 0
    queries = read_queries(out / "queries.csv")
    assert [q.extra["kind"] for q in queries] == ["tone", "sung"]
    bad = parser.parse_args(["queries", "make", "--catalogue", str(tmp_path / "nope.csv"), "--out", str(out)])
    assert bad.func(bad) == 2
    assert "error" in capsys.readouterr().err
