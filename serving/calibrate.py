"""`earworm calibrate`: measure an index's no-match threshold and store it with the index.

Embeds each out-of-catalogue query (the real hums of ../shared/data/qbh_demo, plus inputs with no
melody) once, scores it under every aggregation, and writes the calibration (`serving.calibration`)
beside the index, or into a Milvus collection's properties.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.calibration import DEFAULT_TARGET_FALSE_ACCEPT_RATE, calibrate_scores, qbh_demo_hums, save_calibration
from serving.retrieval_types import DEFAULT_QUERY_TEMPO_RATES, parse_tempo_rates

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class CalibrateCommandConfig:
    target_false_accept_rate: float = DEFAULT_TARGET_FALSE_ACCEPT_RATE
    aggregations: tuple[str, ...] = ("temporal", "vote")
    neighbors_per_window: int = 100  # = RetrievalConfig().neighbors_per_window
    query_tempo_rates: tuple[float, ...] = DEFAULT_QUERY_TEMPO_RATES


def run_calibrate(args: argparse.Namespace) -> int:
    """Embed each query once, score it under every aggregation, write calibration.json."""
    from tqdm import tqdm

    from data_gen import constants as C
    from data_gen.audio import AudioError, load_audio
    from data_gen.manifest import read_queries
    from serving.embedder import Embedder
    from serving.index import WindowIndex
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

    from data_gen.synth.no_melody import no_melody_inputs

    from serving.milvus_index import MilvusWindowStore, backend_error

    problem = backend_error(args, ("index", "--index is required (or --backend milvus --uri URI)"))
    if problem:
        print(f"earworm calibrate: {problem}")
        return 2
    embedder = Embedder(args.model)
    index = (MilvusWindowStore.open(args.uri, args.collection, search_params=args.milvus_search_params)
             if args.backend == "milvus" else WindowIndex.load(args.index))
    inside: list[tuple[Path, str]] = []
    outside: list[tuple[Path | np.ndarray, str]] = []  # (file or audio, group)
    if args.queries:
        for q in read_queries(args.queries):
            (inside.append((q.path, q.track_id)) if q.track_id else outside.append((q.path, "queries")))
    if not args.no_qbh_demo:
        try:
            outside.extend((p, "qbh_demo") for p in qbh_demo_hums())
        except FileNotFoundError as e:
            log.warning("%s: only the query set's out-of-catalogue rows are used", e)
    if args.limit:
        inside, outside = inside[: args.limit], outside[: args.limit]
    if not args.no_degenerate:  # inputs with no melody at all: the melody gate must stop them
        outside.extend((audio, "no_melody") for audio in no_melody_inputs().values())
    if not outside:
        print("no out-of-catalogue queries: give --queries with empty track_id rows, or keep the qbh_demo hums")
        return 2
    retrievers = {a: Retriever(embedder, index, RetrievalConfig(aggregation=a, no_match_threshold=0.0,
                                                                neighbors_per_window=args.neighbors_per_window,
                                                                query_tempo_rates=args.tempo_views))
                  for a in args.aggregations.split(",")}
    scores: dict[str, dict[str, list]] = {a: {"in": [], "ok": [], "out": [], "group": []} for a in retrievers}
    skipped, gated = 0, {}
    first = next(iter(retrievers.values()))  # the retrievers differ only in aggregation
    for item, want, group in tqdm([(p, t, "in") for p, t in inside] + [(p, None, g) for p, g in outside],
                                  desc="calibration queries", unit="query"):
        try:
            audio = item if isinstance(item, np.ndarray) else load_audio(
                item, min_seconds=C.MIN_QUERY_SECONDS, max_seconds=C.MAX_QUERY_SECONDS)
        except AudioError as e:
            log.warning("skipping %s: %s", item, e)
            skipped += 1
            continue
        check, _ = first.check_melody(audio)  # once; no melody: no search, the query scores 0
        gated[group] = gated.get(group, 0) + (check is not None and not check.has_melody)
        embedded: list = []

        def embed(a: np.ndarray):  # the retrievers differ only in aggregation: embed once
            embedded[:] = embedded or [first.embed(a)]
            return embedded[0]

        for agg, retriever in retrievers.items():
            best = retriever.identify(audio, top_k=1, embed=embed, melody=check).best
            s = best.score if best else 0.0
            if want is None:
                scores[agg]["out"].append(s)
                scores[agg]["group"].append(group)
            else:
                scores[agg]["in"].append(s)
                scores[agg]["ok"].append(bool(best and best.track_id == want))
    for agg, sc in scores.items():
        cal = calibrate_scores(
            sc["out"], sc["in"] or None, sc["ok"] or None, aggregation=agg,
            target_false_accept_rate=args.target_far, model_version=index.metadata.model_version,
            index_version=index.version, neighbors_per_window=args.neighbors_per_window,
            rerank_candidates=retrievers[agg].rerank_candidates,
            query_tempo_rates=retrievers[agg].config.query_tempo_rates,
            tempo_view_penalty=retrievers[agg].config.tempo_view_penalty,
            sources={"queries": str(args.queries or ""), "qbh_demo": not args.no_qbh_demo,
                     "no_melody_inputs": not args.no_degenerate, "skipped": skipped,
                     "stopped_by_melody_gate": gated},
            out_groups=sc["group"])
        written = (index.save_calibration(cal) if hasattr(index, "save_calibration")
                   else save_calibration(index.path, cal))
        tar = "-" if cal.true_accept_rate is None else f"{cal.true_accept_rate:.3f}"
        print(f"{agg:<9} threshold {cal.threshold:.4f}  false-accept {cal.false_accept_rate:.3f} "
              f"(target {cal.target_false_accept_rate:.2f}, {len(sc['out'])} out-of-catalogue)  "
              f"true-accept {tar} ({len(sc['in'])} in-catalogue)")
        for group, g in cal.data.get("false_accepts_by_group", {}).items():
            print(f"{'':<9} {group}: false-accept {g['false_accept_rate']:.3f} of {g['count']} "
                  f"({gated.get(group, 0)} stopped by the melody gate"
                  f"{'' if g['sets_threshold'] else '; too few to set the threshold'})")
        if gated.get("in"):
            print(f"{'':<9} in-catalogue: {gated['in']} of {len(sc['in'])} stopped by the melody gate")
    print(f"wrote {written}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `earworm calibrate`."""
    d = CalibrateCommandConfig()
    p = subparsers.add_parser("calibrate", help="choose the no-match threshold of an index (calibration.json)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", default=None,
                   help="index directory (calibration.json is written there); or --backend milvus --uri URI "
                        "[--collection C]: the calibration is stored on the collection (a property)")
    from serving.milvus_index import add_backend_arguments

    add_backend_arguments(p)
    p.add_argument("--model", required=True, help="the exported model the index was built with")
    p.add_argument("--queries", help="query set CSV: rows with a track_id are in-catalogue, empty = out")
    p.add_argument("--no-qbh-demo", action="store_true",
                   help="do not add the real hums of ../shared/data/qbh_demo as out-of-catalogue queries")
    p.add_argument("--no-degenerate", action="store_true",
                   help="do not add the inputs with no melody (tones, noise, clicks, speech: "
                        "data_gen.synth.no_melody) as out-of-catalogue queries")
    p.add_argument("--target-far", type=float, default=d.target_false_accept_rate,
                   help="open-set false-accept rate to allow (default %(default)s)")
    p.add_argument("--aggregations", default=",".join(d.aggregations))
    p.add_argument("--neighbors-per-window", type=int, default=d.neighbors_per_window)
    p.add_argument("--tempo-views", type=parse_tempo_rates, default=d.query_tempo_rates,
                   help="the server's tempo views of a query (default %(default)s)")
    p.add_argument("--limit", type=int, help="at most N in- and N out-of-catalogue queries")
    p.set_defaults(func=run_calibrate)
