"""Fixtures for the Beam pipeline tests: tiny MIR-1K-like folders synthesized in tmp (with a
corrupt clip), a tiny exported encoder, and the in-process runner flags."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from data_gen import constants as C
from data_gen import paths
from data_gen.audio import write_audio
from tests.conftest import sung_tone

IN_PROCESS = ("--runner=FnApiRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory")

# Song ids whose splits (data_gen.melodies.split_of) differ, so split routing is exercised.
CLIPS = (
    # clip_id, song_id, midi notes of the voice
    ("alpha_1_01", "alpha_1", (60, 62, 64, 65, 67, 65, 64, 62, 60)),  # train
    ("alpha_1_02", "alpha_1", (67, 65, 64, 62, 60, 62, 64, 65, 67)),  # train
    ("song3_01", "song3", (57, 60, 64, 62, 59, 57, 60, 64, 69)),  # test
)
CORRUPT_CLIP = ("broken_3_01", "broken_3")


def accompaniment(n: int, seed: int) -> np.ndarray:
    """A quiet chordal drone [n] float32 (the 'backing track')."""
    t = np.arange(n) / C.SAMPLE_RATE
    rng = np.random.default_rng(seed)
    out = sum(0.05 * np.sin(2 * np.pi * f * t) for f in (110.0, 164.8, 220.0))
    return (out + 0.002 * rng.standard_normal(n)).astype(np.float32)


def make_tiny_mir1k(root: Path, *, with_corrupt: bool = True) -> Path:
    """A MIR-1K-like folder: manifest.csv + audio/<clip>.voice.ogg / .accompaniment.ogg."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (clip, song, notes) in enumerate(CLIPS):
        voice = sung_tone(notes, note_s=0.5, seed=i)  # 4.5 s
        write_audio(root / "audio" / f"{clip}.voice.ogg", voice)
        write_audio(root / "audio" / f"{clip}.accompaniment.ogg", accompaniment(voice.size, i))
        rows.append((clip, "singer", song, f"{voice.size / C.SAMPLE_RATE:.3f}", C.SAMPLE_RATE))
    if with_corrupt:
        clip, song = CORRUPT_CLIP
        (root / "audio" / f"{clip}.voice.ogg").write_bytes(b"OggS this is not audio" * 50)
        write_audio(root / "audio" / f"{clip}.accompaniment.ogg", accompaniment(C.SAMPLE_RATE * 5, 9))
        rows.append((clip, "broken", song, "5.0", C.SAMPLE_RATE))
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "singer", "song_id", "duration_s", "sample_rate"])
        w.writerows(rows)
    return root


@pytest.fixture(scope="session")
def tiny_mir1k(tmp_path_factory) -> Path:
    return make_tiny_mir1k(tmp_path_factory.mktemp("mir1k"))


@pytest.fixture(scope="session")
def extractor_name() -> str:
    """CREPE tiny when its shared weights are present (the pipeline default), else skip."""
    if not paths.crepe_tiny_weights().is_file():
        pytest.skip(f"CREPE tiny weights not found at {paths.crepe_tiny_weights()}")
    return "crepe"


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    from training.export import export_untrained

    return export_untrained(tmp_path_factory.mktemp("model") / "untrained", seed=0)


def make_tiny_catalogue(root: Path, ids: tuple[str, ...], *, corrupt: str | None = None) -> Path:
    """A catalogue folder: audio/<id>.wav masters (voice-like melody + drone, 9 s) and
    manifest.csv; `corrupt` names an extra track whose file is not audio."""
    from data_gen.manifest import Track, write_catalogue

    (root / "audio").mkdir(parents=True, exist_ok=True)
    tracks = []
    for i, tid in enumerate(ids):
        notes = tuple(60 + (i * 5 + k * 3) % 12 for k in range(18))
        voice = sung_tone(notes, note_s=0.5, seed=i)
        path = root / "audio" / f"{tid}.wav"
        write_audio(path, 0.7 * voice + accompaniment(voice.size, i))
        tracks.append(Track(tid, f"Title {tid}", "Artist", path))
    if corrupt:
        path = root / "audio" / f"{corrupt}.wav"
        path.write_bytes(b"RIFF not really a wave file" * 20)
        tracks.append(Track(corrupt, "Broken", "Artist", path))
    write_catalogue(root / "manifest.csv", tracks)
    return root / "manifest.csv"


def make_tiny_melody_catalogue(root: Path) -> Path:
    """A catalogue folder as `earworm catalogue build` writes it (manifest.csv with melody_midi,
    catalogue_info.jsonl), with masters rendered here from the same notes as the melody MIDI
    (voice-like lead + drone), plus a track whose master is corrupt."""
    import json

    import pretty_midi

    from data_gen.manifest import Track, write_catalogue

    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "midi").mkdir(parents=True, exist_ok=True)
    tracks, info = [], []
    lead_s = 1.0
    for i, (tid, melody) in enumerate((("c1", "alpha_1"), ("c2", "song3"), ("c3", "song4"))):
        notes = [60 + (i * 5 + k * 3) % 12 for k in range(24)]  # 0.5 s each, after 1 s of intro
        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(program=0, name="melody")
        for k, m in enumerate(notes):
            inst.notes.append(pretty_midi.Note(100, m, lead_s + 0.5 * k, lead_s + 0.5 * k + 0.45))
        pm.instruments.append(inst)
        midi = root / "midi" / f"{tid}.mid"
        pm.write(str(midi))
        audio = root / "audio" / f"{tid}.wav"
        if tid == "c3":
            audio.write_bytes(b"RIFF broken" * 30)
        else:
            voice = np.concatenate([np.zeros(int(lead_s * C.SAMPLE_RATE), np.float32),
                                    sung_tone(tuple(notes), note_s=0.5, seed=i)])
            write_audio(audio, 0.7 * voice + accompaniment(voice.size, i))
        tracks.append(Track(tid, f"Title {tid}", "Artist", audio, midi))
        info.append({"track_id": tid, "melody_id": melody})
    write_catalogue(root / "manifest.csv", tracks)
    (root / "catalogue_info.jsonl").write_text("".join(json.dumps(r) + "\n" for r in info))
    return root
