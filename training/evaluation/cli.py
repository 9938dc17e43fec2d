"""`earworm eval`, `earworm benchset ...` and `earworm eval-suite`.

    earworm eval --catalogue CAT/manifest.csv --queries Q.csv --model MODEL_DIR --out DIR \
        [--index INDEX_DIR] [--baselines note_histogram,melody_dtw] [--aggregation temporal,vote] \
        [--crop-seconds 3,5,10]
    earworm benchset synthetic --out DIR [--tracks 1000]
    earworm benchset mir1k-cross --out DIR [--source ../shared/data/mir1k] [--distractors CAT.csv]
    earworm benchset openset --out DIR [--source ../shared/data/qbh_demo]
    earworm benchset zalo --out DIR [--distractors 1000]
    earworm benchset adc2004 --out DIR [--distractors 1000]
    earworm eval-suite --model MODEL_DIR --out DIR

Heavy imports (TensorFlow, ScaNN, music21) happen inside the run functions.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def default_model_dir() -> Path:
    from serving.embedder import DEFAULT_MODEL_DIR

    return DEFAULT_MODEL_DIR


def _csv(values: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in values.split(",") if v.strip())


def _floats(values: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _csv(values))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, got {values!r}") from e


def _fail(message: str) -> int:
    print(f"earworm: error: {message}", file=sys.stderr)
    return 2


# --- eval ------------------------------------------------------------------------------------------
def run_eval(args: argparse.Namespace) -> int:
    from data_gen.audio import AudioError
    from data_gen.manifest import ManifestError
    from training.evaluation.runner import EvalConfig, EvalError, evaluate

    model = None if args.no_model else (args.model or default_model_dir())
    try:
        config = EvalConfig(
            catalogue=Path(args.catalogue).resolve(), queries=Path(args.queries).resolve(),
            out_dir=Path(args.out).resolve(), model_dir=Path(model).resolve() if model else None,
            index_dir=Path(args.index).resolve() if args.index else None,
            base_index=Path(args.base_index).resolve() if args.base_index else None,
            baselines=_csv(args.baselines), aggregations=_csv(args.aggregation),
            crop_seconds=args.crop_seconds, crop_baselines=not args.no_crop_baselines, top_k=args.top_k,
            seed=args.seed,
            cache_dir=Path(args.cache_dir).resolve() if args.cache_dir else None,
            thresholds_from=Path(args.thresholds_from).resolve() if args.thresholds_from else None,
            no_match_threshold=args.no_match_threshold, limit=args.limit, indexer=args.indexer,
            rerank_candidates=args.rerank_candidates, store_dtype=args.store_dtype, query_tempo_rates=args.tempo_views,
            tempo_view_penalty=args.tempo_view_penalty, explain=args.explain,
            backend=args.backend, milvus_uri=args.uri, milvus_collection=args.collection,
            milvus_index_type=args.milvus_index_type, milvus_search_params=args.milvus_search_params,
            master_hop_seconds=args.master_hop_seconds,
        )
        report = evaluate(config)
    except (ValueError, ManifestError, EvalError, AudioError, FileNotFoundError) as e:
        return _fail(str(e))
    except RuntimeError as e:  # ModelError, IndexLoadError
        return _fail(str(e))
    from training.evaluation.report import MAIN_HEADER, main_row, table

    print(table(MAIN_HEADER, [main_row(n, s["full"]) for n, s in report["systems"].items()]))
    if config.explain and (config.out_dir / "failures.md").is_file():
        print("\n" + (config.out_dir / "failures.md").read_text())
    print(f"\nwrote {config.out_dir / 'metrics.json'} and {config.out_dir / 'report.md'}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from serving.arg_types import positive_float
    from serving.retrieval_types import parse_tempo_rates
    from training.evaluation.runner import INDEXERS, EvalConfig

    d = EvalConfig(Path("."), Path("."), Path("."), model_dir=Path("."))
    p = sub.add_parser("eval", help="measure retrieval of a query set against a catalogue",
                       description="Answer every query with the model (and baselines) and write "
                                   "metrics.json, report.md and plots to --out.")
    p.add_argument("--catalogue", required=True, help="catalogue manifest.csv (track_id,title,artist,path[,melody_midi])")
    p.add_argument("--queries", required=True, help="query set CSV (query_id,path,track_id[,kind])")
    p.add_argument("--model", default=None, help=f"exported model dir (default {default_model_dir()})")
    p.add_argument("--no-model", action="store_true", help="evaluate the baselines only")
    p.add_argument("--index", default=None, help="prebuilt index for this catalogue+model (default: "
                                                 "build, cached in OUT/index)")
    p.add_argument("--base-index", default=None,
                   help="an index of some of the catalogue's tracks (same model): embed only the others")
    p.add_argument("--indexer", default=d.indexer, choices=INDEXERS,
                   help="how a missing index is built: the Beam pipeline, in-process, or auto")
    p.add_argument("--master-hop-seconds", type=positive_float, default=d.master_hop_seconds, metavar="S",
                   help="master windows of the index the evaluation builds start S seconds apart (default "
                        "%(default)g; part of the OUT/index cache key); an --index keeps its own hop")
    p.add_argument("--baselines", default="", help="comma list: note_histogram,melody_dtw")
    p.add_argument("--aggregation", default=",".join(d.aggregations), help="comma list: temporal,vote")
    p.add_argument("--crop-seconds", type=_floats, default=d.crop_seconds,
                   help="also evaluate each query cropped to these lengths, e.g. 3,5,10")
    p.add_argument("--no-crop-baselines", action="store_true", help="run the length sweep for the model only")
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--limit", type=int, default=None, help="only the first N queries")
    p.add_argument("--cache-dir", default=None, help="baselines' per-master cache (default OUT/cache)")
    p.add_argument("--thresholds-from", default=None,
                   help="metrics.json of another run whose calibrated thresholds score open-set queries")
    p.add_argument("--no-match-threshold", type=float, default=None,
                   help="override the model's calibrated no-match threshold")
    p.add_argument("--store-dtype", default=d.store_dtype, choices=("float32", "int8"),
                   help="the stored vectors of an index the evaluation builds (default %(default)s)")
    p.add_argument("--rerank-candidates", type=int, default=d.rerank_candidates,
                   help="temporal aggregation: how many best tracks are re-scored exactly "
                        "(default %(default)s, the server's; 0 = first stage only)")
    p.add_argument("--tempo-views", type=parse_tempo_rates, default=d.query_tempo_rates,
                   help="comma list of the query's tempo views (how many times longer each plays; "
                        f"default: the server's, {','.join(map(str, d.query_tempo_rates))}; 1 = the query as sung only)")
    p.add_argument("--tempo-view-penalty", type=float, default=d.tempo_view_penalty,
                   help="score penalty of a tempo view per unit of |ln rate| (default %(default)s, the server's)")
    p.add_argument("--explain", action="store_true",
                   help="the failure table: for each query the model misses, the true track's rank and "
                        "score against the winner's and its likely cause from the pitch tracks (tempo, "
                        "section, voicing, intonation), with a plot each (OUT/failures.md, failures/*.png)")
    from serving.milvus_index import add_backend_arguments

    add_backend_arguments(p, index_type=True)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run_eval)


# --- benchset ---------------------------------------------------------------------------------------
def run_benchset(args: argparse.Namespace) -> int:
    from data_gen.manifest import ManifestError
    from training.evaluation import benchsets

    out = Path(args.out).resolve()
    try:
        if args.benchset == "synthetic":
            cfg = benchsets.SyntheticConfig(
                tracks=args.tracks, songs=args.songs, queries=args.queries, kinds=_csv(args.kinds),
                min_seconds=args.min_seconds, max_seconds=args.max_seconds, seed=args.seed,
                workers=args.workers)
            result = benchsets.build_synthetic(out, cfg)
        elif args.benchset == "mir1k-cross":
            cfg = benchsets.Mir1kCrossConfig(
                seed=args.seed, all_songs=args.all_songs, max_queries_per_song=args.queries_per_song)
            result = benchsets.build_mir1k_cross(
                out, Path(args.source) if args.source else None,
                distractors=Path(args.distractors).resolve() if args.distractors else None, config=cfg)
        elif args.benchset == "openset":
            result = benchsets.build_openset(out, Path(args.source) if args.source else None)
        else:  # the real sets, padded with rendered distractors
            source = Path(args.source) if args.source else None
            pad = _distractors(args)
            if args.benchset == "zalo":
                result = benchsets.build_zalo(out, source, distractors=pad)
            else:
                result = benchsets.build_adc2004(out, source, distractors=pad, config=benchsets.Adc2004Config(
                    per_track=args.queries_per_song, seed=args.seed, pitch_accuracy=not args.no_pitch_accuracy))
    except (ManifestError, FileNotFoundError, ValueError, benchsets.BenchsetBusyError) as e:
        return _fail(str(e))
    for k, v in result.items():
        print(f"{k}: {v}")
    return 0


def _distractors(args: argparse.Namespace) -> Path | None:
    """The catalogue that pads a real set: --distractor-catalogue, else the first --distractors N
    rendered masters of the synthetic benchmark (built when missing), else none (N = 0)."""
    from training.evaluation import benchsets

    if args.distractor_catalogue:
        return Path(args.distractor_catalogue).resolve()
    if args.distractors <= 0:
        return None
    bench = Path(args.bench).resolve() if args.bench else benchsets.default_bench_dir()
    return benchsets.rendered_distractors(bench, args.distractors, workers=args.workers)


def _add_real_set(bs, name: str, help_text: str, source: str) -> argparse.ArgumentParser:
    from training.evaluation.benchsets import DEFAULT_DISTRACTORS

    p = bs.add_parser(name, help=help_text)
    p.add_argument("--out", required=True)
    p.add_argument("--source", default=None, help=f"source folder (default ../shared/data/{source})")
    p.add_argument("--distractors", type=int, default=DEFAULT_DISTRACTORS,
                   help="pad the catalogue with this many rendered masters of the synthetic benchmark "
                        "(built under --bench when missing; 0: none; default %(default)s)")
    p.add_argument("--distractor-catalogue", default=None,
                   help="pad with the tracks of this catalogue manifest instead")
    p.add_argument("--bench", default=None, help="benchmark sets folder holding synthetic/ "
                                                 "(default ARTIFACTS/benchsets)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes for missing distractors")
    return p


def _add_benchset(sub: argparse._SubParsersAction) -> None:
    from training.evaluation.benchsets import Mir1kCrossConfig, SyntheticConfig

    s, m = SyntheticConfig(), Mir1kCrossConfig()
    p = sub.add_parser("benchset", help="build a benchmark catalogue + query set (never committed)")
    bs = p.add_subparsers(dest="benchset", metavar="SET", required=True)
    syn = bs.add_parser("synthetic", help="test-split melodies: rendered masters + synthetic hums/whistles/"
                                          "singing, padded with distractor masters")
    syn.add_argument("--out", required=True)
    syn.add_argument("--tracks", type=int, default=s.tracks, help="catalogue size incl. distractors")
    syn.add_argument("--songs", type=int, default=s.songs, help="test-split songs that get queries")
    syn.add_argument("--queries", type=int, default=s.queries, help="number of queries")
    syn.add_argument("--kinds", default=",".join(s.kinds))
    syn.add_argument("--min-seconds", type=float, default=s.min_seconds)
    syn.add_argument("--max-seconds", type=float, default=s.max_seconds)
    syn.add_argument("--seed", type=int, default=s.seed)
    syn.add_argument("--workers", type=int, default=s.workers, help="rendering processes")
    mir = bs.add_parser("mir1k-cross", help="real MIR-1K singing vs masters of accompaniment + a "
                                            "lead instrument playing the labelled melody")
    mir.add_argument("--out", required=True)
    mir.add_argument("--source", default=None, help="MIR-1K folder (default ../shared/data/mir1k)")
    mir.add_argument("--distractors", default=None, help="catalogue manifest whose tracks pad the catalogue")
    mir.add_argument("--all-songs", action="store_true",
                     help="use every song, not only test-split ones (for recordings never used in training)")
    mir.add_argument("--queries-per-song", type=int, default=m.max_queries_per_song)
    mir.add_argument("--seed", type=int, default=m.seed)
    ops = bs.add_parser("openset", help="real hums of songs in none of our catalogues (empty track_id)")
    ops.add_argument("--out", required=True)
    ops.add_argument("--source", default=None, help="qbh_demo folder (default ../shared/data/qbh_demo)")
    _add_real_set(bs, "zalo", "20 real phone hums against the real pop recordings they hum (zalo_mini), "
                              "padded with rendered distractors", "zalo_mini")
    adc = _add_real_set(bs, "adc2004", "20 real polyphonic excerpts (ADC2004) as masters; hums, whistles and "
                                       "tones synthesized from their annotated melody", "adc2004")
    adc.add_argument("--queries-per-song", type=int, default=3)
    adc.add_argument("--seed", type=int, default=0)
    adc.add_argument("--no-pitch-accuracy", action="store_true",
                     help="skip measuring CREPE's raw pitch accuracy on the polyphonic mixes")
    p.set_defaults(func=run_benchset)


# --- eval-suite -----------------------------------------------------------------------------------
def run_suite(args: argparse.Namespace) -> int:
    from data_gen.manifest import ManifestError
    from training.evaluation.runner import EvalError
    from training.evaluation.suite import SuiteConfig, run_suite as suite

    try:
        cfg = SuiteConfig(
            model_dir=Path(args.model or default_model_dir()).resolve(), out_dir=Path(args.out).resolve(),
            bench_dir=Path(args.bench).resolve() if args.bench else None,
            sets=_csv(args.sets), baselines=_csv(args.baselines), aggregations=_csv(args.aggregation),
            crop_seconds=args.crop_seconds, crop_baselines=args.crop_baselines,
            build_missing=not args.no_build, limit=args.limit, indexer=args.indexer,
            master_hop_seconds=args.master_hop_seconds, store_dtype=args.store_dtype)
        table_md = suite(cfg)
    except (ValueError, ManifestError, EvalError, FileNotFoundError) as e:
        return _fail(str(e))
    print(table_md)
    return 0


def _add_suite(sub: argparse._SubParsersAction) -> None:
    from serving.arg_types import positive_float
    from training.evaluation.runner import INDEXERS
    from training.evaluation.suite import SuiteConfig

    d = SuiteConfig(Path("."), Path("."))
    p = sub.add_parser("eval-suite", help="the full table: zalo, adc2004 (real), synthetic-1k, synthetic-10k, mir1k-cross, openset "
                                          "for the model and both baselines")
    p.add_argument("--model", default=None, help=f"exported model dir (default {default_model_dir()})")
    p.add_argument("--out", required=True)
    p.add_argument("--bench", default=None, help="benchmark sets folder (default ARTIFACTS/benchsets)")
    p.add_argument("--sets", default=",".join(d.sets))
    p.add_argument("--baselines", default=",".join(d.baselines))
    p.add_argument("--aggregation", default=",".join(d.aggregations))
    p.add_argument("--crop-seconds", type=_floats, default=d.crop_seconds)
    p.add_argument("--crop-baselines", action="store_true", help="run the baselines on the crops too")
    p.add_argument("--limit", type=int, default=None, help="only the first N queries of each set")
    p.add_argument("--no-build", action="store_true", help="fail instead of building a missing benchset")
    p.add_argument("--indexer", default=d.indexer, choices=INDEXERS,
                   help="how missing indexes are built: the Beam pipeline, in-process, or auto (Beam)")
    p.add_argument("--master-hop-seconds", type=positive_float, default=d.master_hop_seconds, metavar="S",
                   help="master windows of the indexes the suite builds start S seconds apart (default "
                        "%(default)g; an index of OUT built at another hop is built anew)")
    p.add_argument("--store-dtype", default=d.store_dtype, choices=("float32", "int8"),
                   help="the stored vectors of the indexes the suite builds (default %(default)s)")
    p.set_defaults(func=run_suite)


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_eval(subparsers)
    _add_benchset(subparsers)
    _add_suite(subparsers)
