"""Benchmark-set builders on tiny fake source folders laid out like ../shared/data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.audio import load_audio, write_audio
from data_gen.manifest import ManifestError, read_catalogue, read_queries
from tests.training.evaluation.conftest import melody_notes, synth
from data_gen.mir1k_leads import notes_from_pitch_labels
from training.evaluation.benchsets import Mir1kCrossConfig, build_mir1k_cross, build_openset
from training.evaluation.benchsets.mir1k_cross import select_songs

CLIP_PITCHES = {"fake_1_01": [60, 62, 64, 65, 67, 65, 64, 62, 60, 64, 67, 64, 60, 62, 64, 62, 60],
                "fake_1_02": [67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60, 62, 64, 65, 67, 65, 64]}


def make_fake_mir1k(root: Path) -> Path:
    """mir1k layout: manifest.csv, audio/<clip>.{voice,accompaniment}.ogg, pitch/<clip>.pv (2 clips)."""
    rows = []
    for i, (clip, pitches) in enumerate(CLIP_PITCHES.items()):
        notes = melody_notes(pitches)
        voice = synth(notes, harmonics=4, seed=i)
        accomp = synth([(on, off, p - 12) for on, off, p in notes], chords=True, seed=10 + i)
        write_audio(root / "audio" / f"{clip}.voice.ogg", voice)
        write_audio(root / "audio" / f"{clip}.accompaniment.ogg", accomp[: voice.size])
        frames = np.arange(int(voice.size / C.SAMPLE_RATE / 0.02))
        centres = 0.02 * frames + 0.02
        pv = np.zeros(frames.size)
        for on, off, p in notes:
            pv[(centres >= on) & (centres < off)] = p + 0.1 * np.sin(centres[(centres >= on) & (centres < off)] * 30)
        (root / "pitch").mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "pitch" / f"{clip}.pv", pv, fmt="%.4f")
        rows.append({"clip_id": clip, "singer": "fake", "song_id": "fake_1",
                     "duration_s": f"{voice.size / C.SAMPLE_RATE:.3f}", "sample_rate": "16000"})
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_notes_from_pitch_labels_keeps_vibrato_in_one_note():
    frames = np.r_[np.zeros(5), 60 + 0.3 * np.sin(np.arange(25)), np.zeros(3), np.full(10, 64.2), np.full(2, 70.0)]
    notes = notes_from_pitch_labels(frames)
    assert [p for _, _, p in notes] == [60, 64]  # the 2-frame blip (40 ms) is dropped
    assert notes[0][0] == pytest.approx(0.02 + 5 * 0.02 - 0.01)
    assert notes[0][1] == pytest.approx(0.02 + 29 * 0.02 + 0.01)


def test_select_songs_keeps_test_split_only():
    from data_gen.melodies import split_of

    ids = [f"s_{i}" for i in range(60)]
    rows = [{"clip_id": f"{s}_01", "singer": "s", "song_id": s} for s in ids]
    chosen = select_songs(rows, all_songs=False)
    assert chosen and set(chosen) == {s for s in ids if split_of(s) == "test"}
    assert len(select_songs(rows, all_songs=True)) == 60


def test_mir1k_cross_builder_on_a_fake_source(tmp_path, tiny_bench):
    source = make_fake_mir1k(tmp_path / "mir1k")
    out = tmp_path / "bench"
    summary = build_mir1k_cross(out, source, distractors=tiny_bench["catalogue"],
                                config=Mir1kCrossConfig(all_songs=True))
    tracks = read_catalogue(summary["catalogue"])
    assert [t.track_id for t in tracks] == ["fake_1", "song_a", "song_b", "song_c"]
    master = load_audio(tracks[0].path)
    original = sum(load_audio(source / "audio" / f"{c}.accompaniment.ogg", reject_silence=False).size
                   for c in CLIP_PITCHES)
    ratio = master.size / original
    assert 0.93 < ratio < 1.07 and abs(ratio - 1) > 0.015  # time-stretched by a few percent
    import pretty_midi

    notes = pretty_midi.PrettyMIDI(str(tracks[0].melody_midi)).instruments[0].notes
    assert [n.pitch for n in notes[:5]] == CLIP_PITCHES["fake_1_01"][:5]
    queries = read_queries(summary["queries"])
    assert len(queries) == 2 and all(q.track_id == "fake_1" and q.extra["kind"] == "sung_real" for q in queries)
    for q in queries:
        assert 5.0 <= load_audio(q.path).size / C.SAMPLE_RATE <= 8.0 + 1e-3
    # resumable: a second build reuses the master
    mtime = tracks[0].path.stat().st_mtime_ns
    build_mir1k_cross(out, source, config=Mir1kCrossConfig(all_songs=True))
    assert tracks[0].path.stat().st_mtime_ns == mtime


def test_mir1k_cross_needs_a_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="mir1k source not found"):
        build_mir1k_cross(tmp_path / "out", tmp_path / "nowhere")


def test_openset_builder_on_a_fake_source(tmp_path):
    root = tmp_path / "qbh"
    for song in ("tune1", "tune2"):
        write_audio(root / "hums" / song / "1.ogg", synth(melody_notes([60, 62, 64, 62] * 3), seed=1))
    (root / "manifest.csv").write_text("query_id,song,path,duration_s,sample_rate\n"
                                       "tune1-1,tune1,hums/tune1/1.ogg,5.0,16000\n"
                                       "tune2-1,tune2,hums/tune2/1.ogg,5.0,16000\n")
    summary = build_openset(tmp_path / "out", root)
    queries = read_queries(summary["queries"])
    assert [q.track_id for q in queries] == [None, None]
    assert [q.extra["song"] for q in queries] == ["tune1", "tune2"]
    assert queries[0].path == (root / "hums" / "tune1" / "1.ogg").resolve()
    (root / "hums" / "tune2" / "1.ogg").unlink()
    with pytest.raises(ManifestError, match="hum not found"):
        build_openset(tmp_path / "out2", root)


def test_synthetic_builder_is_incremental(tmp_path):
    from data_gen.melodies import split_of
    from training.evaluation.benchsets import SyntheticConfig, build_synthetic
    from training.evaluation.benchsets.synthetic import Pool

    out = tmp_path / "synthetic"
    small = build_synthetic(out, SyntheticConfig(tracks=2, songs=1, queries=1, kinds=("hum",)))
    tracks = read_catalogue(small["catalogue"])
    queries = read_queries(small["queries"])
    assert len(tracks) == 2 and all(t.melody_midi is not None for t in tracks)
    assert split_of(tracks[0].track_id) == "test"  # the queried song is held out from training
    assert [q.track_id for q in queries] == [tracks[0].track_id]
    assert 5.0 <= float(queries[0].extra["duration_s"]) <= 10.0
    rendered = {e["melody_id"] for e in Pool(out).entries.values() if "track_id" in e}
    first_mtime = tracks[1].path.stat().st_mtime_ns
    bigger = build_synthetic(out, SyntheticConfig(tracks=3, songs=1, queries=1, kinds=("hum",)))
    big_tracks = read_catalogue(bigger["catalogue"])
    assert [t.track_id for t in big_tracks[:2]] == [t.track_id for t in tracks]  # 1k is a prefix of 10k
    assert big_tracks[1].path.stat().st_mtime_ns == first_mtime  # not re-rendered
    assert len({e["melody_id"] for e in Pool(out).entries.values() if "track_id" in e} - rendered) >= 1
