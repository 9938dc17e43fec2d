"""Building a synthetic catalogue: manifest contract, files, idempotence, worker independence."""

from __future__ import annotations

import argparse
import json

import pretty_midi
import pytest

from data_gen import catalogue as cat
from data_gen import cli_catalogue
from data_gen.audio import load_audio
from data_gen.manifest import read_catalogue
from data_gen.melodies import Melody, Note, split_of


@pytest.fixture(autouse=True)
def _soundfont():
    from data_gen.render import SoundfontNotFoundError, find_soundfont

    try:
        find_soundfont()
    except SoundfontNotFoundError as e:
        pytest.skip(str(e))


def _tunes(n: int) -> list[Melody]:
    out = []
    for k in range(n):
        steps = [0, 4, 7, 4, 5, 2, -1, 0][k:] + [0, 4, 7, 4, 5, 2, -1, 0][:k]
        notes = tuple(Note(62 + steps[i % 8], 0.5 * i, 0.5) for i in range(24))
        out.append(Melody(f"test-tune-{k}", f"Tune {k}", "test", notes, bpm=110.0, length_beats=12.0))
    return out


def test_build_catalogue_of_three_test_split_melodies(tmp_path):
    out = tmp_path / "cat"
    manifest = cat.build_catalogue(out, 3, "test", seed=0, workers=1, progress=False)
    assert manifest == out / "manifest.csv"
    tracks = read_catalogue(manifest)
    assert len(tracks) == 3
    infos = [json.loads(line) for line in (out / "catalogue_info.jsonl").read_text().splitlines()]
    assert [i["track_id"] for i in infos] == [t.track_id for t in tracks]
    for t, info in zip(tracks, infos):
        assert t.path == out / "audio" / f"{t.track_id}.flac"
        assert info["split"] == "test" == split_of(info["melody_id"])
        assert t.title == info["title"] and t.artist == info["artist"] and t.artist
        for key in ("style", "bpm", "key_shift", "duration_seconds", "melody_id"):
            assert key in info
        audio = load_audio(t.path)
        assert 20.0 <= audio.size / 16000 <= 40.0
        assert abs(audio.size / 16000 - info["duration_seconds"]) < 0.01
        melody = pretty_midi.PrettyMIDI(str(t.melody_midi))
        assert len(melody.instruments) == 1 and len(melody.instruments[0].notes) >= 12
        assert melody.instruments[0].notes[-1].end < audio.size / 16000
    # Same arguments again: everything is reused, nothing re-rendered, same manifest.
    before = manifest.read_text()
    report = cat.build_catalogue_report(out, 3, "test", seed=0, workers=1, progress=False)
    assert (report.rendered, report.reused) == (0, 3)
    assert manifest.read_text() == before


def test_output_does_not_depend_on_worker_count(tmp_path):
    tunes = _tunes(2)
    one = cat.build_catalogue(tmp_path / "one", None, melodies=tunes, workers=1, seed=5, progress=False)
    two = cat.build_catalogue(tmp_path / "two", None, melodies=tunes, workers=2, seed=5, progress=False)
    assert one.read_text() == two.read_text()
    for t in read_catalogue(one):
        assert t.path.read_bytes() == (tmp_path / "two" / "audio" / t.path.name).read_bytes()
        assert t.melody_midi.read_bytes() == (tmp_path / "two" / "midi" / t.melody_midi.name).read_bytes()


def test_chosen_melodies_exclusions_and_size(tmp_path):
    tunes = _tunes(3)
    manifest = cat.build_catalogue(tmp_path / "c", 1, melodies=tunes, workers=1, progress=False,
                                   exclude_melody_ids={"test-tune-0"}, audio_format="wav")
    (track,) = read_catalogue(manifest)
    assert track.track_id == "test-tune-1"
    assert track.path.suffix == ".wav"
    with pytest.raises(ValueError):
        cat.build_catalogue(tmp_path / "d", 1, melodies=tunes, audio_format="mp3", progress=False)
    with pytest.raises(cat.CatalogueError):
        cat.build_catalogue(tmp_path / "e", 1, melodies=tunes[:1], exclude_melody_ids={"test-tune-0"},
                            progress=False, workers=1)


def test_cli_builds_and_reports_time_per_track(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli_catalogue.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["catalogue", "build", "--size", "1", "--out", str(tmp_path / "c"),
                              "--split", "validation", "--workers", "1", "--format", "ogg",
                              "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "s per track" in printed and "1 tracks" in printed
    (track,) = read_catalogue(tmp_path / "c" / "manifest.csv")
    assert track.path.suffix == ".ogg" and split_of(track.track_id) == "validation"


def test_sung_lead_share_and_reuse(tmp_path):
    from data_gen.catalogue import build_catalogue_report

    out = tmp_path / "cat"
    first = build_catalogue_report(out, 2, "test", seed=0, workers=1, progress=False, sung_lead_share=1.0)
    info = [json.loads(line) for line in (out / "catalogue_info.jsonl").read_text().splitlines() if line]
    assert first.rendered == 2 and {i["lead_voice"] for i in info} == {"sung"}
    again = build_catalogue_report(out, 2, "test", seed=0, workers=1, progress=False, sung_lead_share=1.0)
    assert again.reused == 2
    plain = build_catalogue_report(out, 2, "test", seed=0, workers=1, progress=False)  # another share: re-rendered
    assert plain.rendered == 2
    with pytest.raises(ValueError, match="sung_lead_share"):
        build_catalogue_report(out, 2, "test", seed=0, workers=1, progress=False, sung_lead_share=1.5)
