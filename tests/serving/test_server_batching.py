"""serving.batching: the micro-batcher hands every request its own rows, whatever the batching."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from serving.batching import BatcherClosed, BatchingConfig, DirectEmbedding, EmbeddingTimeout, MicroBatcher


class RecordingEmbed:
    """A fake model: embedding = the window's first 3 samples; records each call's batch size."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[int] = []
        self.gate = gate

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(5)
        self.calls.append(windows.shape[0])
        return windows[:, :3] * 2.0


def _windows(request: int, n: int) -> np.ndarray:
    w = np.zeros((n, 8), np.float32)
    w[:, 0] = request
    w[:, 1] = np.arange(n)
    return w


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    gate = threading.Event()
    embed = RecordingEmbed(gate)
    batcher = MicroBatcher(embed, BatchingConfig(max_batch_windows=64, max_wait_ms=50))
    try:
        first = batcher.submit(_windows(0, 2))  # occupies the worker until the gate opens
        futures = [batcher.submit(_windows(r, r + 1)) for r in range(1, 6)]
        gate.set()
        outs = [first.result(5)] + [f.result(5) for f in futures]
    finally:
        batcher.close()
    for r, out in enumerate(outs):
        n = 2 if r == 0 else r + 1
        np.testing.assert_array_equal(out, _windows(r, n)[:, :3] * 2.0)
    assert sum(embed.calls) == 2 + sum(range(2, 7))
    assert len(embed.calls) < 6  # requests were combined
    stats = batcher.stats()
    assert stats["embed_requests"] == 6 and stats["embed_batches"] == len(embed.calls)


def test_batch_size_limit_is_respected_between_requests():
    embed = RecordingEmbed()
    batcher = MicroBatcher(embed, BatchingConfig(max_batch_windows=4, max_wait_ms=20))
    try:
        futures = [batcher.submit(_windows(r, 3)) for r in range(4)]
        for f in futures:
            f.result(5)
    finally:
        batcher.close()
    assert max(embed.calls) <= 6  # a batch stops growing once it holds >= 4 windows (3 + 3)
    assert sum(embed.calls) == 12


def test_model_errors_reach_every_request_of_the_batch():
    def broken(_w):
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(broken)
    try:
        with pytest.raises(RuntimeError, match="exploded"):
            batcher.embed(_windows(0, 2), timeout=5)
        with pytest.raises(RuntimeError, match="exploded"):
            batcher.embed(_windows(1, 1), timeout=5)
    finally:
        batcher.close()


def test_timeout_raises_embedding_timeout():
    gate = threading.Event()
    batcher = MicroBatcher(RecordingEmbed(gate))
    try:
        with pytest.raises(EmbeddingTimeout):
            batcher.embed(_windows(0, 1), timeout=0.05)
    finally:
        gate.set()
        batcher.close()


def test_closed_batcher_refuses_work():
    batcher = MicroBatcher(RecordingEmbed())
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(_windows(0, 1))


def test_direct_embedding_calls_the_model_in_the_caller_thread():
    embed = RecordingEmbed()
    out = DirectEmbedding(embed).embed(_windows(3, 2), timeout=1.0)
    np.testing.assert_array_equal(out, _windows(3, 2)[:, :3] * 2.0)
    assert embed.calls == [2]
