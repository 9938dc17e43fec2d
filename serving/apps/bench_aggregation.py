"""`earworm bench-aggregation`: "temporal" vs "vote" aggregation on the same retrieval task.

Two modes:

- simulated (default): window embeddings of a synthetic catalogue and of noisy queries, built so that
  the structure that matters for aggregation is present (with an untrained model a real comparison
  would be meaningless):
    * each track is a smooth latent path on the sphere (AR(1) per second); a window's embedding is the
      mean of the path over its 4 s, so overlapping windows are similar, as with real audio;
    * tracks share `motifs` (4 s fragments spliced into several songs at random times: common
      melodic phrases), and a few "hub" tracks lie close to a direction every query also leans towards
      (generic-sounding songs that match any hum a little);
    * a query is `query_seconds` of one track from a random start, at a random tempo ratio, each
      window a noisy copy (cosine `query_similarity`) of the matching master span, plus the shared
      hub/hum direction; out-of-catalogue queries come from tracks that are not indexed.
- real (`--catalogue manifest.csv --queries queries.csv --model DIR [--index DIR]`): embeds the queries
  with the model (and the catalogue, unless an index built with that model is given) and compares the
  two aggregations on exactly the same search results.

Reported per aggregation: top-1 accuracy, recall@10, MRR, offset accuracy (|offset - true start| <= 2 s,
where the truth is known), and the open-set operating point (threshold at 5 % false accepts on the
out-of-catalogue queries, with the in-catalogue true-accept rate there).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_gen import constants as C

log = logging.getLogger(__name__)

OFFSET_TOLERANCE_S = C.MASTER_WINDOW_HOP_SECONDS


@dataclass(frozen=True)
class AggregationSimConfig:
    tracks: int = 2000
    held_out_tracks: int = 200
    """Extra tracks, not indexed, that out-of-catalogue queries are made from."""
    min_seconds: float = 60.0
    max_seconds: float = 240.0
    dim: int = C.EMBEDDING_DIM
    path_correlation: float = 0.85
    """AR(1) coefficient between a track's latent vectors one second apart."""
    motifs: int = 40
    motif_rate: float = 0.25
    """Fraction of each track's time covered by shared motifs."""
    hubs: int = 20
    hub_weight: float = 0.8
    """How strongly hub tracks lean towards the shared direction (others: 0)."""
    query_hub_weight: float = 0.35
    """How strongly every query leans towards it (a hummed timbre common to all queries)."""
    queries: int = 400
    out_of_catalogue_queries: int = 200
    query_seconds: float = 10.0
    query_similarity: float = 0.55
    tempo_min: float = 0.8
    tempo_max: float = 1.25
    neighbors_per_window: int = 100
    target_false_accept_rate: float = 0.05
    seed: int = 0


@dataclass
class SimulatedCatalogue:
    embeddings: np.ndarray  # [n, d] master windows of the indexed tracks
    track_rows: np.ndarray  # [n]
    offsets_s: np.ndarray  # [n]
    paths: list[np.ndarray]  # per track (indexed then held out): latent [seconds + 1, d]
    shared: np.ndarray  # [d] hub / hum direction


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _span_embedding(path: np.ndarray, starts: np.ndarray, length: np.ndarray, points: int = 8) -> np.ndarray:
    """Mean of the piecewise-linear latent path over [start, start + length] for each span -> [m, d]."""
    u = starts[:, None] + length[:, None] * (np.arange(points) + 0.5)[None, :] / points  # [m, P]
    u = np.clip(u, 0, path.shape[0] - 1.000001)
    lo = np.floor(u).astype(np.int64)
    f = (u - lo)[..., None]
    z = (1 - f) * path[lo] + f * path[lo + 1]
    return z.mean(axis=1)


def simulate_catalogue(cfg: AggregationSimConfig) -> SimulatedCatalogue:
    rng = np.random.default_rng([cfg.seed, 11])
    d, scale = cfg.dim, 1.0 / math.sqrt(cfg.dim)
    rho = cfg.path_correlation
    shared = _unit(rng.standard_normal(d))
    motifs = rng.standard_normal((cfg.motifs, 5, d)) * scale  # 4 s fragments (5 latent points)
    hubs = set(rng.choice(cfg.tracks, size=min(cfg.hubs, cfg.tracks), replace=False).tolist())
    paths, embs, rows, offs = [], [], [], []
    for t in range(cfg.tracks + cfg.held_out_tracks):
        seconds = int(rng.uniform(cfg.min_seconds, cfg.max_seconds))
        z = np.empty((seconds + 1, d))
        z[0] = rng.standard_normal(d) * scale
        steps = rng.standard_normal((seconds, d)) * scale * math.sqrt(1 - rho**2)
        for i in range(1, seconds + 1):
            z[i] = rho * z[i - 1] + steps[i - 1]
        n_motifs = int(round(cfg.motif_rate * seconds / 4)) if cfg.motifs else 0
        for _ in range(n_motifs):
            at = int(rng.integers(0, seconds - 4))
            z[at : at + 5] = motifs[rng.integers(0, cfg.motifs)]
        if t in hubs:
            z = z + cfg.hub_weight * shared * np.linalg.norm(z, axis=1, keepdims=True)
        paths.append(z)
        if t < cfg.tracks:
            starts = np.arange(0, max(seconds - C.WINDOW_SECONDS, 0) + 1e-9, C.MASTER_WINDOW_HOP_SECONDS)
            e = _unit(_span_embedding(z, starts, np.full(starts.shape, C.WINDOW_SECONDS)))
            embs.append(e)
            rows.append(np.full(starts.size, t, np.int32))
            offs.append(starts.astype(np.float32))
    return SimulatedCatalogue(np.concatenate(embs).astype(np.float32), np.concatenate(rows),
                              np.concatenate(offs), paths, shared)


def simulate_query(cat: SimulatedCatalogue, track: int, cfg: AggregationSimConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """One query: (emb [n, d], query window offsets [n], true start in the master)."""
    path = cat.paths[track]
    seconds = path.shape[0] - 1
    ratio = float(np.exp(rng.uniform(np.log(cfg.tempo_min), np.log(cfg.tempo_max))))
    span = ratio * cfg.query_seconds
    start = float(rng.uniform(0, max(seconds - span, 0)))
    q_off = np.arange(0, cfg.query_seconds - C.WINDOW_SECONDS + 1e-9, C.QUERY_WINDOW_HOP_SECONDS)
    clean = _unit(_span_embedding(path, start + ratio * q_off, np.full(q_off.shape, ratio * C.WINDOW_SECONDS)))
    clean = _unit(clean + cfg.query_hub_weight * cat.shared)
    sigma = math.sqrt((1.0 / cfg.query_similarity**2 - 1.0) / cfg.dim)
    noisy = _unit(clean + rng.normal(0, sigma, clean.shape))
    return noisy.astype(np.float32), q_off.astype(np.float32), start


@dataclass
class QueryOutcome:
    expected_row: int | None  # None: out of catalogue
    true_start: float | None
    ranked_rows: list[int]
    scores: list[float]
    offsets: list[float]


def _outcomes_for(retriever, items, expected_rows, true_starts, top_k: int = 10) -> list[QueryOutcome]:
    results = retriever.identify_embeddings_batch(items, top_k=top_k)
    out = []
    for res, exp, start in zip(results, expected_rows, true_starts):
        rows = [retriever.index.track_row(m.track_id) for m in res.matches]
        out.append(QueryOutcome(exp, start, rows, [m.score for m in res.matches], [m.offset_s for m in res.matches]))
    return out


def summarize(outcomes: list[QueryOutcome], target_far: float) -> dict[str, Any]:
    """Retrieval and open-set figures for one aggregation's outcomes."""
    from serving.calibration import calibrate_scores

    inside = [o for o in outcomes if o.expected_row is not None]
    outside = [o for o in outcomes if o.expected_row is None]
    ranks = [o.ranked_rows.index(o.expected_row) + 1 if o.expected_row in o.ranked_rows else None
             for o in inside]
    res: dict[str, Any] = {"in_catalogue_queries": len(inside), "out_of_catalogue_queries": len(outside)}
    if inside:
        res["top1_accuracy"] = float(np.mean([r == 1 for r in ranks]))
        res["recall_at_10"] = float(np.mean([r is not None and r <= 10 for r in ranks]))
        res["mrr"] = float(np.mean([1.0 / r if r else 0.0 for r in ranks]))
        timed = [(o, r) for o, r in zip(inside, ranks) if r and o.true_start is not None]
        if timed:
            res["offset_accuracy"] = float(np.mean(
                [abs(o.offsets[r - 1] - o.true_start) <= OFFSET_TOLERANCE_S for o, r in timed]))
    if outside:
        cal = calibrate_scores(
            [o.scores[0] if o.scores else 0.0 for o in outside],
            [o.scores[0] if o.scores else 0.0 for o in inside] or None,
            [r == 1 for r in ranks] or None,
            aggregation="", target_false_accept_rate=target_far)
        res["open_set"] = {"threshold": cal.threshold, "false_accept_rate": cal.false_accept_rate,
                           "true_accept_rate": cal.true_accept_rate}
    return res


def compare_simulated(cfg: AggregationSimConfig) -> dict[str, Any]:
    """Build a simulated catalogue + queries and compare the aggregations. Returns the figures."""
    from serving.index import SearcherConfig, TrackInfo, WindowIndex
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

    cat = simulate_catalogue(cfg)
    tracks = [TrackInfo(f"sim{i:05d}", f"Simulated {i}", "sim") for i in range(cfg.tracks)]
    index = WindowIndex.build(cat.embeddings, cat.track_rows, cat.offsets_s, tracks, "simulated",
                              SearcherConfig(seed=cfg.seed))
    rng = np.random.default_rng([cfg.seed, 12])
    items, expected, starts = [], [], []
    for _ in range(cfg.queries):
        t = int(rng.integers(0, cfg.tracks))
        emb, off, start = simulate_query(cat, t, cfg, rng)
        items.append((emb, off, cfg.query_seconds))
        expected.append(t)
        starts.append(start)
    for _ in range(cfg.out_of_catalogue_queries):
        t = cfg.tracks + int(rng.integers(0, cfg.held_out_tracks))
        emb, off, _ = simulate_query(cat, t, cfg, rng)
        items.append((emb, off, cfg.query_seconds))
        expected.append(None)
        starts.append(None)
    figures: dict[str, Any] = {"catalogue": {"tracks": cfg.tracks, "windows": index.num_windows,
                                             "searcher": index.kind, "recall_at_10": index.metadata.recall_at_10}}
    for agg in ("temporal", "vote"):
        retriever = Retriever(None, index, RetrievalConfig(aggregation=agg, no_match_threshold=0.0,
                                                           neighbors_per_window=cfg.neighbors_per_window))
        figures[agg] = summarize(_outcomes_for(retriever, items, expected, starts), cfg.target_false_accept_rate)
    return figures


def compare_real(catalogue: Path, queries: Path, model_dir: Path, index_dir: Path | None,
                 neighbors_per_window: int, target_far: float, limit: int | None) -> dict[str, Any]:
    """Compare the aggregations on a real catalogue + query set with a real exported model."""
    from tqdm import tqdm

    from data_gen.audio import AudioError, load_audio
    from data_gen.manifest import read_catalogue, read_queries
    from serving.embedder import Embedder
    from serving.index import WindowIndex
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

    embedder = Embedder(model_dir)
    if index_dir is not None:
        index = WindowIndex.load(index_dir)
    else:
        from serving.indexer import index_catalogue

        index = index_catalogue(embedder, read_catalogue(catalogue))
    query_list = read_queries(queries)[:limit] if limit else read_queries(queries)
    items, expected, starts = [], [], []
    skipped = 0
    for q in tqdm(query_list, desc="embed queries", unit="query"):
        try:
            audio = load_audio(q.path, min_seconds=C.MIN_QUERY_SECONDS, max_seconds=C.MAX_QUERY_SECONDS)
        except AudioError as e:
            log.warning("skipping query %s: %s", q.query_id, e)
            skipped += 1
            continue
        if q.track_id is not None:
            try:
                row = index.track_row(q.track_id)
            except KeyError:
                log.warning("query %s names track %s, which is not in the index: skipped", q.query_id, q.track_id)
                skipped += 1
                continue
        else:
            row = None
        qe = embedder.embed_query(audio, RetrievalConfig().query_tempo_rates)  # the retrievers' views
        items.append((qe.emb, qe.offsets_s, audio.size / C.SAMPLE_RATE, qe.views))
        expected.append(row)
        start = q.extra.get("master_offset_s") or q.extra.get("offset_s")
        starts.append(float(start) if start not in (None, "") else None)
    figures: dict[str, Any] = {"catalogue": {"tracks": index.num_tracks, "windows": index.num_windows,
                                             "model": embedder.version, "skipped_queries": skipped}}
    for agg in ("temporal", "vote"):
        retriever = Retriever(embedder, index, RetrievalConfig(aggregation=agg, no_match_threshold=0.0,
                                                               neighbors_per_window=neighbors_per_window))
        figures[agg] = summarize(_outcomes_for(retriever, items, expected, starts), target_far)
    return figures


def _print(figures: dict[str, Any]) -> None:
    print(f"catalogue: {figures['catalogue']}")
    keys = ("top1_accuracy", "recall_at_10", "mrr", "offset_accuracy")
    print(f"{'aggregation':<12}" + "".join(f"{k:>17}" for k in keys) + f"{'TAR@FAR':>12}{'threshold':>11}")
    for agg in ("temporal", "vote"):
        f = figures[agg]
        row = "".join(f"{f[k]:>17.3f}" if k in f else f"{'-':>17}" for k in keys)
        os_ = f.get("open_set")
        tail = (f"{os_['true_accept_rate']:>12.3f}{os_['threshold']:>11.3f}"
                if os_ and os_["true_accept_rate"] is not None else f"{'-':>12}{'-':>11}")
        print(f"{agg:<12}{row}{tail}")


def run(args: argparse.Namespace) -> int:
    real = [args.catalogue, args.queries, args.model]
    if any(real) and not all(real[1:]):
        print("real mode needs --queries and --model (and --catalogue or --index)")
        return 2
    if args.queries:
        if not args.catalogue and not args.index:
            print("real mode needs --catalogue or --index")
            return 2
        figures = compare_real(Path(args.catalogue) if args.catalogue else Path(), Path(args.queries),
                               Path(args.model), Path(args.index) if args.index else None,
                               args.neighbors_per_window, args.target_far, args.limit)
    else:
        d = AggregationSimConfig()
        cfg = AggregationSimConfig(tracks=args.tracks, queries=args.sim_queries,
                                   query_similarity=args.query_similarity,
                                   neighbors_per_window=args.neighbors_per_window,
                                   target_false_accept_rate=args.target_far, seed=args.seed,
                                   motifs=d.motifs if args.motifs is None else args.motifs,
                                   hubs=d.hubs if args.hubs is None else args.hubs)
        print(f"simulated: {asdict(cfg)}")
        figures = compare_simulated(cfg)
    _print(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    d = AggregationSimConfig()
    p = subparsers.add_parser("bench-aggregation", help="compare temporal vs vote aggregation",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", help="real mode: catalogue manifest.csv")
    p.add_argument("--queries", help="real mode: query set CSV (track_id empty = out of catalogue)")
    p.add_argument("--model", help="real mode: exported model dir")
    p.add_argument("--index", help="real mode: an index built with --model (skips embedding the catalogue)")
    p.add_argument("--limit", type=int, help="real mode: first N queries only")
    p.add_argument("--tracks", type=int, default=d.tracks, help="simulated catalogue size")
    p.add_argument("--sim-queries", type=int, default=d.queries, help="simulated in-catalogue queries")
    p.add_argument("--query-similarity", type=float, default=d.query_similarity)
    p.add_argument("--motifs", type=int, help=f"shared motifs (default {d.motifs}; 0: none)")
    p.add_argument("--hubs", type=int, help=f"hub tracks (default {d.hubs}; 0: none)")
    p.add_argument("--neighbors-per-window", type=int, default=d.neighbors_per_window)
    p.add_argument("--target-far", type=float, default=d.target_false_accept_rate)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(func=run)
