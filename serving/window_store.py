"""What the retrieval library needs from an index backend, and nothing more.

The retriever asks a backend two things:
- `search_windows(queries, k)`: the k nearest catalogue windows of each query window, as (track row,
  window offset, similarity) -- the first stage;
- `fetch_tracks(track_rows)`: every window of some tracks (embedding and offset, in time order) -- the
  exact re-ranking of the first stage's best tracks.

Two backends implement it with the same answers: `serving.index.WindowIndex` (in-process ScaNN, the
embedded default) and `serving.milvus_index.MilvusWindowStore` (a Milvus collection: Milvus Lite in
one file, or a Milvus cluster by URI). This module imports neither, so both and the retrieval library
can depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class TrackInfo:
    track_id: str
    title: str = ""
    artist: str = ""


@dataclass(frozen=True)
class WindowHits:
    """First-stage search results for q query windows, k neighbours each, best first.

    track_rows int64 [q, k] (row into the backend's `tracks`; -1 where there is no neighbour),
    offsets_s float64 [q, k] (the hit window's start in its master, seconds), sims float32 [q, k]
    (dot product; -inf where there is no neighbour)."""

    track_rows: np.ndarray
    offsets_s: np.ndarray
    sims: np.ndarray

    @staticmethod
    def empty(q: int = 0, k: int = 1) -> "WindowHits":
        return WindowHits(np.full((q, k), -1, np.int64), np.zeros((q, k)), np.full((q, k), -np.inf, np.float32))

    @staticmethod
    def from_rows(rows: np.ndarray, sims: np.ndarray, window_track_rows: np.ndarray,
                  window_offsets_s: np.ndarray) -> "WindowHits":
        """Hits from window rows [q, k] (-1 = none) of an index whose windows have these track rows and
        offsets ([n] each). Only the hit rows are gathered: the cost does not grow with n."""
        rows = np.asarray(rows, np.int64)
        safe = np.maximum(rows, 0)
        none = rows < 0
        tracks = np.where(none, -1, np.asarray(window_track_rows)[safe].astype(np.int64))
        offsets = np.where(none, 0.0, np.asarray(window_offsets_s)[safe].astype(np.float64))
        return WindowHits(tracks, offsets, np.asarray(sims, np.float32))

    def __getitem__(self, rows: Any) -> "WindowHits":
        """The hits of some query windows (a slice or mask over the q axis)."""
        return WindowHits(self.track_rows[rows], self.offsets_s[rows], self.sims[rows])

    @staticmethod
    def concatenate(parts: Sequence["WindowHits"]) -> "WindowHits":
        return WindowHits(np.concatenate([p.track_rows for p in parts]),
                          np.concatenate([p.offsets_s for p in parts]),
                          np.concatenate([p.sims for p in parts]))


@dataclass(frozen=True)
class TrackWindows:
    """Every window of one track, in time order: emb float32 [w, d] unit-norm, offsets_s float64 [w]."""

    emb: np.ndarray
    offsets_s: np.ndarray


@dataclass(frozen=True)
class CandidateWindows:
    """Every window of some candidate tracks, laid out for `rerank_temporal`: candidates [c] (track
    rows that have windows), starts [c + 1] (candidate i's windows are rows starts[i]:starts[i + 1]),
    offsets_s [W] float64 (time order within a candidate), emb [W, d] float32."""

    candidates: np.ndarray
    starts: np.ndarray
    offsets_s: np.ndarray
    emb: np.ndarray
    sims: np.ndarray | None = None
    """[W, n] the windows' similarities (>= 0) to a query's n windows (`with_sims`): computed once for
    all of a query's tempo views, which then read their columns instead of each multiplying again."""

    @staticmethod
    def none(dim: int, queries: int | None = None) -> "CandidateWindows":
        return CandidateWindows(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0),
                                np.zeros((0, dim), np.float32),
                                None if queries is None else np.zeros((0, queries), np.float32))

    def with_sims(self, query_emb: np.ndarray) -> "CandidateWindows":
        """These windows with their similarities to every window of a query (`query_emb` [n, d])."""
        sims = np.maximum(self.emb @ np.asarray(query_emb, np.float32).T, 0.0)
        return replace(self, sims=sims)

    @staticmethod
    def of(candidates: np.ndarray, windows: Sequence[TrackWindows], dim: int = 0) -> "CandidateWindows":
        """From `WindowStore.fetch_tracks(candidates)`; tracks without windows are left out (they
        cannot align with anything)."""
        candidates = np.asarray(candidates, np.int64)
        if len(windows) != candidates.size:
            raise ValueError(f"{len(windows)} tracks' windows for {candidates.size} candidates")
        keep = [i for i, w in enumerate(windows) if w.offsets_s.size > 0]
        sizes = [windows[i].offsets_s.size for i in keep]
        if not keep:
            return CandidateWindows.none(dim)
        return CandidateWindows(candidates[keep], np.cumsum([0] + sizes),
                                np.concatenate([np.asarray(windows[i].offsets_s, np.float64) for i in keep]),
                                np.concatenate([np.asarray(windows[i].emb, np.float32) for i in keep]))

    def subset(self, track_rows: np.ndarray, columns: np.ndarray | slice | None = None) -> "CandidateWindows":
        """The windows of those of `track_rows` that are candidates here, in `track_rows` order; with
        `columns`, their similarities to those query windows only (and no embeddings: the similarities
        are what `rerank_temporal` reads)."""
        track_rows = np.asarray(track_rows, np.int64).reshape(-1)
        order = np.argsort(self.candidates, kind="stable")
        at = np.minimum(np.searchsorted(self.candidates[order], track_rows), max(self.candidates.size - 1, 0))
        found = self.candidates.size > 0
        pos = order[at][self.candidates[order[at]] == track_rows] if found else np.zeros(0, np.int64)
        queries = None if self.sims is None or columns is None else self.sims[:, columns].shape[1]
        if not pos.size:
            return CandidateWindows.none(self.emb.shape[1], queries)
        sizes = self.starts[pos + 1] - self.starts[pos]
        rows = np.repeat(self.starts[pos] - np.cumsum(np.r_[0, sizes[:-1]]), sizes) + np.arange(sizes.sum())
        if columns is not None and self.sims is not None:
            return CandidateWindows(self.candidates[pos], np.cumsum(np.r_[0, sizes]), self.offsets_s[rows],
                                    self.emb[:0], self.sims[rows][:, columns])
        return CandidateWindows(self.candidates[pos], np.cumsum(np.r_[0, sizes]), self.offsets_s[rows],
                                self.emb[rows])


@runtime_checkable
class WindowStore(Protocol):
    """An index backend (see the module docstring). Implementations are thread-safe for reads.

    Attributes: tracks (list[TrackInfo], row i = track row i), metadata (serving.index.IndexMetadata:
    version, model_version, num_windows, dim, ...), path (a local directory holding calibration.json,
    or None)."""

    tracks: list[TrackInfo]
    metadata: Any
    path: Path | None

    @property
    def version(self) -> str: ...

    @property
    def num_windows(self) -> int: ...

    @property
    def num_tracks(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def search_windows(self, queries: np.ndarray, k: int) -> WindowHits: ...

    def fetch_tracks(self, track_rows: Sequence[int]) -> list[TrackWindows]: ...

    def fetch_candidates(self, track_rows: Sequence[int]) -> CandidateWindows:
        """`fetch_tracks` laid out for the re-ranking (`CandidateWindows.of` of it)."""
        ...

    def track_row(self, track_id: str) -> int: ...


__all__ = ["CandidateWindows", "TrackInfo", "TrackWindows", "WindowHits", "WindowStore"]
