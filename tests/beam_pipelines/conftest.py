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
