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


# --- adc2004 ------------------------------------------------------------------------------------

ADC_CLIPS = {"pop1": ("pop", [60, 62, 64, 65, 67, 65, 64, 62] * 3),
             "opera1": ("opera", [67, 69, 71, 72, 74, 72, 71, 69] * 3)}
ADC_NOTE_S, ADC_LEAD_S, ADC_SECONDS = 0.5, 0.5, 12.0
ADC_HOP_S = 256 / 44100


def make_fake_adc2004(root: Path) -> Path:
    """Two 12 s clips: 0.5 s of silence, then a sung-like tone (30-cent vibrato) on 23 half-second notes,
    with the matching f0 annotation every 5.805 ms (0 during the silence)."""
    from tests.conftest import sung_tone

    lines = ["clip_id,genre,audio,melody"]
    for clip, (genre, pitches) in ADC_CLIPS.items():
        n_notes = int((ADC_SECONDS - ADC_LEAD_S) / ADC_NOTE_S)
        tone = sung_tone(pitches[:n_notes], note_s=ADC_NOTE_S)
        audio = np.concatenate([np.zeros(int(ADC_LEAD_S * C.SAMPLE_RATE), np.float32), tone])
        write_audio(root / "audio" / f"{clip}.flac", audio)
        times = np.arange(int(audio.size / C.SAMPLE_RATE / ADC_HOP_S)) * ADC_HOP_S
        t = times - ADC_LEAD_S
        note = np.clip((t // ADC_NOTE_S).astype(int), 0, n_notes - 1)
        f0 = 440.0 * 2 ** ((np.asarray(pitches)[note] - 69) / 12) * 2 ** (30 / 1200 * np.sin(2 * np.pi * 5.5 * t))
        f0 = np.where(t >= 0, f0, 0.0)
        (root / "melody").mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "melody" / f"{clip}.f0.txt", np.column_stack([times, f0]), fmt="%.3f %.3f")
        lines.append(f"{clip},{genre},audio/{clip}.flac,melody/{clip}.f0.txt")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def fake_adc2004(tmp_path_factory) -> Path:
    return make_fake_adc2004(tmp_path_factory.mktemp("adc2004"))


ADC_FAST = dict(pitch_accuracy=False, per_track=2, kinds=("hum", "tone"), min_query_s=5.0, max_query_s=7.0)


def test_adc2004_builder_on_a_fake_source(tmp_path, fake_adc2004, tiny_bench):
    import pretty_midi

    from training.evaluation.benchsets import Adc2004Config, build_adc2004

    out = tmp_path / "adc"
    config = Adc2004Config(**ADC_FAST)
    summary = build_adc2004(out, fake_adc2004, distractors=tiny_bench["catalogue"], config=config)
    assert summary["songs"] == 2 and summary["tracks"] == 5 and "pitch_on_mix" not in summary
    import json

    assert "pitch_on_mix" not in json.loads((out / "benchset.json").read_text())  # absent, not null
    with open(summary["catalogue"], newline="") as f:
        assert csv.DictReader(f).fieldnames == ["track_id", "title", "artist", "path", "melody_midi"]
    tracks = read_catalogue(summary["catalogue"])
    assert [t.track_id for t in tracks] == ["adc2004-pop1", "adc2004-opera1", "song_a", "song_b", "song_c"]
    assert [(t.title, t.artist) for t in tracks[:2]] == [("pop1", "pop"), ("opera1", "opera")]
    assert tracks[0].path == (fake_adc2004 / "audio" / "pop1.flac").resolve()  # referenced, not copied
    assert not (out / "catalogue" / "audio").exists()
    assert tracks[0].melody_midi == (out / "catalogue" / "midi" / "pop1.mid").resolve()
    for track, (genre, pitches) in zip(tracks[:2], ADC_CLIPS.values()):
        notes = pretty_midi.PrettyMIDI(str(track.melody_midi)).instruments[0].notes
        assert [n.pitch for n in notes] == pitches[: len(notes)] and len(notes) == 23
        onsets = np.array([n.start for n in notes])
        # 20 ms label grid; a one-semitone step under 30-cent vibrato may be seen one frame late
        np.testing.assert_allclose(onsets, ADC_LEAD_S + ADC_NOTE_S * np.arange(23), atol=0.04)
        assert abs(notes[-1].end - ADC_SECONDS) < 0.05
    queries = read_queries(summary["queries"])
    assert len(queries) == 4 and summary["query_kinds"] == {"hum": 2, "tone": 2}
    assert {q.track_id for q in queries} == {"adc2004-pop1", "adc2004-opera1"}
    assert all(q.extra["kind"] in ("hum", "tone") and q.query_id.startswith(q.track_id) for q in queries)
    assert {q.extra["genre"] for q in queries} == {"pop", "opera"}
    assert [t.track_id for t in read_catalogue(out / "songs" / "manifest.csv")] == ["adc2004-pop1", "adc2004-opera1"]
    # resumable: the same settings reuse the queries
    mtime = queries[0].path.stat().st_mtime_ns
    again = build_adc2004(out, fake_adc2004, config=config)
    assert again["queries_reused"] and again["tracks"] == 2
    assert queries[0].path.stat().st_mtime_ns == mtime


def test_adc2004_rejects_clashing_distractors_and_a_missing_source(tmp_path, fake_adc2004):
    from data_gen.manifest import Track, write_catalogue
    from training.evaluation.benchsets import Adc2004Config, build_adc2004

    clash = tmp_path / "clash" / "manifest.csv"
    write_catalogue(clash, [Track("adc2004-pop1", "x", "y", fake_adc2004 / "audio" / "pop1.flac")])
    with pytest.raises(ManifestError, match="clash"):
        build_adc2004(tmp_path / "out", fake_adc2004, distractors=clash, config=Adc2004Config(**ADC_FAST))
    assert not (tmp_path / "out" / "queries" / "queries.csv").exists()  # failed before any synthesis
    with pytest.raises(FileNotFoundError, match="adc2004 source not found"):
        build_adc2004(tmp_path / "out", tmp_path / "nowhere")


def test_adc2004_pitch_accuracy_on_a_clean_tone(tmp_path, fake_adc2004, crepe_weights):
    from training.evaluation.benchsets import Adc2004Config, build_adc2004

    config = Adc2004Config(**{**ADC_FAST, "pitch_accuracy": True, "per_track": 1, "kinds": ("tone",)})
    summary = build_adc2004(tmp_path / "adc", fake_adc2004, config=config)
    pitch = summary["pitch_on_mix"]
    assert pitch["raw_pitch_accuracy"] > 0.9 and pitch["raw_chroma_accuracy"] >= pitch["raw_pitch_accuracy"]
    assert pitch["voicing_recall"] > 0.9 and pitch["voicing_false_alarm"] < 0.5
    import json

    info = json.loads((tmp_path / "adc" / "benchset.json").read_text())["pitch_on_mix"]
    assert set(info["per_genre"]) == {"pop", "opera"} and set(info["clips"]) == {"pop1", "opera1"}
    assert info["overall"]["frames"] == sum(c["frames"] for c in info["clips"].values())


def test_zalo_builder_points_at_the_real_files_and_pads_with_distractors(tmp_path, tiny_bench):
    from training.evaluation.benchsets import build_zalo

    src = tmp_path / "zalo_mini"
    for i in range(2):
        write_audio(src / "songs" / f"000{i}.flac", synth(melody_notes([60 + i, 62, 64, 65]), chords=True))
        write_audio(src / "hums" / f"000{i}.wav", synth(melody_notes([60 + i, 62, 64, 65])))
    (src / "manifest.csv").write_text("track_id,title,artist,path\n" + "".join(
        f"zalo-000{i},zalo song 000{i},unknown,songs/000{i}.flac\n" for i in range(2)))
    (src / "queries.csv").write_text("query_id,path,track_id,kind\n" + "".join(
        f"zalo-hum-000{i},hums/000{i}.wav,zalo-000{i},hum_real\n" for i in range(2)))
    result = build_zalo(tmp_path / "out", src, distractors=tiny_bench["catalogue"])
    assert result["songs"] == 2 and result["tracks"] == 2 + len(read_catalogue(tiny_bench["catalogue"]))
    tracks = read_catalogue(result["catalogue"])
    assert tracks[0].path == (src / "songs" / "0000.flac").resolve()  # the source file, never a copy
    queries = read_queries(result["queries"])
    assert [(q.track_id, q.extra["kind"]) for q in queries] == [("zalo-0000", "hum_real"), ("zalo-0001", "hum_real")]
    (src / "queries.csv").write_text("query_id,path,track_id,kind\nq,hums/0000.wav,zalo-9999,hum_real\n")
    with pytest.raises(ManifestError, match="not in"):
        build_zalo(tmp_path / "out2", src)
    with pytest.raises(FileNotFoundError, match="zalo_mini source not found"):
        build_zalo(tmp_path / "out3", tmp_path / "nowhere")
