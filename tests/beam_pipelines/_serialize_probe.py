"""A fixed PairExample serialized with data_gen.examples.to_tf_example (run in two processes)."""

from __future__ import annotations

import hashlib

import numpy as np

from data_gen import constants as C
from data_gen.examples import PairExample, to_tf_example


def digest() -> str:
    q = np.linspace(-0.5, 0.5, C.EXAMPLE_SAMPLES, dtype=np.float32)
    ex = PairExample("m/hum/s/synth-000", "m", "train", "mir1k", "hum", q, q[::-1].copy(), 1.0, 2.0, 1.1, 3.0)
    return hashlib.sha256(to_tf_example(ex)).hexdigest()
