"""How fast this machine is at the encoder's kind of work, for the benchmarks to print beside their figures.

Machines of one kind have differed by up to 2x between sessions here (issue 17 was filed on one where a
one-thread `tf.matmul` reached 156 GFLOP/s; this figure read 95 on 2026-12-05, where the encoder's body
took 18.5 ms per query against 6.4 ms the session before), so milliseconds and requests per second
compare across runs only next to this figure; old and new code compare only in the same run.
"""

from __future__ import annotations

import time

import numpy as np


def one_thread_matmul_gflops(n: int = 512, repeats: int = 20) -> float:
    """The best float32 n x n matmul speed of one BLAS thread, GFLOP/s (about 0.1 s)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        a @ a  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def format_machine_line(matmul_gflops: float) -> str:
    return f"machine: one-thread float32 matmul {matmul_gflops:.1f} GFLOP/s"
