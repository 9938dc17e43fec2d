"""`earworm demo`: the main job, end to end on one machine.

1. the model: the project's default model (serving/default_model/, shipped in the repository);
2. the demo catalogue: `size` rendered masters of test-split melodies (data_gen.catalogue);
3. its index (beam_pipelines.indexing.build_index, the `earworm index` pipeline's library entry);
4. the no-match threshold (serving.calibration) when the index has none: out-of-catalogue scores
   from the real hums in ../shared/data/qbh_demo (all but the one the demo plays), in-catalogue
   scores from synthetic queries;
5. a Recognizer server on a free port in this process, and example hums/whistles of catalogue
   melodies plus one real open-set hum identified through the real gRPC client;
6. the command lines to do it yourself.

Everything built is kept in the work dir and reused by the next run (checked against the size,
seed and model version), so a second run only starts the server and queries it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from data_gen.paths import artifacts_dir

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = field(default_factory=lambda: artifacts_dir() / "demo")
    size: int = 300
    split: str = "test"
    seed: int = 0
    demo_queries: int = 8
    query_kinds: tuple[str, ...] = ("hum", "whistle", "sung", "tone")
    query_min_seconds: float = 8.0
    query_max_seconds: float = 12.0
    calibration_tracks: int = 60
    """In-catalogue synthetic queries used to report the calibrated threshold's accept rate."""
    top_k: int = 3
    port: int = 0
    http_port: int = 0
    """Port of the page to hum into (0: any free port; the address is printed)."""


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def catalogue(self) -> Path:
        return self.root / "catalogue"

    @property
    def manifest(self) -> Path:
        return self.catalogue / "manifest.csv"

    def index(self, model_version: str) -> Path:
        return self.root / f"index-{model_version}"

    @property
    def queries(self) -> Path:
        return self.root / "queries"

    @property
    def calibration_queries(self) -> Path:
        return self.root / "calibration_queries"

    @property
    def stamp(self) -> Path:
        return self.catalogue / "demo_stamp.json"


def default_model_dir() -> Path:
    from serving.embedder import DEFAULT_MODEL_DIR

    return DEFAULT_MODEL_DIR


def _step(text: str) -> None:
    print(f"\n--- {text}", flush=True)


def resolve_model(paths: DemoPaths) -> Path:
    """The shipped default model (serving/default_model/); an error if the checkout lacks it."""
    default = default_model_dir()
    if not (default / "metadata.json").is_file():
        raise FileNotFoundError(
            f"the default model {default} is missing from this checkout; restore it with "
            "`git checkout -- serving/default_model` or retrain it (training/README.md)"
        )
    return default


def ensure_catalogue(paths: DemoPaths, config: DemoConfig) -> Path:
    want = {"size": config.size, "split": config.split, "seed": config.seed}
    if paths.manifest.is_file() and paths.stamp.is_file():
        try:
            if json.loads(paths.stamp.read_text()) == want:
                print(f"reusing the catalogue in {paths.catalogue}")
                return paths.manifest
        except ValueError:
            pass
    from data_gen.catalogue import build_catalogue

    print(f"rendering {config.size} masters of {config.split}-split melodies into {paths.catalogue} "
          "(once; later runs reuse them)", flush=True)
    manifest = Path(build_catalogue(paths.catalogue, config.size, config.split, config.seed))
    paths.stamp.write_text(json.dumps(want) + "\n")
    return manifest


def _index_matches(index_dir: Path, model_version: str, manifest: Path) -> bool:
    try:
        meta = json.loads((index_dir / "metadata.json").read_text())
    except (OSError, ValueError):
        return False
    from data_gen.manifest import read_catalogue

    n_tracks = len(read_catalogue(manifest, check_files=False))
    newer = (index_dir / "metadata.json").stat().st_mtime >= manifest.stat().st_mtime
    return meta.get("model_version") == model_version and meta.get("num_tracks") == n_tracks and newer


@contextlib.contextmanager
def _quiet(*loggers: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise some chatty loggers' level for a while (not when the user asked for -v)."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    if logging.getLogger().level > logging.DEBUG:
        for name in loggers:
            logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, old in saved.items():
            logging.getLogger(name).setLevel(old)


def _lazy_progress(items: list, desc: str) -> Iterator:
    """A progress bar that appears when iteration starts (not when the generator is created)."""
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit="query")


def ensure_index(paths: DemoPaths, manifest: Path, model_dir: Path, model_version: str) -> tuple[Path, str]:
    """Build (or reuse) the demo index. Returns (index dir, which indexing code built it)."""
    index_dir = paths.index(model_version)
    if _index_matches(index_dir, model_version, manifest):
        print(f"reusing the index in {index_dir}")
        return index_dir, "reused"
    try:
        from beam_pipelines.indexing import build_index
    except ImportError as e:  # the Beam pipeline is not available: index with serving's own code
        log.warning("beam_pipelines.indexing unavailable (%s): indexing in-process", e)
        return _index_in_process(manifest, model_dir, index_dir), "serving.embedder + WindowIndex.build"
    from beam_pipelines.options import IN_PROCESS_RUNNER_ARGS

    print(f"indexing the catalogue with the `earworm index` pipeline into {index_dir}", flush=True)
    with _quiet("apache_beam"):
        build_index(manifest, model_dir, index_dir, runner_args=IN_PROCESS_RUNNER_ARGS)
    return index_dir, "beam_pipelines.indexing.build_index"


def _index_in_process(manifest: Path, model_dir: Path, index_dir: Path) -> Path:
    from data_gen.manifest import read_catalogue
    from serving.embedder import Embedder
    from serving.indexer import index_catalogue

    index = index_catalogue(Embedder(model_dir), read_catalogue(manifest))
    index.save(index_dir)
    return index_dir


def ensure_queries(out_dir: Path, manifest: Path, config: DemoConfig, limit: int, seed: int) -> Path:
    csv_path = out_dir / "queries.csv"
    stamp = out_dir / "demo_stamp.json"
    want = {"limit": limit, "seed": seed, "kinds": list(config.query_kinds),
            "min_s": config.query_min_seconds, "max_s": config.query_max_seconds,
            "manifest_mtime": manifest.stat().st_mtime}
    if csv_path.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == want:
                return csv_path
        except ValueError:
            pass
    from data_gen.synth.queries import make_queries

    path = Path(make_queries(manifest, out_dir, kinds=config.query_kinds, per_track=1, seed=seed,
                             min_s=config.query_min_seconds, max_s=config.query_max_seconds, limit=limit))
    stamp.write_text(json.dumps(want) + "\n")
    return path


def open_set_hums() -> list[Path]:
    from serving.calibration import qbh_demo_hums

    try:
        return qbh_demo_hums()
    except FileNotFoundError:
        return []


def ensure_calibration(paths: DemoPaths, index_dir: Path, model_dir: Path, manifest: Path,
                       config: DemoConfig, held_out: Path | None) -> str:
    """Calibrate the no-match threshold when the index has none (or one made with other retrieval
    settings). Returns a one-line summary."""
    from serving.calibration import load_calibration
    from serving.retrieval_types import RetrievalConfig

    default = RetrievalConfig()
    existing = load_calibration(index_dir, default.aggregation)
    if existing is not None and existing.retrieval_differs(default) is None:
        return f"threshold {existing.threshold:.3f} (calibrated {existing.created}, reused)"
    from tqdm import tqdm

    from data_gen import constants as C
    from data_gen.audio import AudioError, load_audio
    from data_gen.manifest import read_queries
    from data_gen.synth.no_melody import no_melody_inputs
    from data_gen.synth.test_signals import hum_like_audio
    from serving.calibration import calibrate_retriever, save_calibration
    from serving.embedder import Embedder
    from serving.index import WindowIndex
    from serving.retrieval import Retriever

    print("calibrating the no-match threshold (once per index)", flush=True)
    hums = [p for p in open_set_hums() if p != held_out]
    out_audio = []
    for p in tqdm(hums, desc="open-set hums", unit="hum"):
        try:
            out_audio.append(load_audio(p, min_seconds=C.MIN_QUERY_SECONDS, max_seconds=C.MAX_QUERY_SECONDS))
        except AudioError as e:
            log.warning("skipping %s: %s", p, e)
    source = f"{len(out_audio)} real hums of qbh_demo (songs not in the catalogue)"
    if not out_audio:
        log.warning("../shared/data/qbh_demo is absent: calibrating on synthetic out-of-catalogue hums")
        out_audio = [hum_like_audio(10.0, seed=10_000 + i) for i in range(50)]
        source = "50 synthetic random-melody hums (qbh_demo absent)"
    groups = ["qbh_demo" if hums else "synthetic hums"] * len(out_audio)
    no_melody = list(no_melody_inputs().values())  # the melody gate must stop these (they then score 0)
    out_audio += no_melody
    groups += ["no_melody"] * len(no_melody)
    qcsv = ensure_queries(paths.calibration_queries, manifest, config, config.calibration_tracks,
                          config.seed + 1)
    in_pairs = [(load_audio(q.path), q.track_id) for q in read_queries(qcsv) if q.track_id]
    retriever = Retriever(Embedder(model_dir), WindowIndex.load(index_dir),
                          RetrievalConfig(no_match_threshold=0.0))  # scores only; the threshold is the output
    cal = calibrate_retriever(retriever, _lazy_progress(out_audio, "scoring open-set hums"),
                              _lazy_progress(in_pairs, "scoring in-catalogue queries"),
                              sources={"out_of_catalogue": f"{source} + {len(no_melody)} inputs with no melody",
                                       "in_catalogue": f"{len(in_pairs)} synthetic queries ({qcsv})"},
                              out_groups=groups)
    save_calibration(index_dir, cal)
    tar = "n/a" if cal.true_accept_rate is None else f"{cal.true_accept_rate:.0%}"
    by_group = ", ".join(f"{g['false_accept_rate']:.0%} of {g['count']} {name}"
                         for name, g in cal.data["false_accepts_by_group"].items())
    return (f"threshold {cal.threshold:.3f}: accepted {by_group} (out of the catalogue); "
            f"{tar} of in-catalogue queries accepted with the right song")


def _steady_tone(root: Path) -> Path:
    """A 10 s steady 440 Hz tone (no melody): the service must answer "no melody", not a song."""
    from data_gen.audio import write_audio
    from data_gen.synth.no_melody import signals

    path = root / "steady_tone_440hz.wav"
    if not path.is_file():
        write_audio(path, signals(seconds=10.0)["sine_440hz"])
    return path


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_demo(config: DemoConfig, keep_serving: bool = False, milvus_uri: str | None = None) -> int:
    from data_gen.manifest import read_catalogue, read_queries
    from serving.client import RecognizerClient
    from serving.embedder import ModelMetadata
    from serving.server import ServerConfig, create_server

    started = time.perf_counter()
    paths = DemoPaths(config.workdir.resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    print(f"Earworm demo (work dir {paths.root})")

    _step("1/5 model")
    model_dir = resolve_model(paths)
    model_version = ModelMetadata.read(model_dir).version
    print(f"model {model_version} ({model_dir})")

    _step("2/5 catalogue")
    manifest = ensure_catalogue(paths, config)
    tracks = {t.track_id: t for t in read_catalogue(manifest)}
    print(f"{len(tracks)} tracks")

    _step("3/5 index")
    index_dir, built_by = ensure_index(paths, manifest, model_dir, model_version)
    print(f"index {index_dir} ({built_by})")
    hums = open_set_hums()
    held_out = hums[0] if hums else None
    calibration = ensure_calibration(paths, index_dir, model_dir, manifest, config, held_out)
    print(calibration)

    _step("4/5 example queries")
    qcsv = ensure_queries(paths.queries, manifest, config, config.demo_queries, config.seed)
    queries = [(q.path, q.extra.get("kind", "?"), q.track_id) for q in read_queries(qcsv)]
    if held_out is not None:
        queries.append((held_out, "real hum", None))
    else:
        print("(../shared/data/qbh_demo is absent: no real open-set hum in this run)")
    queries.append((_steady_tone(paths.root), "tone", None))  # no melody at all: "no melody heard"

    _step("5/5 server + gRPC client")
    server_config = replace(ServerConfig(), model_dir=model_dir, index_dir=index_dir, host="127.0.0.1",
                            port=config.port, http_port=config.http_port, catalogue=manifest)
    serve_from = f"--index {index_dir}"
    if milvus_uri:  # the same windows and calibration in a Milvus collection (Milvus Lite file or server)
        from serving.calibration import load_calibration
        from serving.milvus_index import DEFAULT_COLLECTION, MilvusWindowStore, ensure_copy

        ensure_copy(index_dir, milvus_uri, DEFAULT_COLLECTION)
        store = MilvusWindowStore.open(milvus_uri, DEFAULT_COLLECTION)
        for agg in ("temporal", "vote"):
            cal = load_calibration(index_dir, agg)
            if cal is not None:
                store.save_calibration(cal)
        store.close()
        print(f"serving from Milvus {milvus_uri} collection {DEFAULT_COLLECTION} (a copy of {index_dir})")
        server_config = replace(server_config, index_backend="milvus", milvus_uri=milvus_uri)
        serve_from = f"--backend milvus --uri {milvus_uri}"
    with _quiet("serving.server", "serving.embedder", "serving.retrieval"):
        server, port = create_server(server_config)
    target = f"localhost:{port}"
    page = f"http://localhost:{server.http_port}/"
    print(f"server listening on {target} (gRPC); the page to hum into: {page}", flush=True)
    try:
        with RecognizerClient(target) as client, _quiet("serving.servicer"):
            correct, ranked_first, threshold = identify_examples(client, queries, tracks, config.top_k)
        in_catalogue = sum(truth is not None for _, _, truth in queries)
        print(f"\n{correct}/{len(queries)} answered correctly (threshold {threshold:.3f}); the right song was "
              f"the top candidate for {ranked_first}/{in_catalogue} in-catalogue queries "
              f"(demo took {time.perf_counter() - started:.0f} s)")
        example = queries[0][0]
        print(f"\nQuery it yourself:\n"
              f"  earworm serve --model {model_dir} {serve_from} --port 50051\n"
              f"  earworm identify {example} --server localhost:50051\n"
              f"(or any WAV/FLAC/Ogg/MP3/M4A/WebM recording of a hum; `earworm identify --json` for scripts)")
        print(f"\nOr open {page} in a browser" + ("" if keep_serving else
              " (with --keep-serving the server stays up for it)") + ": record a hum, see the song and why it matched.")
        if keep_serving:
            print(f"\nThe server keeps running on {target} and {page} (Ctrl-C to stop):\n"
                  f"  earworm identify {example} --server {target}", flush=True)
            try:
                server.wait_for_termination()
            except KeyboardInterrupt:
                pass
    finally:
        server.stop(grace=1.0)
    return 0


def identify_examples(client, queries: list[tuple[Path, str, str | None]], tracks: dict,
                      top_k: int) -> tuple[int, int, float]:
    """Identify each (path, kind, true track id or None) through the client; print one row each.
    Returns (correct answers, in-catalogue queries whose top candidate is the right song whether or
    not it cleared the no-match threshold, the server's no-match threshold)."""
    header = (f"{'query':<26} {'kind':<9} {'expected':<26} {'top candidate':<26} {'score':>6}  "
              f"{'answer':<8}  ok?")
    print(header)
    print("-" * len(header))
    correct, ranked_first, threshold = 0, 0, float("nan")
    for path, kind, truth in queries:
        result = client.identify_file(path, top_k=top_k)
        threshold = result.no_match_threshold
        expected = tracks[truth].title if truth else "(not in catalogue)"
        top = result.matches[0] if result.matches else None
        candidate = top.title if top else "-"
        answer = "no melody" if result.no_melody else "no match" if result.no_match or top is None else "match"
        ok = (truth is None and result.no_match) or (
            truth is not None and not result.no_match and top is not None and top.track_id == truth)
        correct += ok
        ranked_first += truth is not None and top is not None and top.track_id == truth
        score = f"{top.score:.3f}" if top else "-"
        name = (f"qbh_demo {Path(path).parent.name}/{Path(path).stem}" if kind == "real hum"
                else Path(path).stem)
        print(f"{_truncate(name, 26):<26} {kind:<9} {_truncate(expected, 26):<26} "
              f"{_truncate(candidate, 26):<26} {score:>6}  {answer:<8}  {'yes' if ok else 'NO'}", flush=True)
    return correct, ranked_first, threshold


def register(subparsers) -> None:
    d = DemoConfig()
    p = subparsers.add_parser("demo", help="build the demo catalogue + index, serve it, identify example hums",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the demo's catalogue, index and queries live (default artifacts/demo)")
    p.add_argument("--size", type=int, default=d.size, help=f"catalogue tracks (default {d.size})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--queries", type=int, default=d.demo_queries,
                   help=f"example queries of catalogue melodies (default {d.demo_queries})")
    p.add_argument("--port", type=int, default=d.port, help="server port (default: any free port)")
    p.add_argument("--http-port", type=int, default=d.http_port,
                   help="port of the page to hum into (default: any free port; the address is printed)")
    p.add_argument("--keep-serving", action="store_true",
                   help="keep the server (and the page) running at the end")
    p.add_argument("--milvus-uri", default=None, metavar="URI",
                   help="serve the demo index from a Milvus collection instead (its windows and calibration "
                        "copied there): a Milvus Lite file such as artifacts/demo/milvus.db, or http://host:19530")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.size < 1 or args.queries < 1:
        print("earworm demo: --size and --queries must be >= 1", file=sys.stderr)
        return 2
    config = replace(DemoConfig(), workdir=args.workdir or artifacts_dir() / "demo", size=args.size,
                     seed=args.seed, demo_queries=min(args.queries, args.size), port=args.port,
                     http_port=args.http_port)
    try:
        return run_demo(config, keep_serving=args.keep_serving, milvus_uri=args.milvus_uri)
    except Exception as e:  # noqa: BLE001 - a CLI prints one clear line, the log has the traceback
        log.debug("demo failed", exc_info=True)
        print(f"earworm demo: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
