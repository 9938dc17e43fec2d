"""Snippet sources: MIR-1K and snippet-manifest CSVs normalised to `Snippet` records."""

from __future__ import annotations

import json

import pytest

from beam_pipelines.sources import (
    Snippet,
    SourceError,
    catalogue_snippets,
    mir1k_snippets,
    read_snippets,
    sample_limit,
    stable_hash,
    write_snippets,
)
from data_gen.melodies import split_of


def test_mir1k_snippets_pair_voice_with_voice_plus_accompaniment(tiny_mir1k):
    snippets = mir1k_snippets(tiny_mir1k)
    assert len(snippets) == 4
    s = next(x for x in snippets if x.snippet_id == "mir1k:alpha_1_01")
    assert s.melody_id == "alpha_1" and s.source == "mir1k" and s.alignment == "sample"
    assert s.performance.endswith("alpha_1_01.voice.ogg")
    assert [p.rsplit("/", 1)[-1] for p in s.master] == ["alpha_1_01.voice.ogg", "alpha_1_01.accompaniment.ogg"]
    # splits follow the song, so every clip of a song lands in the same split
    for x in snippets:
        assert x.split == split_of(x.melody_id)
    assert {x.split for x in snippets if x.melody_id == "song3"} == {"test"}


def test_mir1k_missing_manifest_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="manifest not found"):
        mir1k_snippets(tmp_path)


def test_sample_limit_is_deterministic_and_sorted():
    snippets = [Snippet(f"s{i}", f"m{i}", "train", "mir1k", "p", "", ("p",)) for i in range(50)]
    a = sample_limit(snippets, 10)
    b = sample_limit(list(reversed(snippets)), 10)
    assert [s.snippet_id for s in a] == [s.snippet_id for s in b]
    assert [s.snippet_id for s in a] == sorted(s.snippet_id for s in a)
    assert len(sample_limit(snippets, None)) == 50
    assert stable_hash("x", 1) == stable_hash("x", 1) != stable_hash("x", 2)


def test_snippet_csv_round_trip_and_split_check(tmp_path, tiny_mir1k):
    snippets = mir1k_snippets(tiny_mir1k)
    path = tmp_path / "snippets.csv"
    write_snippets(path, snippets)
    assert read_snippets(path) == snippets
    text = path.read_text().replace(",test,", ",train,")  # song3 is a test song
    path.write_text(text)
    with pytest.raises(SourceError, match="splits are by melody id only"):
        read_snippets(path)


def test_catalogue_snippets_render_performances_of_the_melody_midi(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "midi").mkdir()
    (tmp_path / "audio" / "t1.flac").write_bytes(b"x")
    (tmp_path / "midi" / "t1.mid").write_bytes(b"x")
    (tmp_path / "manifest.csv").write_text(
        "track_id,title,artist,path,melody_midi\nt1,Song,Band,audio/t1.flac,midi/t1.mid\n")
    (tmp_path / "catalogue_info.jsonl").write_text(
        json.dumps({"track_id": "t1", "melody_id": "song3", "split": "test"}) + "\n")
    snippets = catalogue_snippets(tmp_path, ("sung", "hum"))
    assert [s.snippet_id for s in snippets] == ["catalogue:t1:sung", "catalogue:t1:hum"]
    assert all(s.split == "test" and s.alignment == "midi" for s in snippets)
    assert snippets[1].generator_spec["kind"] == "hum"
    assert snippets[1].generator_spec["midi"].endswith("midi/t1.mid")
    # a split in the info file that disagrees with split_of is refused
    (tmp_path / "catalogue_info.jsonl").write_text(
        json.dumps({"track_id": "t1", "melody_id": "song3", "split": "train"}) + "\n")
    with pytest.raises(SourceError, match="split"):
        catalogue_snippets(tmp_path)
