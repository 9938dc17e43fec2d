"""Fixtures for the training tests: tiny synthesized training-pair TFRecords."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from data_gen import constants as C


def melody_notes(seed: int, seconds: float = C.EXAMPLE_SECONDS) -> list[tuple[float, float, int]]:
    """A random melody: [(start_s, dur_s, midi)] filling `seconds`."""
    rng = np.random.default_rng(seed)
    notes, t, pitch = [], 0.0, int(rng.integers(60, 72))
    while t < seconds:
        dur = float(rng.choice([0.25, 0.5, 0.5, 0.75]))
        notes.append((t, dur, pitch))
        pitch = int(np.clip(pitch + rng.integers(-4, 5), 52, 80))
        t += dur
    return notes


def render(notes, transpose: float = 0.0, harmonics: int = 4, chords: bool = False,
           seconds: float = C.EXAMPLE_SECONDS, seed: int = 0) -> np.ndarray:
    """Additive synthesis of `notes` (optionally with triads and a bass line): [samples] float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * C.SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    for start, dur, midi in notes:
        i0 = int(start * C.SAMPLE_RATE)
        i1 = min(n, int((start + dur) * C.SAMPLE_RATE))
        if i0 >= n:
            break
        t = np.arange(i1 - i0) / C.SAMPLE_RATE
        env = np.minimum(1.0, np.minimum(t / 0.02, (t[-1] - t + 1e-3) / 0.03)).astype(np.float32)
        voices = [(midi + transpose, 1.0)]
        if chords:
            voices += [(midi - 12 + 4, 0.3), (midi - 12 + 7, 0.3), (midi - 24, 0.5)]
        for m, amp in voices:
            f0 = 440.0 * 2 ** ((m - 69) / 12)
            for k in range(1, harmonics + 1):
                if k * f0 < C.SAMPLE_RATE / 2:
                    out[i0:i1] += amp / k * env * np.sin(2 * np.pi * k * f0 * t).astype(np.float32)
    out += 0.002 * rng.standard_normal(n).astype(np.float32)
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def write_tiny_data(root, train_melodies: int = 6, val_melodies: int = 3, per_melody: int = 2, seed: int = 0):
    """DATA_DIR/{train,validation}/part-0.tfrecord.gz of synthetic (sine query, chord master) pairs."""
    import tensorflow as tf

    from data_gen.examples import PairExample, to_tf_example

    rng = np.random.default_rng(seed)
    for split, count, offset in (("train", train_melodies, 0), ("validation", val_melodies, 1000)):
        d = root / split
        d.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(d / "part-0.tfrecord.gz"), options="GZIP") as w:
            for mel in range(offset, offset + count):
                notes = melody_notes(seed * 10_000 + mel)
                master = render(notes, chords=True, harmonics=6, seed=mel)
                for j in range(per_melody):
                    shift = float(rng.integers(-5, 6))
                    query = render(notes, transpose=shift, harmonics=3, seed=mel * 100 + j)
                    w.write(to_tf_example(PairExample(
                        example_id=f"m{mel}/hum/{j}", melody_id=f"m{mel}", split=split, source="catalogue",
                        query_kind="hum" if j % 2 == 0 else "whistle", query_audio=query,
                        master_audio=master, transpose=shift)))
    return root


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp("tiny_pairs"))
