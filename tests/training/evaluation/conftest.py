"""Fixtures for the evaluation tests: a tiny catalogue of three synthesized songs with melody MIDI,
and queries that play one song's melody as a plain tone (optionally transposed / faster)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.audio import write_audio
from data_gen.manifest import Query, Track, write_catalogue, write_queries

NOTE_S = 0.4
MELODIES = {
    # distinct pitch sets and contours, ~12 s each
    "song_a": [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60, 64, 67, 72, 67, 64,
               60, 62, 64, 62, 60, 67, 65, 64, 62, 60],
    "song_b": [57, 60, 64, 69, 64, 60, 57, 52, 57, 60, 64, 60, 57, 55, 59, 62, 67, 62, 59, 55,
               57, 64, 69, 64, 57, 52, 57, 60, 57, 52],
    "song_c": [70, 73, 75, 78, 75, 73, 70, 68, 66, 68, 70, 66, 63, 66, 70, 73, 70, 66, 63, 61,
               63, 66, 68, 70, 73, 75, 73, 70, 68, 66],
}


def melody_notes(pitches, note_s: float = NOTE_S, start: float = 0.0):
    """[(onset_s, offset_s, midi)] with a short gap between notes."""
    return [(start + i * note_s, start + (i + 0.9) * note_s, p) for i, p in enumerate(pitches)]


def synth(notes, *, transpose: float = 0.0, tempo: float = 1.0, harmonics: int = 4, chords: bool = False,
          seconds: float | None = None, seed: int = 0) -> np.ndarray:
    """Additive synthesis of notes [(on, off, midi)], time-scaled by 1/tempo: [samples] float32."""
    rng = np.random.default_rng(seed)
    end = max(off for _, off, _ in notes) / tempo + 0.3
    n = int((seconds or end) * C.SAMPLE_RATE)
    out = np.zeros(n, np.float64)
    for on, off, midi in notes:
        i0, i1 = int(on / tempo * C.SAMPLE_RATE), min(n, int(off / tempo * C.SAMPLE_RATE))
        if i0 >= n:
            break
        t = np.arange(i1 - i0) / C.SAMPLE_RATE
        env = np.minimum(1.0, np.minimum(t / 0.02, (t[-1] - t + 1e-3) / 0.03))
        voices = [(midi + transpose, 1.0)]
        if chords:
            voices += [(midi - 12 + 4, 0.25), (midi - 12 + 7, 0.25), (midi - 24, 0.4)]
        for m, amp in voices:
            f0 = 440.0 * 2 ** ((m - 69) / 12)
            for k in range(1, harmonics + 1):
                if k * f0 < C.SAMPLE_RATE / 2:
                    out[i0:i1] += amp / k * env * np.sin(2 * np.pi * k * f0 * t)
    out += 0.002 * rng.standard_normal(n)
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def write_midi(path: Path, notes) -> None:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0)
    inst.notes = [pretty_midi.Note(velocity=100, pitch=int(p), start=on, end=off) for on, off, p in notes]
    pm.instruments.append(inst)
    pm.write(str(path))


def excerpt(pitches, first: int, count: int):
    return melody_notes(pitches[first : first + count])


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> dict[str, Path]:
    """catalogue/manifest.csv (3 songs: chord-accompanied masters + melody MIDI) and queries.csv:
    q_a (song_a, plain tone, same key), q_b (song_b, +3 semitones, 8 % faster), q_open (an unrelated
    tune, open set)."""
    root = tmp_path_factory.mktemp("tiny_bench")
    tracks = []
    for i, (tid, pitches) in enumerate(MELODIES.items()):
        notes = melody_notes(pitches)
        write_audio(root / "audio" / f"{tid}.flac", synth(notes, chords=True, harmonics=6, seed=i))
        write_midi(root / f"{tid}.mid", notes)
        tracks.append(Track(tid, tid.replace("_", " ").title(), "Test", root / "audio" / f"{tid}.flac",
                            root / f"{tid}.mid"))
    write_catalogue(root / "manifest.csv", tracks)
    q = root / "queries"
    write_audio(q / "q_a.wav", synth(excerpt(MELODIES["song_a"], 4, 16), harmonics=3, seed=10))
    write_audio(q / "q_b.wav", synth(excerpt(MELODIES["song_b"], 8, 16), transpose=3, tempo=1.08,
                                     harmonics=3, seed=11))
    write_audio(q / "q_open.wav", synth(melody_notes([50, 51, 50, 51, 53, 50, 48, 50] * 2), harmonics=3, seed=12))
    write_queries(root / "queries.csv", [
        Query("q_a", q / "q_a.wav", "song_a", {"kind": "tone"}),
        Query("q_b", q / "q_b.wav", "song_b", {"kind": "tone_transposed"}),
        Query("q_open", q / "q_open.wav", None, {"kind": "tone"}),
    ])
    return {"root": root, "catalogue": root / "manifest.csv", "queries": root / "queries.csv"}
