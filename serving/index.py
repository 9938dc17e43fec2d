"""The window index: every catalogue window's embedding, searchable by dot product (ScaNN).

This is the only module that imports ScaNN. An index holds, for each master window, its unit-norm
embedding, the row of its track in `tracks` and its start offset in the master (seconds).

The searcher is sized to the data (`SearcherConfig.mode = "auto"`):
- up to `brute_force_max_windows` windows: exact brute-force scoring, straight from the stored vectors
  (`_StoredVectorSearcher`: nothing of ScaNN's, so no second copy of the vectors);
- above: a k-means tree (about sqrt(n) leaves) + anisotropic asymmetric hashing (2 dims per block,
  threshold 0.2) + re-scoring of the best `reorder_factor * k` candidates from the stored vectors. The number of
  leaves searched per query is auto-tuned at build time on a sample of the index's own vectors used as
  perturbed queries, as the smallest value whose recall@`tune_k` (10) against exact brute force, in a
  search as deep as the retriever's (`tune_depth` = its 100 neighbours per query window), reaches
  `target_recall` (0.95): the re-ranking re-scores every window of the best 50 tracks, so the first
  stage only has to bring the right track among them. Recall depends on the data's structure (random
  unclustered vectors need far more leaves than real embeddings), so it is always measured, never
  assumed; the tuning curve and the measured recall@10 are recorded in metadata.json.
- above `max_shard_windows` windows: the index is split into equal contiguous shards, one searcher each
  (same kind and settings), searched in turn and merged; this bounds the build's transient memory.

Index directory layout (format "earworm-index/1"):
    metadata.json   format, version, model_version, created, num_tracks, num_windows, dim,
                    config (searcher kind and parameters), recall_at_10, extra (tuning, releases,
                    master_hop_seconds: how far apart the master windows start; absent: the
                    MASTER_WINDOW_HOP_SECONDS of older indexes, 1 s)
    tracks.csv      track_id,title,artist (row i = track row i)
    windows.npz     track_row int32 [n], offset_s float32 [n]
    embeddings.npy  float32 [n, dim] (or, with SearcherConfig.store_dtype "int8", embeddings.int8.npy
                    + embeddings.scales.npy: `serving.vectors`): the one stored copy, which re-scores
                    the searcher's candidates, feeds the re-ranking and lets a release be added
                    without re-embedding
    scann/          the serialized ScaNN tree-AH searcher (relative asset paths: the folder can be moved;
                    a brute-force index has none: it searches embeddings.npy itself);
                    a sharded index has scann/shard-000/, scann/shard-001/, ... instead
    calibration.json  (optional, written by serving.calibration) the no-match threshold

Releases: `add()` appends a new release's windows (old embeddings are read back from the index, not
recomputed) and rebuilds the searcher under a new index version. Track ids must be new: an `add()` that
repeats an existing track id is refused with `DuplicateTrackError` (to change a track, rebuild).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from data_gen import constants as C
from serving.cores import usable_cores
from serving.vectors import STORE_DTYPES, Float32Spill, WindowVectors
from serving.window_store import CandidateWindows, TrackInfo, TrackWindows, WindowHits

log = logging.getLogger(__name__)

INDEX_FORMAT = "earworm-index/1"
METADATA_FILE = "metadata.json"
TRACKS_FILE = "tracks.csv"
WINDOWS_FILE = "windows.npz"
SEARCHER_DIR = "scann"
CALIBRATION_FILE = "calibration.json"  # owned by serving.calibration; kept across re-saves
TRACK_COLUMNS = ("track_id", "title", "artist")
RECALL_K = 10
SEARCHER_KINDS = ("brute_force", "tree_ah")
MODES = ("auto",) + SEARCHER_KINDS
REORDER_DTYPES = ("float32", "int8")
_BRUTE_FORCE_CHUNK_ELEMENTS = 1 << 26  # [m, chunk] score matrix of at most 256 MiB
_SCANN_OWN_THREADS_ABOVE = 64  # queries: a larger batch is searched with ScaNN's own threads in each shard


class IndexLoadError(RuntimeError):
    """The index directory is missing, incomplete, corrupt, or inconsistent (e.g. mismatched dims)."""


class IndexBuildError(ValueError):
    """The data given to build/add an index is invalid (shapes, dims, non-finite values, ids)."""


class DuplicateTrackError(IndexBuildError):
    """A track id occurs twice (within one release, or already in the index when adding)."""


class IndexSaveError(RuntimeError):
    """The index cannot be written to the requested directory."""


@dataclass(frozen=True)
class SearcherConfig:
    """How the ScaNN searcher is built. Defaults suit 128-d unit-norm window embeddings."""

    mode: str = "auto"
    """"auto" (brute force up to `brute_force_max_windows`, else tree_ah), "brute_force" or "tree_ah"."""
    brute_force_max_windows: int = 20_000
    num_leaves: int | None = None
    """Tree leaves; None: round(sqrt(num_windows))."""
    num_leaves_to_search: int | None = None
    """Leaves searched per query; None: auto-tuned to reach `target_recall`."""
    target_recall: float = 0.95
    """recall@`tune_k` against exact brute force that the auto-tuning must reach."""
    tune_k: int = 10
    """The top k whose recall the tuning measures (of a `tune_depth`-deep search).

    History: before the re-ranking existed (stage H), a tree tuned for recall@10 >= 0.95 of a k=10
    search (18 of 175 leaves) lost MRR@10 (0.817 against 0.828 exact), so the tuning moved to
    recall@100 >= 0.98 (52 of 175 leaves; 164 of 548 at 300k windows: 20-30 % of every tree). With
    the re-ranking (every window of the best 50 tracks re-scored exactly), measured 2026-12-04 with
    the default model on the 30k-window indexes of synthetic-1k, mir1k-cross, zalo + 1,000 and
    adc2004 + 1,000, each searcher rebuilt from its stored vectors: at recall@100 >= 0.98 (52 leaves)
    MRR@10 0.815 / 0.841 / 0.591 / 0.478; at recall@10 >= 0.95 of a 100-deep search (18 leaves)
    0.819 / 0.841 / 0.594 / 0.478; at >= 0.9 (13 leaves) 0.812 / 0.841 / 0.594 / 0.478. At 300k
    windows 0.95 picks 82 of 548 leaves (2x less search than 164)."""
    tune_depth: int = 100
    """Neighbours asked per tuning query: the retriever's `RetrievalConfig.neighbors_per_window`, so that
    as many candidates are re-scored as when it serves (a k=10 search re-scores 10x fewer)."""
    tune_precision: int = 16
    """The tuning measures a grid of leaf fractions (steps of up to 1.5x), then bisects between the
    last setting below `target_recall` and the first one above it until they are within 1/16 of the
    answer (3-4 more measurements; 0: the grid's setting). Measured 2026-12-04 on the 10k bench-load
    index (300k windows): 82 -> 68 of 548 leaves, search 9.3 -> 8.6 ms per 22-window query."""
    tune_queries: int = 500
    """How many of the index's own windows are perturbed into tuning queries."""
    tune_query_similarity: float = 0.6
    """Expected cosine between a tuning query and the window it was made from. Real queries (hums)
    are far from any catalogue window, and farther queries need more leaves for the same recall, so
    the default is pessimistic: searching a few more leaves costs microseconds."""
    training_sample_size: int = 250_000
    """Vectors sampled to train the tree (k-means) and the AH codebooks."""
    dims_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    reorder_factor: int = 3
    """Candidates re-scored exactly per query = max(reorder_min, reorder_factor * k): ScaNN returns
    that many by their AH scores, they are re-scored from the stored vectors and the best k kept.
    Measured 2026-12-04 on the 10k bench-load index (300k windows, 68 of 548 leaves, 16 windows of a
    10 s query, k = 100): factor 10 -> 3 takes the search 6.1 -> 4.2 ms (ScaNN's own top-1,000 selection
    4.7 -> 3.2 ms, the re-scoring 1.9 -> 0.5 ms); the tuning's recall@10 0.951 -> 0.951 and the leaves
    searched stay. MRR@10 on the four tree-indexed eval sets (synthetic-1k, mir1k-cross, zalo + 1,000,
    adc2004 + 1,000), same run: 0.8118 / 0.8438 / 0.6312 / 0.4844 at both 10 and 3; at 1 (no
    candidates beyond k) 0.8165 / 0.8438 / 0.6312 / 0.4803. The cost: recall@100 of the whole list (at
    cos 0.6) 0.900 -> 0.866 at 300k windows (factor 5: 0.893, search 4.6 ms), 0.924 -> 0.844 at 2.1M."""
    reorder_min: int = 100
    reorder_dtype: str = "float32"
    """Kept for indexes built before 2026-12-04 (ScaNN's own re-ordering copy); ignored now: the
    candidates are re-scored from the index's one stored copy (`store_dtype`)."""
    store_dtype: str = "float32"
    """The stored window embeddings (`serving.vectors`): "float32" (512 B per 128-d window, exact
    re-scoring) or "int8" (132 B, similarities within ~1e-3). ScaNN keeps only its tree and AH codes."""
    min_partition_size: int = 50
    max_shard_windows: int = 4_000_000
    """Above this many windows the index is split into equal shards, each its own ScaNN searcher
    (searched in turn, results merged). Bounds build memory: a tree-AH build needs about 3x its data
    transiently (7.7 GB of 15M windows would need ~22 GB at once)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"SearcherConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.reorder_dtype not in REORDER_DTYPES:
            raise ValueError(f"reorder_dtype must be one of {REORDER_DTYPES}, got {self.reorder_dtype!r}")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {STORE_DTYPES}, got {self.store_dtype!r}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target_recall must be in (0, 1], got {self.target_recall}")
        if self.tune_k < 1 or self.tune_depth < 1:
            raise ValueError(f"tune_k and tune_depth must be >= 1, got {self.tune_k}, {self.tune_depth}")
        if self.tune_precision < 0:
            raise ValueError(f"tune_precision must be >= 0 (0: no bisection), got {self.tune_precision}")
        if not 0.0 < self.tune_query_similarity <= 1.0:
            raise ValueError(f"tune_query_similarity must be in (0, 1], got {self.tune_query_similarity}")
        for name in ("tune_queries", "training_sample_size", "dims_per_block", "reorder_factor",
                     "reorder_min", "brute_force_max_windows", "max_shard_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearcherConfig.{name} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "SearcherConfig":
        known = {f.name for f in fields(SearcherConfig)}
        return SearcherConfig(**{k: v for k, v in d.items() if k in known})

    def kind_for(self, num_windows: int) -> str:
        if self.mode != "auto":
            return self.mode
        return "brute_force" if num_windows <= self.brute_force_max_windows else "tree_ah"


@dataclass(frozen=True)
class IndexMetadata:
    version: str
    model_version: str
    num_tracks: int
    num_windows: int
    dim: int
    config: dict[str, Any]
    """{"searcher": SearcherConfig.to_dict(), "kind": ..., "num_leaves": ..., "leaves_to_search": ...,
    "shards": [[start, end], ...] (window row ranges, one per ScaNN searcher)}"""
    created: str
    extra: dict[str, Any] = field(default_factory=dict)
    """Build facts: build_seconds, tuning (its curve: [leaves, recall@k] with k = `tuning.k`),
    releases history, anything a pipeline adds."""
    recall_at_10: float | None = None
    """Measured recall@10 of the searcher against exact brute force (perturbed own-vector queries)."""

    @property
    def master_hop_seconds(self) -> float:
        """How far apart the master windows start (`extra["master_hop_seconds"]`, recorded by the
        builders; indexes made before the option existed used MASTER_WINDOW_HOP_SECONDS). The
        retriever sets its alignment grids from it."""
        return float(self.extra.get("master_hop_seconds", C.MASTER_WINDOW_HOP_SECONDS))

    def to_json(self) -> dict[str, Any]:
        return {"format": INDEX_FORMAT, **asdict(self)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "IndexMetadata":
        return IndexMetadata(
            version=str(d["version"]), model_version=str(d["model_version"]),
            num_tracks=int(d["num_tracks"]), num_windows=int(d["num_windows"]), dim=int(d["dim"]),
            config=dict(d.get("config") or {}), created=str(d["created"]),
            extra=dict(d.get("extra") or {}),
            recall_at_10=None if d.get("recall_at_10") is None else float(d["recall_at_10"]),
        )


def check_master_hop(index_hop: float, release_hop: float | None, where: str) -> None:
    """Refuse (IndexBuildError) a release cut at another master hop than the index's (None: not
    stated, accepted): the retriever aligns every window of an index on one grid."""
    if release_hop is not None and not math.isclose(float(release_hop), float(index_hop), abs_tol=1e-6):
        raise IndexBuildError(f"the new release's master windows start every {float(release_hop):g} s but {where} "
                              f"was built at {float(index_hop):g} s; embed the release at that hop "
                              f"(--master-hop-seconds {float(index_hop):g}) or rebuild the index")


# --- numpy helpers ------------------------------------------------------------------------------

def brute_force_search(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product, chunked over the database so memory stays bounded.

    queries [m, d], database [n, d] (may be a memmap) -> (rows [m, k'] int64, scores [m, k'] float32),
    k' = min(k, n), best first.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    m, n = queries.shape[0], database.shape[0]
    k = min(int(k), n)
    if m == 0 or k == 0:
        return np.zeros((m, k), np.int64), np.zeros((m, k), np.float32)
    chunk = max(4096, _BRUTE_FORCE_CHUNK_ELEMENTS // max(m, 1))
    best_rows = np.zeros((m, 0), np.int64)
    best_scores = np.zeros((m, 0), np.float32)
    for start in range(0, n, chunk):
        block = np.asarray(database[start : start + chunk], dtype=np.float32)
        scores = queries @ block.T  # [m, c]
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
        cand_rows = np.concatenate([best_rows, part.astype(np.int64) + start], axis=1)
        keep = np.argpartition(-cand_scores, min(k, cand_scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(cand_scores, keep, 1)
        best_rows = np.take_along_axis(cand_rows, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, 1), np.take_along_axis(best_scores, order, 1)


def recall_at_k(found_rows: np.ndarray, queries: np.ndarray, database: np.ndarray,
                true_scores: np.ndarray, k: int = RECALL_K, tolerance: float = 1e-5) -> float:
    """Fraction of the true top-k found; a returned row counts when its exact score is at least the
    true k-th score (minus `tolerance`), so exact ties do not count as misses.

    found_rows [m, >=k] (-1 = no result), true_scores [m, >=k] exact sorted scores.
    """
    m = found_rows.shape[0]
    if m == 0:
        return 1.0
    k = min(k, true_scores.shape[1])
    rows = found_rows[:, :k]
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    exact = np.einsum("md,mkd->mk", queries.astype(np.float32),
                      np.asarray(database[safe.ravel()], np.float32).reshape(m, k, -1))
    kth = true_scores[:, k - 1 : k]
    hits = valid & (exact >= kth - tolerance)
    return float(hits.sum() / (m * k))


def perturbed_queries(vectors: np.ndarray, similarity: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors whose expected cosine to the given unit vectors [m, d] is `similarity`."""
    m, d = vectors.shape
    if similarity >= 1.0:
        return np.array(vectors, np.float32)
    sigma = math.sqrt((1.0 / similarity**2 - 1.0) / d)
    q = vectors.astype(np.float32) + rng.normal(0.0, sigma, (m, d)).astype(np.float32)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def _check_embeddings(embeddings: np.ndarray, dim: int | None = None) -> None:
    if embeddings.ndim != 2:
        raise IndexBuildError(f"embeddings must be [n, dim], got shape {embeddings.shape}")
    if dim is not None and embeddings.shape[1] != dim:
        raise IndexBuildError(f"embeddings have dim {embeddings.shape[1]}, the index has {dim}")
    worst = 0.0
    for start in range(0, embeddings.shape[0], 1 << 18):  # chunked: may be a multi-GB memmap
        block = np.asarray(embeddings[start : start + (1 << 18)], np.float32)
        if not np.all(np.isfinite(block)):
            raise IndexBuildError("embeddings contain NaN or infinite values")
        if block.size:
            worst = max(worst, float(np.max(np.abs(np.linalg.norm(block, axis=1) - 1.0))))
    if worst > 1e-2:
        log.warning("embeddings are not unit-norm (max |norm - 1| = %.3g): dot-product scores will "
                    "not be cosine similarities", worst)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _new_version(model_version: str, num_tracks: int, num_windows: int, created: str) -> str:
    h = hashlib.sha256(f"{model_version}|{num_tracks}|{num_windows}|{created}|{uuid.uuid4()}".encode())
    stamp = created.replace("-", "").replace(":", "").replace("+0000", "Z").replace("+00:00", "Z")
    return f"idx-{stamp}-{h.hexdigest()[:8]}"


# --- the index -----------------------------------------------------------------------------------

class WindowIndex:
    """Catalogue windows searchable by dot product. Immutable once built: `add()` returns a new index.

    Attributes: track_rows int32 [n] (row into `tracks`), offsets_s float32 [n] (window start in the
    master, seconds), tracks (list[TrackInfo]), metadata (IndexMetadata), path (the directory it was
    loaded from / last saved to, or None). Searches are thread-safe.
    """

    def __init__(self, searchers: list[Any], vectors: WindowVectors | np.ndarray, track_rows: np.ndarray,
                 offsets_s: np.ndarray, tracks: list[TrackInfo], metadata: IndexMetadata,
                 path: Path | None = None):
        self._searchers = list(searchers)
        self._shards = [(int(a), int(b)) for a, b in metadata.config.get("shards", [[0, metadata.num_windows]])]
        if len(self._shards) != len(self._searchers):
            raise IndexLoadError(f"{len(self._searchers)} searchers for {len(self._shards)} shards")
        self.vectors = vectors if isinstance(vectors, WindowVectors) else WindowVectors(vectors)
        self.track_rows = track_rows
        self.offsets_s = offsets_s
        self.tracks = tracks
        self.metadata = metadata
        self.path = path
        self._leaves_to_search = metadata.config.get("leaves_to_search")
        self._searcher_config = SearcherConfig.from_dict(metadata.config.get("searcher", {}))
        self._track_index = {t.track_id: i for i, t in enumerate(tracks)}
        # each track's window rows in time order (CSR): rows _by_track[_track_bounds[t]:_track_bounds[t+1]]
        self._by_track = np.lexsort((offsets_s, track_rows))
        self._track_bounds = np.searchsorted(np.asarray(track_rows)[self._by_track],
                                             np.arange(len(tracks) + 1), side="left")

    # -- properties ------------------------------------------------------------------------------
    @property
    def num_windows(self) -> int:
        return int(self.track_rows.shape[0])

    @property
    def num_tracks(self) -> int:
        return len(self.tracks)

    @property
    def dim(self) -> int:
        return self.metadata.dim

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def kind(self) -> str:
        """"brute_force" or "tree_ah"."""
        return str(self.metadata.config.get("kind"))

    @property
    def embeddings(self) -> np.ndarray:
        """float32 [n, dim]: for a float32 store the stored array itself (a read-only memmap of
        embeddings.npy for a loaded index); for an int8 store a dequantized copy of all of it (for
        tests and small indexes; large readers use `vectors`)."""
        return self.vectors.data if self.vectors.scales is None else self.vectors.rows(slice(None))

    def searcher_made_with(self, config: SearcherConfig) -> bool:
        """Whether the searcher was built and tuned with exactly `config` (False for an index made
        under other settings, or before a setting existed: every field must have been recorded)."""
        stored = self.metadata.config.get("searcher")
        return isinstance(stored, dict) and stored == config.to_dict()

    def windows_of(self, track_row: int) -> np.ndarray:
        """Index rows of one track's windows, in time order."""
        return self._by_track[self._track_bounds[track_row] : self._track_bounds[track_row + 1]]

    def track_row(self, track_id: str) -> int:
        """Row of `track_id` in `tracks`; KeyError when absent."""
        return self._track_index[track_id]

    # -- building --------------------------------------------------------------------------------
    @classmethod
    def build(cls, embeddings: np.ndarray, track_rows: np.ndarray, offsets_s: np.ndarray,
              tracks: Sequence[TrackInfo], model_version: str,
              config: SearcherConfig | None = None, *, extra: dict[str, Any] | None = None) -> "WindowIndex":
        """Build an index over n windows.

        embeddings float32 [n, d] unit-norm (a memmap is fine: it is read, not copied, except by
        ScaNN itself), track_rows int [n] rows into `tracks`, offsets_s [n] window starts (seconds),
        tracks: one TrackInfo per track (unique ids), model_version: the Embedder version that made
        the embeddings. `extra` is stored in metadata.extra.
        """
        config = config or SearcherConfig()
        embeddings, track_rows, offsets_s, tracks = cls._validated(embeddings, track_rows, offsets_s, tracks)
        created = _now()
        t0 = time.perf_counter()
        vectors = WindowVectors.from_float(embeddings, config.store_dtype)
        searchers, build_info, recall = _build_searchers(embeddings, config, vectors)
        build_info["build_seconds"] = round(time.perf_counter() - t0, 3)
        metadata = IndexMetadata(
            version=_new_version(model_version, len(tracks), embeddings.shape[0], created),
            model_version=model_version, num_tracks=len(tracks), num_windows=int(embeddings.shape[0]),
            dim=int(embeddings.shape[1]),
            config={"searcher": config.to_dict(), **{k: v for k, v in build_info.items()
                                                       if k in _CONFIG_KEYS}},
            created=created,
            extra={**(extra or {}), **{k: v for k, v in build_info.items() if k not in _CONFIG_KEYS}},
            recall_at_10=recall,
        )
        log.info("built %s index %s: %d tracks, %d windows, recall@10 %.3f, %.1f s", metadata.config["kind"],
                 metadata.version, metadata.num_tracks, metadata.num_windows, recall,
                 build_info["build_seconds"])
        return cls(searchers, vectors, track_rows, offsets_s, list(tracks), metadata)

    @staticmethod
    def _validated(embeddings: np.ndarray, track_rows: np.ndarray, offsets_s: np.ndarray,
                   tracks: Sequence[TrackInfo]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[TrackInfo]]:
        if not isinstance(embeddings, np.memmap):
            embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        elif embeddings.dtype != np.float32:
            raise IndexBuildError(f"embeddings memmap must be float32, got {embeddings.dtype}")
        _check_embeddings(embeddings)
        n = embeddings.shape[0]
        if n == 0:
            raise IndexBuildError("cannot build an index with no windows")
        track_rows = np.asarray(track_rows)
        offsets_s = np.asarray(offsets_s, dtype=np.float32)
        if track_rows.shape != (n,) or offsets_s.shape != (n,):
            raise IndexBuildError(f"track_rows {track_rows.shape} and offsets_s {offsets_s.shape} must be "
                                  f"[{n}] like the embeddings")
        if not np.issubdtype(track_rows.dtype, np.integer):
            raise IndexBuildError(f"track_rows must be integers, got {track_rows.dtype}")
        tracks = list(tracks)
        if track_rows.min() < 0 or track_rows.max() >= len(tracks):
            raise IndexBuildError(f"track_rows must lie in [0, {len(tracks)}), got "
                                  f"[{track_rows.min()}, {track_rows.max()}]")
        if not np.all(np.isfinite(offsets_s)):
            raise IndexBuildError("offsets_s contain NaN or infinite values")
        seen: set[str] = set()
        dups: list[str] = []
        for t in tracks:
            if not t.track_id:
                raise IndexBuildError("empty track_id")
            if t.track_id in seen:
                dups.append(t.track_id)
            seen.add(t.track_id)
        if dups:
            raise DuplicateTrackError(f"duplicate track id(s): {', '.join(sorted(set(dups))[:5])}")
        return embeddings, track_rows.astype(np.int32), offsets_s, tracks

    def add(self, embeddings: np.ndarray, track_rows_local: np.ndarray, offsets_s: np.ndarray,
            tracks: Sequence[TrackInfo], *, model_version: str | None = None,
            config: SearcherConfig | None = None, scratch_dir: str | os.PathLike[str] | None = None,
            master_hop_seconds: float | None = None) -> "WindowIndex":
        """A new index = this one + a new release; this index is left unchanged.

        track_rows_local index into the new `tracks`. The existing embeddings are reused as stored
        (never re-embedded); the searcher is rebuilt (and re-tuned) over all windows and the result
        gets a new version. With `scratch_dir` (local disk, kept until the new index is saved) the old
        and new windows are joined in a file there, chunk by chunk, instead of one array in memory.
        Raises DuplicateTrackError when a new track id is already indexed, and IndexBuildError when
        `model_version` or `master_hop_seconds` (if given) differs from the index's: one index has
        one window grid, which the retriever's alignment relies on.
        """
        if model_version is not None and model_version != self.metadata.model_version:
            raise IndexBuildError(f"the new release was embedded with model {model_version!r} but the index "
                                  f"holds {self.metadata.model_version!r} embeddings; rebuild instead")
        check_master_hop(self.metadata.master_hop_seconds, master_hop_seconds, f"index {self.version}")
        tracks = list(tracks)
        clash = [t.track_id for t in tracks if t.track_id in self._track_index]
        if clash:
            raise DuplicateTrackError(
                f"{len(clash)} track id(s) already in index {self.version}: {', '.join(clash[:5])}"
                + (" ..." if len(clash) > 5 else "") + "; adding refuses to replace tracks (rebuild instead)")
        new_emb, new_rows, new_off, tracks = self._validated(embeddings, track_rows_local, offsets_s, tracks)
        if new_emb.shape[1] != self.dim:
            raise IndexBuildError(f"new embeddings have dim {new_emb.shape[1]}, the index has {self.dim}")
        all_emb = self._joined(new_emb, scratch_dir)
        all_rows = np.concatenate([self.track_rows, new_rows + self.num_tracks]).astype(np.int32)
        all_off = np.concatenate([self.offsets_s, new_off]).astype(np.float32)
        releases = list(self.metadata.extra.get("releases") or [
            {"version": self.version, "created": self.metadata.created, "tracks_added": self.num_tracks,
             "windows_added": self.num_windows}])
        cfg = config or self._searcher_config
        built = WindowIndex.build(all_emb, all_rows, all_off, self.tracks + tracks,
                                  self.metadata.model_version, cfg,
                                  extra={**{k: v for k, v in self.metadata.extra.items()
                                            if k not in ("releases", "tuning", "build_seconds")},
                                         "master_hop_seconds": self.metadata.master_hop_seconds})
        releases.append({"version": built.version, "created": built.metadata.created,
                         "tracks_added": len(tracks), "windows_added": int(new_emb.shape[0]),
                         "parent": self.version})
        built.metadata.extra["releases"] = releases
        return built

    def _joined(self, new_emb: np.ndarray, scratch_dir: str | os.PathLike[str] | None) -> np.ndarray:
        """float32 [this index's windows + new ones, dim]: in memory, or a memmap in `scratch_dir`."""
        if scratch_dir is None:
            return np.concatenate([self.vectors.rows(slice(None)), new_emb])
        spill = Float32Spill(Path(scratch_dir) / f"add-{uuid.uuid4().hex[:8]}.f32")
        spill.append_chunked(self.vectors)
        spill.append_chunked(new_emb)
        return spill.finish()

    # -- searching -------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, *, leaves_to_search: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """queries float32 [m, d] -> (window rows int64 [m, k'], dot-product scores float32 [m, k']),
        best first, k' = min(k, num_windows). Where the searcher returns fewer than k' neighbours
        (a tree search that visits small leaves), rows are -1 and scores -inf."""
        queries = self._check_queries(queries)
        m = queries.shape[0]
        k = min(int(k), self.num_windows)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if m == 0:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        leaves = None
        if self.kind == "tree_ah":
            leaves = int(leaves_to_search or self._leaves_to_search)
        return _search_shards(self._searchers, self._shards, queries, k, leaves, self._searcher_config,
                              self.vectors)

    def search_windows(self, queries: np.ndarray, k: int) -> WindowHits:
        """The `WindowStore` first stage: `search` with each hit's track row and offset."""
        rows, sims = self.search(queries, k)
        return WindowHits.from_rows(rows, sims, self.track_rows, self.offsets_s)

    def _gather_tracks(self, track_rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every window of each track, in time order, in one gather (2.1 -> 0.6 ms for a query's ~130
        candidates): (tracks [c] int64, starts [c + 1], emb [W, d] float32, offsets [W] float64)."""
        tracks = np.asarray(track_rows, np.int64).reshape(-1)
        if tracks.size and (tracks.min() < 0 or tracks.max() >= self.num_tracks):
            raise IndexError(f"track rows must be in [0, {self.num_tracks})")
        first, end = self._track_bounds[tracks], self._track_bounds[tracks + 1]
        sizes = end - first
        starts = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        rows = self._by_track[np.repeat(first - starts[:-1], sizes) + np.arange(int(starts[-1]))]
        return tracks, starts, self.vectors.rows(rows), np.asarray(self.offsets_s[rows], np.float64)

    def fetch_tracks(self, track_rows: Sequence[int]) -> list[TrackWindows]:
        """The `WindowStore` per-track windows: every window of each track, in time order."""
        _, starts, emb, offsets = self._gather_tracks(track_rows)
        bounds = starts.tolist()
        return [TrackWindows(emb[a:b], offsets[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def fetch_candidates(self, track_rows: Sequence[int]) -> CandidateWindows:
        """The `WindowStore` re-ranking input: `fetch_tracks` already laid out (no per-track arrays to
        split and join again: 1.0 -> 0.6 ms for a query's ~130 candidates)."""
        tracks, starts, emb, offsets = self._gather_tracks(track_rows)
        sizes = np.diff(starts)
        if (sizes == 0).any():  # a track without windows cannot align with anything
            keep = sizes > 0
            tracks, starts = tracks[keep], np.r_[0, np.cumsum(sizes[keep])].astype(np.int64)
        return CandidateWindows(tracks, starts, offsets, emb)

    def search_brute_force(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact numpy search over the stored embeddings (for recall measurement); same shapes."""
        return brute_force_search(self._check_queries(queries), self.vectors, k)

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [m, {self.dim}], got {queries.shape}")
        return np.ascontiguousarray(queries, dtype=np.float32)

    def measure_recall(self, queries: np.ndarray, k: int = RECALL_K) -> float:
        """recall@k of `search` against exact brute force, on the given queries [m, d]."""
        queries = self._check_queries(queries)
        rows, _ = self.search(queries, k)
        _, true_scores = self.search_brute_force(queries, k)
        return recall_at_k(rows, queries, self.vectors, true_scores, k)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, index_dir: str | os.PathLike[str]) -> None:
        """Write the index to `index_dir` atomically (a sibling temp dir renamed into place).

        An existing index in `index_dir` is replaced; its calibration.json is kept when it was made
        for the same model. A non-empty directory that is not an index is refused (IndexSaveError).
        """
        index_dir = Path(index_dir).resolve()
        if index_dir.exists() and (not index_dir.is_dir() or (
                any(index_dir.iterdir()) and not (index_dir / METADATA_FILE).is_file())):
            raise IndexSaveError(f"{index_dir} exists and is not an Earworm index; refusing to overwrite it")
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_dir.parent / f".{index_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            for i, searcher in enumerate(self._searchers):
                if isinstance(searcher, _StoredVectorSearcher):
                    continue  # it is the stored vectors: nothing of its own to write
                shard_dir = _shard_dir(tmp / SEARCHER_DIR, i, len(self._searchers))
                shard_dir.mkdir(parents=True)
                searcher.serialize(str(shard_dir), relative_path=True)
            np.savez(tmp / WINDOWS_FILE, track_row=self.track_rows.astype(np.int32),
                     offset_s=self.offsets_s.astype(np.float32))
            self.vectors.save(tmp)
            with (tmp / TRACKS_FILE).open("w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(TRACK_COLUMNS)
                w.writerows((t.track_id, t.title, t.artist) for t in self.tracks)
            old_cal = index_dir / CALIBRATION_FILE
            if old_cal.is_file():
                try:
                    cal_model = json.loads(old_cal.read_text()).get("model_version")
                except (OSError, json.JSONDecodeError):
                    cal_model = None
                if cal_model == self.metadata.model_version:
                    shutil.copy2(old_cal, tmp / CALIBRATION_FILE)
                    log.info("kept %s (same model %s)", old_cal, cal_model)
                else:
                    log.warning("dropping %s: it was calibrated for model %r, this index holds %r",
                                old_cal, cal_model, self.metadata.model_version)
            # metadata last: a directory with metadata.json is complete
            (tmp / METADATA_FILE).write_text(json.dumps(self.metadata.to_json(), indent=2) + "\n")
            if index_dir.exists():
                trash = index_dir.parent / f".{index_dir.name}.old-{uuid.uuid4().hex[:8]}"
                index_dir.rename(trash)
                tmp.rename(index_dir)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                tmp.rename(index_dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise IndexSaveError(f"cannot write the index to {index_dir}: {e}") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = index_dir
        log.info("saved index %s to %s", self.version, index_dir)

    @classmethod
    def load(cls, index_dir: str | os.PathLike[str], *, mmap: bool = True) -> "WindowIndex":
        """Load an index saved by `save`. embeddings.npy is memory-mapped unless mmap=False.

        Raises IndexLoadError (with the reason) for a missing, incomplete, corrupt or inconsistent dir.
        """
        index_dir = Path(index_dir).resolve()
        if not index_dir.is_dir():
            raise IndexLoadError(f"index directory not found: {index_dir}")
        meta_path = index_dir / METADATA_FILE
        if not meta_path.is_file():
            raise IndexLoadError(f"{index_dir} is not an Earworm index ({METADATA_FILE} missing)")
        try:
            raw = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise IndexLoadError(f"{meta_path}: unreadable ({e})") from e
        if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
            got = raw.get("format") if isinstance(raw, dict) else None
            raise IndexLoadError(f"{meta_path}: format {got!r}, expected {INDEX_FORMAT!r}")
        try:
            metadata = IndexMetadata.from_json(raw)
        except (KeyError, TypeError, ValueError) as e:
            raise IndexLoadError(f"{meta_path}: incomplete metadata ({e!r})") from e
        try:
            tracks = _read_tracks(index_dir / TRACKS_FILE)
            with np.load(index_dir / WINDOWS_FILE) as w:
                track_rows = np.asarray(w["track_row"], np.int32)
                offsets_s = np.asarray(w["offset_s"], np.float32)
            store_dtype = SearcherConfig.from_dict(metadata.config.get("searcher", {})).store_dtype
            vectors = WindowVectors.load(index_dir, store_dtype, mmap)
        except (OSError, ValueError, KeyError, csv.Error, EOFError) as e:
            raise IndexLoadError(f"{index_dir}: cannot read the index files ({e})") from e
        n, d = metadata.num_windows, metadata.dim
        problems = []
        if len(tracks) != metadata.num_tracks:
            problems.append(f"{TRACKS_FILE} has {len(tracks)} tracks, metadata says {metadata.num_tracks}")
        if track_rows.shape != (n,) or offsets_s.shape != (n,):
            problems.append(f"{WINDOWS_FILE} holds {track_rows.shape[0]} windows, metadata says {n}")
        elif n and (track_rows.min() < 0 or track_rows.max() >= len(tracks)):
            problems.append(f"{WINDOWS_FILE} has track rows outside [0, {len(tracks)})")
        if vectors.dtype != store_dtype or vectors.shape != (n, d):
            problems.append(f"the stored embeddings are {vectors.dtype} {vectors.shape}, expected {store_dtype} "
                            f"({n}, {d}) (mismatched dims?)")
        if metadata.config.get("kind") not in SEARCHER_KINDS:
            problems.append(f"unknown searcher kind {metadata.config.get('kind')!r}")
        shards = metadata.config.get("shards", [[0, n]])
        if not shards or shards[0][0] != 0 or shards[-1][1] != n or any(
                a[1] != b[0] for a, b in zip(shards[:-1], shards[1:])):
            problems.append(f"shards {shards} do not cover the {n} windows")
        if problems:
            raise IndexLoadError(f"{index_dir} is inconsistent: " + "; ".join(problems))
        if metadata.config.get("kind") == "brute_force":  # an older index's scann/ copy is not read
            searchers = [_StoredVectorSearcher(vectors, a, b) for a, b in shards]
        else:
            searchers = [_load_searcher(_shard_dir(index_dir / SEARCHER_DIR, i, len(shards)))
                         for i in range(len(shards))]
        return cls(searchers, vectors, track_rows, offsets_s, tracks, metadata, path=index_dir)


def _read_tracks(path: Path) -> list[TrackInfo]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) [:3] != TRACK_COLUMNS:
            raise ValueError(f"{path.name}: header {reader.fieldnames}, expected {','.join(TRACK_COLUMNS)}")
        return [TrackInfo(r["track_id"], r["title"] or "", r["artist"] or "") for r in reader]


# --- ScaNN ---------------------------------------------------------------------------------------

def _scann():
    from scann.scann_ops.py import scann_ops_pybind  # heavy (imports TensorFlow): keep it lazy

    _enable_scann_avx2()
    return scann_ops_pybind


SCANN_AVX2_ENV = "EARWORM_SCANN_AVX2"
"""Set to 0 to leave ScaNN on its own kernels (SSE4 on the pinned 1.4.2 wheel, whatever the CPU)."""

_SCANN_AVX2_FLAG = "_ZN14research_scann14flags_internal15should_use_avx2E"
_scann_avx2: bool | None = None


def _scann_avx2_flag():
    """ScaNN's own switch for its AVX2 kernels (`research_scann::flags_internal::should_use_avx2`, a
    bool of its extension), or None where that symbol is not there (another ScaNN build)."""
    import ctypes
    import sys

    ext = sys.modules.get("scann_pybind")
    if ext is None or not getattr(ext, "__file__", None):
        return None
    try:  # the extension is loaded already: dlopen of its path returns that same library
        return ctypes.c_bool.in_dll(ctypes.CDLL(ext.__file__), _SCANN_AVX2_FLAG)
    except (OSError, ValueError):
        return None


def _enable_scann_avx2() -> bool:
    """Turn ScaNN's AVX2 kernels on where the CPU has AVX2 and FMA. Returns whether they are on.

    ScaNN picks its kernels at run time from `should_use_avx2`, which its CPU detection sets at load;
    the pinned 1.4.2 wheel was built without that detection (its initialiser stores false on every
    CPU), so every search ran the SSE4 fallback: 16 queries over 68 of 548 leaves of the 300k-window
    `bench-load` index took 3.3 ms, with AVX2 1.45 ms (README, issue 17). The AVX2 kernels read the
    same packed codes, so an index built either way serves either way; their approximate top-k may keep
    slightly different candidates (the same recall; MRR@10 unchanged on six sets). Done once, before any searcher runs; `EARWORM_SCANN_AVX2=0` leaves ScaNN as it is."""
    global _scann_avx2
    if _scann_avx2 is not None:
        return _scann_avx2
    _scann_avx2 = False
    flag = _scann_avx2_flag()
    if flag is None:
        return False
    if flag.value or os.environ.get(SCANN_AVX2_ENV, "1") == "0":
        _scann_avx2 = bool(flag.value)
        return _scann_avx2
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpu  # what numpy found, OS support included
    except ImportError:
        return False
    if cpu.get("AVX2") and cpu.get("FMA3"):
        flag.value = True
        _scann_avx2 = True
        log.info("ScaNN: its AVX2 kernels on (its wheel leaves them off whatever the CPU)")
    return _scann_avx2


_ASSET_PATH = re.compile(r'asset_path:\s*"([^"]+)"')
_CONFIG_KEYS = ("kind", "num_leaves", "leaves_to_search", "shards")


def _shard_dir(searcher_root: Path, shard: int, num_shards: int) -> Path:
    return searcher_root if num_shards == 1 else searcher_root / f"shard-{shard:03d}"


def shard_bounds(num_windows: int, max_shard_windows: int) -> list[tuple[int, int]]:
    """Equal contiguous [start, end) row ranges of at most `max_shard_windows` rows."""
    count = max(1, math.ceil(num_windows / max_shard_windows))
    edges = np.linspace(0, num_windows, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def top_k_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row of scores [m, n], the positions of the k highest, best first; ties in position order:
    `np.argsort(-scores, axis=1, kind="stable")[:, :k]` exactly, from a partition and a sort of the k
    kept (0.78 -> 0.23 ms for 22 x 1,000 re-scored candidates)."""
    m, n = scores.shape
    if k >= n:
        return np.argsort(-scores, axis=1, kind="stable")
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # the k-th highest score of each row
    above = scores > kth
    ties = scores == kth  # take the first ones in position order, as many as still needed
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (ties & (np.cumsum(ties, axis=1) <= need))
    pos = np.nonzero(keep)[1].reshape(m, k)  # row by row, in position order
    kept = np.take_along_axis(scores, pos, 1)
    return np.take_along_axis(pos, np.argsort(-kept, axis=1, kind="stable"), 1)


_SHARD_POOL: ThreadPoolExecutor | None = None
_SHARD_POOL_LOCK = threading.Lock()


def _shard_pool() -> ThreadPoolExecutor:
    """The threads that search a sharded index's shards side by side, one per core (made on first use):
    ScaNN releases the GIL while it searches, so a lone query's shards take the cores a busy server
    would give to other requests anyway."""
    global _SHARD_POOL
    with _SHARD_POOL_LOCK:
        if _SHARD_POOL is None:
            _SHARD_POOL = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="index-shard")
        return _SHARD_POOL


def _forget_shard_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there, so make a new pool on first use."""
    global _SHARD_POOL, _SHARD_POOL_LOCK
    _SHARD_POOL, _SHARD_POOL_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shard_pool)


def _search_shards(searchers: list[Any], shards: list[tuple[int, int]], queries: np.ndarray, k: int,
                   leaves: int | None, cfg: SearcherConfig, vectors: WindowVectors
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard for its top-k, merge: (rows int64 [m, k], scores float32 [m, k]); absent
    neighbours are row -1 / score -inf. A tree-AH shard (leaves given) returns its best
    `max(reorder_min, reorder_factor * k)` candidates by their AH score; they are re-scored from the
    stored vectors and the best k kept (ScaNN's own re-ordering, without ScaNN holding a second copy).
    The shards of a query's few windows are searched side by side (`_shard_pool`); a large batch uses
    ScaNN's own threads within each shard instead. Either way the merge reads them in shard order."""
    m = queries.shape[0]

    def one(shard: int) -> tuple[np.ndarray, np.ndarray]:
        return _search_one_shard(searchers[shard], *shards[shard], queries, k, leaves, cfg, vectors)

    if len(searchers) > 1 and m <= _SCANN_OWN_THREADS_ABOVE:
        found = list(_shard_pool().map(one, range(len(searchers))))
    else:
        found = [one(i) for i in range(len(searchers))]
    rows = np.concatenate([r for r, _ in found], axis=1)
    scores = np.concatenate([s for _, s in found], axis=1)
    if len(searchers) > 1:
        order = top_k_stable(scores, k)
        rows = np.take_along_axis(rows, order, 1)
        scores = np.take_along_axis(scores, order, 1)
    if rows.shape[1] < k:  # pad to [m, k]
        rows = np.pad(rows, ((0, 0), (0, k - rows.shape[1])), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, k - scores.shape[1])), constant_values=-np.inf)
    return rows, scores


def _search_one_shard(searcher: Any, start: int, end: int, queries: np.ndarray, k: int, leaves: int | None,
                      cfg: SearcherConfig, vectors: WindowVectors) -> tuple[np.ndarray, np.ndarray]:
    """One shard's best min(k, its size) windows of each query: (global rows [m, kk], scores [m, kk])."""
    m = queries.shape[0]
    kk = min(k, end - start)
    kwargs: dict[str, Any] = {"final_num_neighbors": kk}
    if leaves is not None:
        kwargs["leaves_to_search"] = leaves
        kwargs["final_num_neighbors"] = min(end - start, max(cfg.reorder_min, cfg.reorder_factor * kk))
        kwargs["pre_reorder_num_neighbors"] = kwargs["final_num_neighbors"]
    if m > _SCANN_OWN_THREADS_ABOVE:
        rows, scores = searcher.search_batched_parallel(queries, **kwargs)
    else:
        rows, scores = searcher.search_batched(queries, **kwargs)
    rows = np.asarray(rows, np.int64).reshape(m, -1) + start
    scores = np.asarray(scores, np.float32).reshape(m, -1)
    missing = np.isnan(scores)  # ScaNN pads absent neighbours with row 0 and a NaN score
    rows[missing] = -1
    scores[missing] = -np.inf
    if leaves is not None:
        scores = vectors.scores(queries, rows)
        keep = top_k_stable(scores, kk)
        rows = np.take_along_axis(rows, keep, 1)
        scores = np.take_along_axis(scores, keep, 1)
        rows[~np.isfinite(scores)] = -1
    return rows, scores


def _load_searcher(searcher_dir: Path) -> Any:
    assets = searcher_dir / "scann_assets.pbtxt"
    if not assets.is_file():
        raise IndexLoadError(f"{searcher_dir}: serialized ScaNN searcher missing (no scann_assets.pbtxt)")
    missing = [p for p in _ASSET_PATH.findall(assets.read_text())
               if not (Path(p) if os.path.isabs(p) else searcher_dir / p).is_file()]
    if missing:
        raise IndexLoadError(f"{searcher_dir}: searcher files missing: {', '.join(missing)}")
    try:
        return _scann().load_searcher(str(searcher_dir), assets_backcompat_shim=False)
    except (RuntimeError, ValueError, OSError) as e:
        raise IndexLoadError(f"{searcher_dir}: ScaNN cannot load the searcher ({e})") from e


class _VectorRange:
    """Rows [start, end) of the stored vectors, as float32 (what `brute_force_search` reads)."""

    def __init__(self, vectors: WindowVectors, start: int, end: int):
        self.vectors, self.start = vectors, start
        self.shape = (end - start, vectors.shape[1])

    def __getitem__(self, rows: slice) -> np.ndarray:
        a, b, _ = rows.indices(self.shape[0])
        return self.vectors.rows(slice(self.start + a, self.start + b))


class _StoredVectorSearcher:
    """The brute-force searcher of one shard: exact dot products with the index's stored vectors
    (dequantized when int8). ScaNN's brute force would keep a second float32 copy of the shard; this
    keeps none and has nothing to serialize. Same call shape as a ScaNN searcher; rows are shard-local."""

    def __init__(self, vectors: WindowVectors, start: int, end: int):
        self._range = _VectorRange(vectors, start, end)

    def search_batched(self, queries: np.ndarray, final_num_neighbors: int, **_: Any
                       ) -> tuple[np.ndarray, np.ndarray]:
        return brute_force_search(queries, self._range, final_num_neighbors)

    search_batched_parallel = search_batched


def _build_one(sp: Any, data: np.ndarray, kind: str, num_leaves: int, default_search: int,
               cfg: SearcherConfig) -> Any:
    """A tree + AH ScaNN searcher over one shard."""
    n = data.shape[0]
    sample = int(min(n, max(cfg.training_sample_size, num_leaves * 10)))
    return (sp.builder(data, RECALL_K, "dot_product")
            .tree(num_leaves=num_leaves, num_leaves_to_search=default_search,
                  training_sample_size=sample, min_partition_size=cfg.min_partition_size)
            .score_ah(cfg.dims_per_block,
                      anisotropic_quantization_threshold=cfg.anisotropic_quantization_threshold,
                      training_sample_size=sample)
            .build())


def _build_searchers(embeddings: np.ndarray, cfg: SearcherConfig, vectors: WindowVectors
                     ) -> tuple[list[Any], dict[str, Any], float]:
    """Build one searcher per shard (and for tree_ah, tune leaves_to_search over all of them).
    Returns (searchers, build facts, recall@10)."""
    n = embeddings.shape[0]
    kind = cfg.kind_for(n)
    sp = _scann() if kind == "tree_ah" else None  # brute force searches the stored vectors: no ScaNN
    shards = shard_bounds(n, cfg.max_shard_windows)
    info: dict[str, Any] = {"kind": kind, "shards": [list(b) for b in shards]}
    shard_n = max(b - a for a, b in shards)
    num_leaves = default_search = 0
    if kind == "tree_ah":
        num_leaves = int(cfg.num_leaves or max(2, round(math.sqrt(shard_n))))
        num_leaves = int(min(max(2, num_leaves), max(2, shard_n // 4)))
        default_search = min(num_leaves, int(cfg.num_leaves_to_search or max(1, num_leaves // 20)))
        info["num_leaves"] = num_leaves
        info["leaves_to_search"] = default_search
    searchers = []
    for i, (a, b) in enumerate(shards):
        if len(shards) > 1:
            log.info("building %s shard %d/%d (%d windows)", kind, i + 1, len(shards), b - a)
        searchers.append(_StoredVectorSearcher(vectors, a, b) if kind == "brute_force"
                         else _build_one(sp, embeddings[a:b], kind, num_leaves, default_search, cfg))
    tuned, recall = _tune(searchers, shards, kind, num_leaves, default_search, embeddings, cfg, vectors)
    return searchers, {**info, **tuned}, recall


def _tune(searchers: list[Any], shards: list[tuple[int, int]], kind: str, num_leaves: int, default_search: int,
          embeddings: np.ndarray | WindowVectors, cfg: SearcherConfig, vectors: WindowVectors
          ) -> tuple[dict[str, Any], float]:
    """Measure built searchers (and for tree_ah without a fixed leaves_to_search: tune how many leaves a
    query searches) on perturbed own vectors. Returns (build facts: leaves_to_search, tuning; recall@10)."""
    n = int(embeddings.shape[0])
    rng = np.random.default_rng(cfg.seed)
    m = min(cfg.tune_queries, n)
    rows = np.sort(rng.choice(n, size=m, replace=False))
    queries = perturbed_queries(np.asarray(embeddings[rows], np.float32), cfg.tune_query_similarity, rng)
    tune_k = min(cfg.tune_k, n)
    depth = min(max(cfg.tune_depth, cfg.tune_k, RECALL_K), n)
    # one exact pass at the larger k serves both figures (recall_at_k reads the sorted k-th score)
    _, true_scores = brute_force_search(queries, embeddings, max(tune_k, min(RECALL_K, n)))

    def recall_with(leaves: int | None, k: int = tune_k) -> float:
        """recall@k of the top k of a search as deep as the retriever's (`tune_depth` neighbours per
        query window, so as many candidates re-scored as when serving)."""
        found, _ = _search_shards(searchers, shards, queries, depth, leaves, cfg, vectors)
        return recall_at_k(found, queries, embeddings, true_scores, min(k, n))

    if kind == "brute_force":
        return {}, round(float(recall_with(None, RECALL_K)), 4)
    info: dict[str, Any] = {}
    if cfg.num_leaves_to_search is not None:
        chosen = default_search
        recall = recall_with(chosen)
        info["tuning"] = {"fixed": True, "queries": m, "k": tune_k, "depth": depth,
                          "curve": [[chosen, round(recall, 4)]]}
    else:
        candidates = sorted({max(1, min(num_leaves, int(round(num_leaves * f)))) for f in
                             (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)})
        measured: dict[int, float] = {}
        chosen, recall, below = candidates[-1], 0.0, 0
        for leaves in candidates:
            r = measured[leaves] = recall_with(leaves)
            chosen, recall = leaves, r
            if r >= cfg.target_recall:
                break
            below = leaves
        if recall < cfg.target_recall:
            log.warning("searching all %d leaves reaches recall@%d %.3f < target %.2f (AH quantization too "
                        "coarse for this data?)", num_leaves, tune_k, recall, cfg.target_recall)
        else:  # the grid brackets the answer: bisect to the fewest leaves that reach the target
            while cfg.tune_precision and chosen - below > max(1, chosen // cfg.tune_precision):
                mid = (below + chosen) // 2
                r = measured[mid] = recall_with(mid)
                if r >= cfg.target_recall:
                    chosen, recall = mid, r
                else:
                    below = mid
        curve = [[leaves, round(r, 4)] for leaves, r in sorted(measured.items())]
        info["tuning"] = {"fixed": False, "queries": m, "query_similarity": cfg.tune_query_similarity,
                          "k": tune_k, "depth": depth, "target_recall": cfg.target_recall, "curve": curve}
    info["leaves_to_search"] = chosen
    # the recorded figure stays recall@10 (comparable across indexes whatever their tuning)
    return info, round(float(recall_with(chosen, RECALL_K)), 4)


_TUNING_FIELDS = frozenset({"num_leaves_to_search", "target_recall", "tune_k", "tune_depth", "tune_precision",
                            "tune_queries", "tune_query_similarity", "reorder_factor", "reorder_min",
                            "reorder_dtype", "seed"})
"""SearcherConfig fields that only the search and its tuning read (not the ScaNN build, not the store):
an index whose config differs from another only in these is re-tuned, not rebuilt."""


def with_searcher_config(index: WindowIndex, config: SearcherConfig) -> WindowIndex:
    """`index` (same windows, tracks and model) searched under another config; new version. When only
    the search and its tuning change (`_TUNING_FIELDS`: e.g. the target recall), the built searchers are
    re-tuned in seconds; otherwise the searcher is rebuilt from the stored vectors (minutes at
    millions of windows)."""
    if isinstance(index.metadata.config.get("searcher"), dict):
        # settings an older index did not record compare as the index reads them (its _searcher_config)
        old, new = index._searcher_config.to_dict(), config.to_dict()
        if all(old[k] == new[k] for k in new if k not in _TUNING_FIELDS):
            return _retuned(index, config)
    built = WindowIndex.build(np.asarray(index.embeddings), index.track_rows, index.offsets_s, index.tracks,
                              index.metadata.model_version, config, extra=dict(index.metadata.extra))
    return built


def _retuned(index: WindowIndex, config: SearcherConfig) -> WindowIndex:
    """The index's own searchers under `config`'s search settings, tuned anew."""
    t0 = time.perf_counter()
    meta = index.metadata
    kind = meta.config.get("kind", "brute_force")
    num_leaves = int(meta.config.get("num_leaves") or 0)
    default_search = min(num_leaves, int(config.num_leaves_to_search or 0)) if num_leaves else 0
    tuned, recall = _tune(index._searchers, index._shards, kind, num_leaves, default_search, index.vectors,
                          config, index.vectors)
    created = _now()
    metadata = replace(
        meta, version=_new_version(meta.model_version, meta.num_tracks, meta.num_windows, created),
        config={**meta.config, "searcher": config.to_dict(), **{k: v for k, v in tuned.items() if k in _CONFIG_KEYS}},
        created=created, extra={**meta.extra, **{k: v for k, v in tuned.items() if k not in _CONFIG_KEYS},
                                "retuned_seconds": round(time.perf_counter() - t0, 3)},
        recall_at_10=recall)
    log.info("re-tuned index %s -> %s: leaves searched %s -> %s, recall@10 %.3f", meta.version, metadata.version,
             meta.config.get("leaves_to_search"), metadata.config.get("leaves_to_search"), recall)
    return WindowIndex(index._searchers, index.vectors, index.track_rows, index.offsets_s, list(index.tracks),
                       metadata)


__all__ = [
    "CALIBRATION_FILE", "DuplicateTrackError", "IndexBuildError", "IndexLoadError", "IndexMetadata",
    "IndexSaveError", "SearcherConfig", "TrackInfo", "WindowIndex", "brute_force_search", "check_master_hop",
    "perturbed_queries", "recall_at_k", "shard_bounds", "top_k_stable", "with_searcher_config",
]
