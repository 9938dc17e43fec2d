"""`earworm bench-scale`: how the window index behaves at 100k and 1M tracks.

Real embeddings for a million songs do not exist here, so the benchmark draws windows with the
measured statistics of the real ones (`serving.apps.synthetic_embeddings`: a ~50-d subspace with the
real spectrum, the common direction, consecutive windows of a track at cosine 0.69; participation
ratio 29 against the real 27.8). Until 2026-12-04 it drew tracks around 1,000 random cluster centres in
all 128 dimensions (participation ratio 116): a structure a tree index splits far more easily than the
real one, so its recall and latency flattered the searcher. Vectors are generated chunk by chunk
(about `CHUNK_WINDOWS` windows each) straight into a .npy memmap on disk, so 100k real-length songs x
210 windows x 128-d float32 (10.7 GB) never have to sit in Python memory.

Printed per size: generation and build time, memory (RSS now / peak, and RSS minus the file-backed
memmap pages), index size on disk (total, scann/, the stored vectors) and bytes per window, recall@10
and @100 against exact numpy brute
force on perturbed-window queries, single-query search latency (k=10, p50/p95) and the latency of a
whole query's retrieval (7 windows of a 10 s query, 100 neighbours each, temporal aggregation).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_gen import constants as C

log = logging.getLogger(__name__)


CHUNK_WINDOWS = 500_000
"""Windows generated at once (~0.5 GB of work arrays)."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Windows with real-embedding statistics standing in for a catalogue (see the module docstring)."""

    windows_per_track: int = 15
    dim: int = C.EMBEDDING_DIM
    seed: int = 0

    @property
    def chunk_tracks(self) -> int:
        return max(1, CHUNK_WINDOWS // self.windows_per_track)


def synthetic_space(cfg: SyntheticConfig):
    """The catalogue's `EmbeddingSpace`: one per seed, shared by all its chunks."""
    from serving.apps.synthetic_embeddings import EmbeddingSpace

    return EmbeddingSpace.draw(np.random.default_rng([cfg.seed, 0]), cfg.dim)


def synthetic_chunk(cfg: SyntheticConfig, first_track: int, num_tracks: int, space=None) -> np.ndarray:
    """Windows of tracks [first_track, first_track + num_tracks): float32 [num_tracks * w, dim],
    track-major. Deterministic given (cfg, first_track): chunks may be generated in any order."""
    space = synthetic_space(cfg) if space is None else space
    rng = np.random.default_rng([cfg.seed, 1, first_track])
    return space.windows(np.full(num_tracks, cfg.windows_per_track), rng)


def write_synthetic(path: Path, num_tracks: int, cfg: SyntheticConfig, progress: bool = True) -> np.memmap:
    """Stream `num_tracks` tracks' windows into a .npy file; returns it memory-mapped read-only."""
    from tqdm import tqdm

    n = num_tracks * cfg.windows_per_track
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, cfg.dim))
    space = synthetic_space(cfg)
    for first in tqdm(range(0, num_tracks, cfg.chunk_tracks), desc=f"generate {num_tracks} tracks",
                      unit="chunk", disable=not progress):
        count = min(cfg.chunk_tracks, num_tracks - first)
        out[first * cfg.windows_per_track : (first + count) * cfg.windows_per_track] = \
            synthetic_chunk(cfg, first, count, space)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def synthetic_layout(num_tracks: int, windows_per_track: int):
    """(track_rows int32 [n], offsets_s float32 [n], tracks) for a synthetic catalogue."""
    from serving.index import TrackInfo

    rows = np.repeat(np.arange(num_tracks, dtype=np.int32), windows_per_track)
    offsets = np.tile(np.arange(windows_per_track, dtype=np.float32) * C.MASTER_WINDOW_HOP_SECONDS,
                      num_tracks)
    tracks = [TrackInfo(f"syn{i:07d}", f"Synthetic {i}", "bench") for i in range(num_tracks)]
    return rows, offsets, tracks


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class PeakMemory:
    """Samples this process's anonymous memory (RSS minus file-backed pages) in a thread: a build's
    transient peak, which ru_maxrss blurs with the memory-mapped vectors."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_anon_gb = 0.0
        self._stop = False

    def __enter__(self) -> "PeakMemory":
        import threading

        import psutil

        proc = psutil.Process()

        def sample() -> None:
            while not self._stop:
                info = proc.memory_info()
                self.peak_anon_gb = max(self.peak_anon_gb, (info.rss - info.shared) / 1e9)
                time.sleep(self.interval_s)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()


def _memory() -> dict[str, float]:
    import psutil

    info = psutil.Process().memory_info()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_gb": info.rss / 1e9, "rss_minus_file_backed_gb": (info.rss - info.shared) / 1e9,
            "peak_rss_gb": peak_kib * 1024 / 1e9}


@dataclass(frozen=True)
class BenchScaleConfig:
    tracks: tuple[int, ...] = (100_000, 1_000_000)
    queries: int = 1000
    query_similarities: tuple[float, ...] = (0.8, 0.6)
    """recall@10 is measured for queries at each of these cosines to their source window."""
    latency_queries: int = 1000
    retrieval_queries: int = 200
    query_windows: int = 7  # a 10 s query at 1 s hop with 4 s windows
    store_dtype: str = "float32"
    """The index's stored vectors (`SearcherConfig.store_dtype`): float32 or int8."""
    max_shard_windows: int = 4_000_000  # = SearcherConfig().max_shard_windows
    save: bool = True
    seed: int = 0


def bench_one(num_tracks: int, work_dir: Path, cfg: BenchScaleConfig, syn: SyntheticConfig) -> dict[str, Any]:
    from serving.index import SearcherConfig, WindowIndex, brute_force_search, perturbed_queries, recall_at_k
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

    res: dict[str, Any] = {"tracks": num_tracks, "windows": num_tracks * syn.windows_per_track}
    t0 = time.perf_counter()
    emb = write_synthetic(work_dir / f"synthetic_{num_tracks}.npy", num_tracks, syn)
    res["generate_s"] = time.perf_counter() - t0
    rows, offsets, tracks = synthetic_layout(num_tracks, syn.windows_per_track)
    t0, c0 = time.perf_counter(), time.process_time()
    with PeakMemory() as peak:
        index = WindowIndex.build(emb, rows, offsets, tracks, "synthetic",
                                  SearcherConfig(store_dtype=cfg.store_dtype, seed=cfg.seed,
                                                 max_shard_windows=cfg.max_shard_windows))
    res["build_s"] = time.perf_counter() - t0
    res["build_cpu_s"] = time.process_time() - c0
    res["build_peak_anon_gb"] = peak.peak_anon_gb
    res["searcher"] = {k: index.metadata.config.get(k) for k in ("kind", "num_leaves", "leaves_to_search")}
    res["searcher"]["shards"] = len(index.metadata.config.get("shards", [0]))
    res["build_recall_at_10"] = index.metadata.recall_at_10
    res["tuning_curve"] = index.metadata.extra.get("tuning", {}).get("curve")
    res["tuning_k"] = index.metadata.extra.get("tuning", {}).get("k")
    res["memory_after_build"] = _memory()

    rng = np.random.default_rng([cfg.seed, 7])
    res["recall_at_10"] = {}
    res["recall_at_100"] = {}
    for sim in cfg.query_similarities:
        src = np.sort(rng.choice(emb.shape[0], cfg.queries, replace=False))
        q = perturbed_queries(np.asarray(emb[src]), sim, rng)
        t0 = time.perf_counter()
        _, true_scores = brute_force_search(q, emb, 100)
        res["brute_force_numpy_s_per_query"] = (time.perf_counter() - t0) / cfg.queries
        found_q, _ = index.search(q, 100)
        res["recall_at_10"][str(sim)] = recall_at_k(found_q, q, emb, true_scores, 10)
        res["recall_at_100"][str(sim)] = recall_at_k(found_q, q, emb, true_scores, 100)
        found_q = found_q[:, :10]
        if sim == cfg.query_similarities[0]:
            queries, found = q, found_q

    lat = []
    for i in range(min(cfg.latency_queries, cfg.queries)):
        t = time.perf_counter()
        index.search(queries[i : i + 1], 10)
        lat.append((time.perf_counter() - t) * 1e3)
    res["search_ms_single_k10"] = {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))}

    retriever = Retriever(None, index, RetrievalConfig(no_match_threshold=0.5))
    qoff = np.arange(cfg.query_windows, dtype=np.float32) * C.QUERY_WINDOW_HOP_SECONDS
    lat, hit = [], 0
    for i in range(cfg.retrieval_queries):
        track = int(rng.integers(0, num_tracks))
        first = track * syn.windows_per_track
        wins = np.asarray(emb[first : first + min(cfg.query_windows, syn.windows_per_track)])
        q = perturbed_queries(wins, cfg.query_similarities[0], rng)
        t = time.perf_counter()
        r = retriever.identify_embeddings(q, qoff[: q.shape[0]], 10.0)
        lat.append((time.perf_counter() - t) * 1e3)
        hit += bool(r.best and r.best.track_id == tracks[track].track_id)
    res["retrieval_ms_10s_query"] = {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                                     "top1_accuracy": hit / max(cfg.retrieval_queries, 1)}

    if cfg.save:
        out = work_dir / f"index_{num_tracks}"
        t0 = time.perf_counter()
        index.save(out)
        res["save_s"] = time.perf_counter() - t0
        store = sum(p.stat().st_size for p in out.glob("embeddings*.npy"))
        res["disk_gb"] = {"total": _dir_bytes(out) / 1e9, "scann": _dir_bytes(out / "scann") / 1e9,
                          "stored_vectors": store / 1e9}
        res["bytes_per_window"] = {"total": _dir_bytes(out) / res["windows"],
                                   "scann": _dir_bytes(out / "scann") / res["windows"],
                                   "stored_vectors": store / res["windows"]}
        del index, retriever
        import gc

        gc.collect()
        before = _memory()
        t0 = time.perf_counter()
        loaded = WindowIndex.load(out)
        res["load_s"] = time.perf_counter() - t0
        after = _memory()
        res["serving_anon_gb"] = after["rss_minus_file_backed_gb"] - before["rss_minus_file_backed_gb"]
        found2 = loaded.search(queries[:100], 100)[0][:, :10]  # as `found`: the top 10 of a k=100 search
        res["loaded_matches_built"] = bool(np.array_equal(found2, found[:100]))
        del loaded
        shutil.rmtree(out, ignore_errors=True)
    res["memory_end"] = _memory()
    del emb
    (work_dir / f"synthetic_{num_tracks}.npy").unlink(missing_ok=True)
    return res


def _print(res: dict[str, Any]) -> None:
    m = res["memory_after_build"]
    print(f"\n== {res['tracks']:,} tracks / {res['windows']:,} windows ==")
    print(f"searcher            {res['searcher']}  tuning curve (leaves, recall@{res['tuning_k']}): "
          f"{res['tuning_curve']}")
    print(f"generate            {res['generate_s']:.1f} s")
    print(f"build (incl. tune)  {res['build_s']:.1f} s wall, {res['build_cpu_s']:.1f} s CPU   "
          f"recall@10 at build {res['build_recall_at_10']}")
    print(f"memory after build  RSS {m['rss_gb']:.2f} GB (minus file-backed {m['rss_minus_file_backed_gb']:.2f} GB), "
          f"peak RSS {m['peak_rss_gb']:.2f} GB, peak anonymous during build {res['build_peak_anon_gb']:.2f} GB")
    recalls = "  ".join(f"queries at cos {k}: {v:.4f} (@100 {res['recall_at_100'][k]:.4f})"
                        for k, v in res["recall_at_10"].items())
    print(f"recall@10           {recalls}  (vs numpy brute force, "
          f"{res['brute_force_numpy_s_per_query'] * 1e3:.1f} ms/query chunked)")
    s = res["search_ms_single_k10"]
    print(f"search k=10 single  p50 {s['p50']:.3f} ms  p95 {s['p95']:.3f} ms")
    r = res["retrieval_ms_10s_query"]
    print(f"10 s query retrieval (7 windows x 100 nn + temporal) p50 {r['p50']:.2f} ms  p95 {r['p95']:.2f} ms  "
          f"top-1 {r['top1_accuracy']:.3f}")
    if "disk_gb" in res:
        d = res["disk_gb"]
        b = res["bytes_per_window"]
        print(f"disk                total {d['total']:.2f} GB (scann/ {d['scann']:.2f}, stored vectors "
              f"{d['stored_vectors']:.2f}); save {res['save_s']:.1f} s, load {res['load_s']:.1f} s, "
              f"loaded == built: {res['loaded_matches_built']}")
        print(f"bytes per window    {b['total']:.0f} on disk (scann/ {b['scann']:.0f}, stored vectors "
              f"{b['stored_vectors']:.0f}); loaded for serving: {res['serving_anon_gb']:.2f} GB anonymous "
              f"memory + the memory-mapped vectors")


def run(args: argparse.Namespace) -> int:
    tracks = tuple(int(t.replace("_", "")) for t in str(args.tracks).split(",") if t.strip())
    cfg = BenchScaleConfig(tracks=tracks, queries=args.queries, store_dtype=args.store_dtype,
                           max_shard_windows=args.max_shard_windows, save=not args.no_save, seed=args.seed)
    syn = SyntheticConfig(windows_per_track=args.windows_per_track, seed=args.seed)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="earworm-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    import os

    print(f"bench-scale: tracks {tracks}, {syn.windows_per_track} windows/track, dim {syn.dim}, "
          f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), work dir {work}")
    results = []
    try:
        for n in cfg.tracks:
            res = bench_one(n, work, cfg, syn)
            _print(res)
            results.append(res)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": asdict(cfg), "synthetic": asdict(syn),
                                               "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = BenchScaleConfig()
    p = subparsers.add_parser("bench-scale", help="index build/recall/latency on synthetic 100k-1M track catalogues",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracks", default=",".join(str(t) for t in defaults.tracks),
                   help="comma-separated catalogue sizes in tracks (default %(default)s)")
    p.add_argument("--windows-per-track", type=int, default=SyntheticConfig().windows_per_track)
    p.add_argument("--queries", type=int, default=defaults.queries, help="recall/latency queries")
    p.add_argument("--store-dtype", choices=("float32", "int8"), default=defaults.store_dtype,
                   help="the index's stored vectors (default %(default)s)")
    p.add_argument("--max-shard-windows", type=int, default=defaults.max_shard_windows,
                   help="windows per ScaNN shard (bounds build memory; default %(default)s)")
    p.add_argument("--no-save", action="store_true", help="skip the save/load/disk-size step")
    p.add_argument("--work-dir", help="where vectors and indexes are written (default: a temp dir, removed)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.set_defaults(func=run)
