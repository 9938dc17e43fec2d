"""`earworm datagen` and `earworm index`: the Beam pipelines from the command line.

Our flags are parsed first; every other flag goes to Beam's PipelineOptions (parse_known_args), so
any runner works: `--runner DataflowRunner --project P --region R --temp_location gs://...
--setup_file ./setup.py`, or `--runner PortableRunner --job_endpoint ...` for Flink/Spark. Without a
runner flag: the DirectRunner in multi-processing mode with 2 workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from beam_pipelines.options import QUERY_KINDS, SPLITS, DatagenConfig, IndexConfig
from serving.arg_types import positive_float

log = logging.getLogger(__name__)

_DG = {f.name: f.default for f in dataclasses.fields(DatagenConfig)}
_IX = {f.name: f.default for f in dataclasses.fields(IndexConfig)}


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _floats(value: str) -> tuple[float, float]:
    parts = [float(v) for v in value.split(",")]
    if len(parts) != 2 or parts[0] > parts[1]:
        raise argparse.ArgumentTypeError(f"expected LO,HI with LO <= HI, got {value!r}")
    return parts[0], parts[1]


def register(subparsers: argparse._SubParsersAction) -> None:
    dg = subparsers.add_parser(
        "datagen",
        help="Beam pipeline: synthetic (query, master) training pairs -> sharded TFRecords",
        description="Decode sung snippets and their masters, extract pitch, synthesize hum/whistle/"
        "tone queries with human-like deviations, cut aligned 6 s windows and write sharded "
        "TFRecords per split (OUT/<split>/pairs-*.tfrecord.gz) plus OUT/errors-*.jsonl. "
        "Resumable: a rerun with the same arguments skips the shards already done. "
        "Unknown flags go to Beam (e.g. --runner, --direct_num_workers).",
    )
    dg.add_argument("--out", default=None,
                    help="output folder; a rerun with the same arguments continues there, skipping "
                    "the shards done (default: $EARWORM_ARTIFACTS/training_data/<source name>, "
                    "e.g. EARWORM_ARTIFACTS=~/.cache/earworm keeps it outside the work tree)")
    dg.add_argument("--restart", action="store_true",
                    help="OUT holds shards of a run with other arguments or inputs: discard them "
                    "(without this flag such a run is refused)")
    dg.add_argument("--mir1k", nargs="?", const="default", default=None, metavar="DIR",
                    help="use MIR-1K (DIR, or ../shared/data/mir1k when given without a value)")
    dg.add_argument("--mir1k-leads", default=None, metavar="DIR",
                    help="MIR-1K masters = instrument lead (from `earworm mir1k-leads --out DIR`) + "
                    "accompaniment, instead of voice + accompaniment")
    dg.add_argument("--catalogue", default=None, metavar="DIR",
                    help="a catalogue folder written by `earworm catalogue build`")
    dg.add_argument("--snippets", default=None, metavar="CSV", help="a snippet manifest CSV")
    dg.add_argument("--limit", type=int, default=_DG["limit"],
                    help="at most N snippets per source (deterministic sample)")
    dg.add_argument("--splits", type=_csv, default=_DG["splits"],
                    help=f"only these splits (comma-separated of {','.join(SPLITS)})")
    dg.add_argument("--kinds", type=_csv, default=_DG["kinds"],
                    help=f"synthesized query kinds (default {','.join(QUERY_KINDS)})")
    dg.add_argument("--no-real", action="store_true", help="do not keep the real performance as a query")
    dg.add_argument("--performances", type=_csv, default=_DG["catalogue_performances"],
                    help="catalogue performance kinds rendered per track (sung,hum)")
    dg.add_argument("--extractor", default=_DG["extractor"], help="pitch backend: crepe, pyin, spice")
    dg.add_argument("--rendered-pitch", choices=("known", "extract"), default=_DG["rendered_pitch"],
                    help="contour of a rendered catalogue performance: the f0 its synthesizer sang "
                    "(known) or the pitch extractor on its audio (extract); recordings always use "
                    "the extractor")
    dg.add_argument("--pitch-stride", type=int, default=_DG["pitch_stride"],
                    help="run CREPE every N-th 10 ms frame (re-gridded to 10 ms)")
    dg.add_argument("--no-deviations", action="store_true", help="no human-like deviations")
    dg.add_argument("--deviation-strength", type=float, default=_DG["deviation_strength"],
                    help="scales timing/pitch errors and channel probabilities (0: clean)")
    dg.add_argument("--tempo-range", type=_floats, default=_DG["tempo_range"], metavar="LO,HI",
                    help="query tempo / source tempo range (applied once per chain)")
    dg.add_argument("--performance-seconds", type=_floats, default=_DG["performance_seconds"],
                    metavar="MIN,MAX", help="length range of a catalogue performance")
    dg.add_argument("--seed", type=int, default=_DG["seed"])
    dg.add_argument("--example-hop", type=float, default=_DG["example_hop_s"],
                    help="seconds between example windows of one query")
    dg.add_argument("--max-windows", type=int, default=_DG["max_windows"],
                    help="at most N windows per (snippet, kind)")
    dg.add_argument("--snippets-per-shard", type=int, default=_DG["snippets_per_shard"])
    dg.add_argument("--log-every", type=int, default=_DG["log_every"])
    dg.set_defaults(func=run_datagen_cli, beam_args=[])

    ix = subparsers.add_parser(
        "index",
        help="Beam pipeline: embed catalogue masters and build the ScaNN window index",
        description="Embed every catalogue master's overlapping windows with an exported model "
        "and build + save the window index (serving.index layout). With --add-to, add the "
        "catalogue as a new release to an existing index without re-embedding it. Unknown flags "
        "go to Beam.",
    )
    ix.add_argument("--catalogue", required=True, help="catalogue manifest.csv")
    ix.add_argument("--model", default=None,
                    help="exported model dir (default: serving/default_model)")
    ix.add_argument("--out", default=None, help="index directory to write (--backend scann)")
    ix.add_argument("--add-to", default=None, metavar="OLD_INDEX_DIR|COLLECTION",
                    help="existing index: add these tracks to it (written to --out); with --backend milvus "
                    "the collection at --uri that the release is added to, in place")
    ix.add_argument("--replace", action="store_true",
                    help="--backend milvus: replace an existing collection of that name (default: refuse)")
    ix.add_argument("--limit", type=int, default=_IX["limit"], help="first N tracks only")
    ix.add_argument("--batch-tracks", type=int, default=_IX["batch_tracks"])
    ix.add_argument("--embed-batch", type=int, default=_IX["embed_batch"])
    ix.add_argument("--tracks-per-shard", type=int, default=_IX["tracks_per_shard"])
    ix.add_argument("--work-dir", default=None, help="scratch folder for embedding shards")
    ix.add_argument("--keep-work", action="store_true", help="keep the embedding shards")
    ix.add_argument("--searcher", default="auto", choices=("auto", "brute_force", "tree_ah"),
                    help="ScaNN searcher kind (auto: sized to the data)")
    ix.add_argument("--store-dtype", default="float32", choices=("float32", "int8"),
                    help="the index's one stored copy of the window embeddings: float32 (512 B per window) "
                         "or int8 with a scale per window (132 B; similarities within ~1e-3); default float32")
    ix.add_argument("--master-hop-seconds", type=positive_float, default=_IX["master_hop_seconds"], metavar="S",
                    help="master windows start S seconds apart (default %(default)g); 2 halves the index's "
                         "windows and bytes at some cost in accuracy (see the README figures); --add-to "
                         "needs the old index's hop")
    ix.add_argument("--log-every", type=int, default=_IX["log_every"])
    from serving.milvus_index import add_backend_arguments

    add_backend_arguments(ix, index_type=True)
    ix.set_defaults(func=run_index_cli, beam_args=[])

    rm = subparsers.add_parser(
        "index-remove", help="remove tracks from a window index (Milvus collection or index directory)",
        description="Remove tracks (their windows and rows) from a window index and record a new index "
        "version. --backend milvus deletes them from the collection in place (a running server swaps to "
        "the new version); --backend scann rebuilds the searcher over the remaining windows in --index.")
    rm.add_argument("--track-id", action="append", required=True, help="a track id to remove (repeatable)")
    rm.add_argument("--index", default=None, help="index directory (--backend scann)")
    add_backend_arguments(rm, search_params=False)
    rm.set_defaults(func=run_index_remove_cli)

    rt = subparsers.add_parser(
        "index-retune", help="re-tune how many tree leaves an index directory's searcher visits",
        description="Measure the built ScaNN searcher of --index again and record, under a new index "
        "version, how many leaves a query visits: the fewest that reach --target-recall (recall@10 of a "
        "100-neighbour search, on perturbed own windows), or exactly --leaves-to-search; the candidates re-scored per neighbour asked take today's default. Nothing is "
        "re-embedded or rebuilt: seconds where a rebuild takes minutes (an index tuned before "
        "2026-12-04 searched 2-3x more leaves than today's default needs). A running server swaps to the "
        "new version.")
    rt.add_argument("--index", required=True, help="index directory (serving.index layout)")
    rt.add_argument("--target-recall", type=_unit_interval, default=None,
                    help=f"recall@10 the tuning must reach (default: today's, {_default_target():g})")
    rt.add_argument("--leaves-to-search", type=int, default=None, help="fix the leaves visited instead")
    rt.set_defaults(func=run_index_retune_cli)

    # Beam flags are unknown to argparse: collect them instead of failing.
    for p in (dg, ix):
        _keep_unknown_flags(p)


def _keep_unknown_flags(parser: argparse.ArgumentParser) -> None:
    """Make the sub-parser keep unknown flags in `args.beam_args` (parse_known_args) instead of
    letting the top-level parser reject them."""
    parser.allow_abbrev = False  # a Beam flag must never be taken for an abbreviation of ours
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, rest = original(args, namespace)
        ns.beam_args = list(getattr(ns, "beam_args", []) or []) + list(rest)
        return ns, []

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


def _quiet_beam() -> None:
    for name in ("apache_beam.runners.portability", "apache_beam.runners.worker", "apache_beam.typehints",
                 "apache_beam.runners.portability.fn_api_runner.translations",
                 "apache_beam.runners.portability.local_job_service",
                 "apache_beam.runners.portability.fn_api_runner.fn_runner"):
        logging.getLogger(name).setLevel(logging.WARNING)


def default_datagen_out(catalogue: str | None, mir1k: str | None, snippets: str | None) -> str:
    """`artifacts_dir()/training_data/<name>`: the names of the sources joined by "+" (a
    catalogue folder's name, "mir1k", a snippet CSV's stem). $EARWORM_ARTIFACTS moves it."""
    from pathlib import Path

    from data_gen.paths import artifacts_dir

    names = []
    if mir1k:
        names.append("mir1k")
    if catalogue:
        names.append(Path(catalogue.rstrip("/")).name or "catalogue")
    if snippets:
        names.append(Path(snippets).stem)
    return str(artifacts_dir() / "training_data" / ("+".join(names) or "datagen"))


def run_datagen_cli(args: argparse.Namespace) -> int:
    from beam_pipelines.sources import SourceError
    from beam_pipelines.training_pairs import run_datagen
    from data_gen.paths import shared_data_dir

    _quiet_beam()
    mir1k = str(shared_data_dir() / "mir1k") if args.mir1k == "default" else args.mir1k
    out = args.out or default_datagen_out(args.catalogue, mir1k, args.snippets)
    config = DatagenConfig(
        out_dir=out, mir1k_dir=mir1k, mir1k_leads_dir=args.mir1k_leads, catalogue_dir=args.catalogue,
        snippets_csv=args.snippets,
        limit=args.limit, splits=args.splits or None, kinds=args.kinds, keep_real=not args.no_real,
        catalogue_performances=args.performances, extractor=args.extractor,
        pitch_stride=args.pitch_stride, rendered_pitch=args.rendered_pitch,
        deviations=not args.no_deviations, deviation_strength=args.deviation_strength,
        tempo_range=args.tempo_range, performance_seconds=args.performance_seconds, seed=args.seed, example_hop_s=args.example_hop,
        max_windows=args.max_windows, snippets_per_shard=args.snippets_per_shard,
        log_every=args.log_every,
    )
    from beam_pipelines.resume import DatagenStateError

    try:
        summary = run_datagen(config, args.beam_args, restart=args.restart)
    except (SourceError, DatagenStateError) as e:
        print(f"earworm datagen: {e}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


def run_index_cli(args: argparse.Namespace) -> int:
    from beam_pipelines.indexing import IndexPipelineError, run_index
    from data_gen.manifest import ManifestError

    _quiet_beam()
    model = args.model
    if model is None:
        from serving.embedder import DEFAULT_MODEL_DIR

        model = str(DEFAULT_MODEL_DIR)
    from serving.milvus_index import backend_error, index_config_from_args

    problem = backend_error(args, ("out", "--out is required (the index directory to write)"))
    if problem:
        print(f"earworm index: {problem}", file=sys.stderr)
        return 2
    config = IndexConfig(
        catalogue=args.catalogue, model_dir=model, out_dir=args.out or "", add_to=args.add_to,
        batch_tracks=args.batch_tracks, embed_batch=args.embed_batch,
        tracks_per_shard=args.tracks_per_shard, limit=args.limit, log_every=args.log_every,
        backend=args.backend, milvus_uri=args.uri, milvus_collection=args.collection, replace=args.replace,
        master_hop_seconds=args.master_hop_seconds,
    )
    from serving.index import SearcherConfig

    searcher = None  # the defaults, or for --add-to the old index's own settings
    if args.searcher != "auto" or args.store_dtype != "float32":
        searcher = SearcherConfig(mode=args.searcher, store_dtype=args.store_dtype)
    try:
        summary = run_index(config, args.beam_args, work_dir=args.work_dir, keep_work=args.keep_work,
                            searcher_config=searcher,
                            milvus_config=index_config_from_args(args) if args.backend == "milvus" else None)
    except (ManifestError, IndexPipelineError) as e:
        print(f"earworm index: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # model / index load errors carry a message meant for a person
        from serving.embedder import ModelError
        from serving.index import IndexBuildError, IndexLoadError

        if isinstance(e, (ModelError, IndexLoadError, IndexBuildError)):
            print(f"earworm index: {e}", file=sys.stderr)
            return 2
        raise
    print(summary.format())
    return 0


def _remove_from_index_dir(index_dir: str, track_ids: list[str]):
    """A ScaNN index without some tracks: the remaining windows (stored embeddings, no re-embedding),
    searcher rebuilt, new version, saved in place. KeyError for an id that is not indexed."""
    import numpy as np

    from serving.index import IndexBuildError, WindowIndex

    index = WindowIndex.load(index_dir, mmap=False)
    rows = {index.track_row(t) for t in track_ids}  # KeyError: not indexed
    keep_tracks = [i for i in range(index.num_tracks) if i not in rows]
    if not keep_tracks:
        raise IndexBuildError("removing every track would leave an empty index")
    new_row = np.full(index.num_tracks, -1, np.int64)
    new_row[keep_tracks] = np.arange(len(keep_tracks))
    keep = new_row[index.track_rows] >= 0
    releases = list(index.metadata.extra.get("releases") or [])
    from serving.index import SearcherConfig

    built = WindowIndex.build(np.asarray(index.embeddings)[keep], new_row[index.track_rows[keep]],
                              index.offsets_s[keep], [index.tracks[i] for i in keep_tracks],
                              index.metadata.model_version,
                              SearcherConfig.from_dict(index.metadata.config.get("searcher", {})),
                              extra={k: v for k, v in index.metadata.extra.items()
                                     if k not in ("releases", "tuning", "build_seconds")})
    releases.append({"version": built.version, "created": built.metadata.created,
                     "tracks_removed": len(rows), "parent": index.version})
    built.metadata.extra["releases"] = releases
    built.save(index_dir)
    return built


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _default_target() -> float:
    from serving.index import SearcherConfig

    return SearcherConfig().target_recall


def retune_index_dir(index_dir: str, target_recall: float | None = None, leaves_to_search: int | None = None):
    """Re-tune the searcher of the index in `index_dir` in place (new version): today's tuning defaults
    (or `target_recall`), or a fixed `leaves_to_search`; the build settings stay the index's own."""
    from dataclasses import replace

    from serving.index import IndexBuildError, SearcherConfig, WindowIndex, with_searcher_config

    index = WindowIndex.load(index_dir)
    stored = SearcherConfig.from_dict(index.metadata.config.get("searcher", {}))
    today = SearcherConfig()
    if leaves_to_search is not None and not 1 <= leaves_to_search <= int(index.metadata.config.get("num_leaves") or 0):
        raise IndexBuildError(f"--leaves-to-search must be in [1, {index.metadata.config.get('num_leaves') or 0}] "
                              f"(the index's tree leaves; a brute-force index has none)")
    config = replace(stored, target_recall=today.target_recall if target_recall is None else target_recall,
                     tune_k=today.tune_k, tune_depth=today.tune_depth, tune_precision=today.tune_precision,
                     reorder_factor=today.reorder_factor, reorder_min=today.reorder_min,
                     num_leaves_to_search=leaves_to_search)
    new = with_searcher_config(index, config)
    new.metadata.extra["releases"] = list(index.metadata.extra.get("releases") or []) + [
        {"version": new.version, "created": new.metadata.created, "retuned": True, "parent": index.version}]
    new.save(index_dir)
    return index, new


def run_index_retune_cli(args: argparse.Namespace) -> int:
    from serving.index import IndexBuildError, IndexLoadError

    try:
        old, new = retune_index_dir(args.index, args.target_recall, args.leaves_to_search)
    except (IndexLoadError, IndexBuildError) as e:
        print(f"earworm index-retune: {e}", file=sys.stderr)
        return 2
    before, after = old.metadata.config.get("leaves_to_search"), new.metadata.config.get("leaves_to_search")
    print(f"re-tuned {args.index}: index {new.version} ({new.kind}), "
          f"leaves searched {before} -> {after} of {new.metadata.config.get('num_leaves')}, "
          f"recall@10 {old.metadata.recall_at_10} -> {new.metadata.recall_at_10}, "
          f"{new.metadata.extra.get('retuned_seconds', new.metadata.extra.get('build_seconds'))} s")
    return 0


def run_index_remove_cli(args: argparse.Namespace) -> int:
    from serving.index import IndexBuildError, IndexLoadError
    from serving.milvus_index import backend_error

    problem = backend_error(args, ("index", "--index is required (the index directory)"))
    if problem:
        print(f"earworm index-remove: {problem}", file=sys.stderr)
        return 2
    try:
        if args.backend == "milvus":
            from serving.milvus_index import remove_tracks

            md = remove_tracks(args.uri, args.collection, args.track_id)
            where = f"{args.uri} collection {args.collection}"
        else:
            new = _remove_from_index_dir(args.index, args.track_id)
            md, where = new.metadata, args.index
    except KeyError as e:
        print(f"earworm index-remove: {e.args[0]}", file=sys.stderr)
        return 2
    except (IndexLoadError, IndexBuildError) as e:
        print(f"earworm index-remove: {e}", file=sys.stderr)
        return 2
    print(f"removed {len(set(args.track_id))} track(s) from {where}: index {md.version}, "
          f"{md.num_tracks} tracks / {md.num_windows} windows")
    return 0
