"""The golden-embedding check of the shipped default model.

A fixed, deterministic input (`golden_windows`: a synthesized voice-like melody, a chord-backed
rendition of it, and a whistle-like sine an octave up, 4 s each) embedded by
serving/default_model must give the embeddings committed in tests/training/golden_embedding.npz.
Regenerate that file only when the default model changes, with

    .venv/bin/python -m training.golden            # writes tests/training/golden_embedding.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from data_gen import constants as C
from data_gen.paths import REPO_ROOT
from serving.embedder import DEFAULT_MODEL_DIR

GOLDEN_FILE = REPO_ROOT / "tests" / "training" / "golden_embedding.npz"
MELODY = (60, 62, 64, 65, 67, 65, 64, 62)  # MIDI notes, 0.5 s each


def _tone(midi_notes, note_s: float, harmonics: int, octave: int = 0) -> np.ndarray:
    f0 = np.repeat([440.0 * 2 ** ((m + 12 * octave - 69) / 12) for m in midi_notes], int(note_s * C.SAMPLE_RATE))
    phase = 2 * np.pi * np.cumsum(f0) / C.SAMPLE_RATE
    return sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))


def golden_windows() -> np.ndarray:
    """[3, WINDOW_SAMPLES] float32: voice-like melody, melody + chords + bass, whistle an octave up."""
    voice = _tone(MELODY, 0.5, 5)
    chords = voice + 0.4 * _tone([m - 8 for m in MELODY], 0.5, 3) + 0.5 * _tone([m - 24 for m in MELODY], 0.5, 2)
    whistle = _tone(MELODY, 0.5, 1, octave=1)
    out = np.stack([voice, chords, whistle])[:, : C.WINDOW_SAMPLES]
    return (0.5 * out / np.abs(out).max(axis=1, keepdims=True)).astype(np.float32)


def write_golden(model_dir: Path = DEFAULT_MODEL_DIR, path: Path = GOLDEN_FILE) -> Path:
    from serving.embedder import Embedder

    emb = Embedder(model_dir)
    np.savez(path, embedding=emb.embed_windows(golden_windows()), version=np.array(emb.version))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--out", type=Path, default=GOLDEN_FILE)
    args = p.parse_args(argv)
    print(write_golden(args.model, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
