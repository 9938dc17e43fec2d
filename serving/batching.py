"""Batching embedding work across concurrent requests.

Each Identify request cuts its audio into a handful of windows ([n, WINDOW_SAMPLES], n is about 7
for 10 s). With several requests in flight, `MicroBatcher` lets one background thread collect the
windows of all of them for up to `max_wait_ms`, run ONE embedding call over the concatenation and
hand each request its own rows back through a `concurrent.futures.Future`. `DirectEmbedding` has
the same interface and simply calls the model in the request's thread; the server picks one with
`--batching on|off` (see `earworm bench-load` for the measurement that chose the default).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

EmbedFn = Callable[[np.ndarray], np.ndarray]
"""[n, ...] float32 window features (raw windows, or their log power) -> [n, dim] float32."""


class EmbeddingTimeout(TimeoutError):
    """The caller's deadline passed before its windows were embedded."""


class BatcherClosed(RuntimeError):
    """The batcher was shut down; no more work is accepted."""


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_windows: int = 64
    """Stop collecting once this many windows are waiting (one request is never split)."""
    max_wait_ms: float = 3.0
    """How long the first request of a batch may wait for company."""


class DirectEmbedding:
    """No batching: embed in the calling thread (the model itself is thread-safe)."""

    def __init__(self, embed_windows: EmbedFn):
        self._embed = embed_windows

    def embed(self, windows: np.ndarray, timeout: float | None = None) -> np.ndarray:
        del timeout  # a running model call cannot be interrupted; the caller checks afterwards
        return self._embed(windows)

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


@dataclass
class _Job:
    windows: np.ndarray
    future: Future


class MicroBatcher:
    """One worker thread that embeds the windows of concurrent requests in shared batches."""

    def __init__(self, embed_windows: EmbedFn, config: BatchingConfig = BatchingConfig()):
        if config.max_batch_windows < 1 or config.max_wait_ms < 0:
            raise ValueError(f"bad batching config {config}")
        self._embed = embed_windows
        self.config = config
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._batches = 0
        self._windows = 0
        self._requests = 0
        self._thread = threading.Thread(target=self._run, name="embed-batcher", daemon=True)
        self._thread.start()

    def submit(self, windows: np.ndarray) -> Future:
        """Queue [n, W] windows; the future resolves to their [n, dim] embeddings."""
        if self._closed.is_set():
            raise BatcherClosed("the embedding batcher is closed")
        fut: Future = Future()
        self._queue.put(_Job(np.asarray(windows, np.float32), fut))
        return fut

    def embed(self, windows: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """Blocking form of `submit`; raises `EmbeddingTimeout` after `timeout` seconds."""
        fut = self.submit(windows)
        try:
            return fut.result(timeout=timeout)
        except FutureTimeout as e:
            fut.cancel()  # if still queued, the worker skips it
            raise EmbeddingTimeout(f"embedding did not finish within {timeout:.3f} s") from e

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {
                "embed_batches": self._batches,
                "embed_windows": self._windows,
                "embed_requests": self._requests,
            }

    def close(self, timeout: float = 5.0) -> None:
        """Finish queued work, then stop the worker thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # --- worker ----------------------------------------------------------------------------
    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """Gather jobs until the batch is full or the first job has waited max_wait_ms."""
        jobs = [first]
        size = first.windows.shape[0]
        deadline = time.monotonic() + self.config.max_wait_ms / 1000.0
        stop = False
        while size < self.config.max_batch_windows:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
            size += job.windows.shape[0]
        return jobs, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = self._collect(first)
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                batch = live[0].windows if len(live) == 1 else np.concatenate([j.windows for j in live])
                emb = self._embed(batch)
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                for j in live:
                    j.future.set_exception(e)
                continue
            start = 0
            for j in live:
                n = j.windows.shape[0]
                j.future.set_result(emb[start : start + n])
                start += n
            with self._lock:
                self._batches += 1
                self._windows += batch.shape[0]
                self._requests += len(live)
        # Anything still queued after close: fail it rather than leave a caller hanging.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed("the embedding batcher is closed"))
