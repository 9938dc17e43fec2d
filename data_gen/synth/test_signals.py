"""Hum-like test signals: realistic enough load for benchmarks and tests of the serving path, made
in microseconds from a seed (no rendering, no files)."""

from __future__ import annotations

import numpy as np

from data_gen import constants as C


def hum_like_audio(seconds: float, seed: int) -> np.ndarray:
    """A hummed-sounding test signal: a random stepwise melody of harmonic tones with vibrato.

    Only the load matters here (the embedding cost depends on the length, not the content), but a
    realistic signal keeps the retrieval path's work (scores, aggregation) realistic too.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * C.SAMPLE_RATE))
    t = np.arange(n) / C.SAMPLE_RATE
    pitch = np.empty(n)
    pos, midi = 0, 57 + rng.integers(0, 8)
    while pos < n:
        length = int(rng.uniform(0.2, 0.6) * C.SAMPLE_RATE)
        pitch[pos : pos + length] = midi
        midi = int(np.clip(midi + rng.choice([-4, -2, -1, 0, 1, 2, 3, 5]), 48, 72))
        pos += length
    f0 = 440.0 * 2 ** ((pitch - 69) / 12) * (1 + 0.005 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / C.SAMPLE_RATE
    audio = sum(np.sin(h * phase) / h**1.5 for h in range(1, 6))
    audio = audio + 0.01 * rng.standard_normal(n)
    return (0.3 * audio / np.max(np.abs(audio))).astype(np.float32)
