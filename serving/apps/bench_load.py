"""`earworm bench-load`: concurrent clients against a Recognizer server for a fixed time.

Either starts a server in this process (`--model DIR --index DIR`, or `--synthetic-tracks N` to
build a random N-track index for the model; rendering 10k masters would take hours) or targets a
running one (`--server host:port`, with `--server-pid` to sample its memory). Each client sends
`--query-seconds` of hum-like audio (an encoded WAV, as a phone would) in a closed loop: the next
request leaves when the previous answer arrives; a request the server turns away as busy
(RESOURCE_EXHAUSTED, its admission limit) is retried after a jittered, doubling back-off, as a
well-behaved client would, and its latency counts from the first attempt. Prints latency
percentiles (measured by the clients, end to end), throughput, errors by status code, the busy
retries and the server's resident memory sampled over the run (start / max / end: flat means no leak).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from data_gen import constants as C
from data_gen.synth.test_signals import hum_like_audio
from serving.apps.machine_speed import format_machine_line, one_thread_matmul_gflops

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadBenchConfig:
    clients: int = 4
    seconds: float = 60.0
    query_seconds: float = 10.0
    distinct_queries: int = 8
    warmup_requests: int = 2
    """Per client, before the clock starts (the first model calls trace and allocate)."""
    synthetic_windows_per_track: int = int(30.0 / C.MASTER_WINDOW_HOP_SECONDS)
    """About as many as a rendered catalogue master (~34 s) gets: 10k tracks -> ~300k windows."""
    rss_interval_s: float = 0.5
    timeout_s: float = 10.0
    seed: int = 0
    busy_backoff_ms: float = 20.0
    """A request turned away with RESOURCE_EXHAUSTED (the server's admission limit) is retried after
    a jittered back-off that starts here and doubles up to `busy_backoff_max_ms`; its latency counts
    from the first attempt."""
    busy_backoff_max_ms: float = 500.0
    one_channel: bool = False
    """Every client calls through one shared channel (one connection), as an application server
    holding one `RecognizerClient` does; default: a channel (and connection) per client."""


@dataclass
class LoadResult:
    clients: int
    seconds: float
    requests: int
    throughput_rps: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    rss_mb: dict[str, float] = field(default_factory=dict)
    server: dict[str, object] = field(default_factory=dict)
    server_cpu_ms_per_request: float | None = None
    """Server process CPU time (user + system, all threads) per answered request: the cost of one
    request independent of how busy the machine is (2 idle cores serve at most 2000 / this req/s)."""
    busy_retries: int = 0
    """Attempts the server turned away as busy (RESOURCE_EXHAUSTED) and the client retried."""
    matmul_gflops: float | None = None
    """This machine's one-thread float32 matmul speed before the run (`machine_speed`)."""


# --- synthetic index ----------------------------------------------------------------------
def synthetic_index_dir(root: Path, tracks: int, model_version: str, seed: int) -> Path:
    # "embl": embedding-like vectors (before 2026-12-04 the folder held independent random vectors)
    return root / f"synthetic-embl-{tracks}-{model_version}-s{seed}"


def build_synthetic_index(out_dir: Path, tracks: int, model_version: str, windows_per_track: int,
                          seed: int) -> Path:
    """A random index: ~windows_per_track vectors per track with the statistics of real window
    embeddings (`synthetic_embeddings`; reused when already built)."""
    from serving.apps.synthetic_embeddings import embedding_like_windows
    from serving.index import TrackInfo, WindowIndex

    if (out_dir / "metadata.json").exists():
        return _current_searcher(out_dir)
    rng = np.random.default_rng(seed)
    counts = rng.integers(windows_per_track - 5, windows_per_track + 6, size=tracks)
    track_rows = np.repeat(np.arange(tracks, dtype=np.int32), counts)
    offsets = np.concatenate([np.arange(c) * C.MASTER_WINDOW_HOP_SECONDS for c in counts]).astype(np.float32)
    emb = embedding_like_windows(counts, rng)
    infos = [TrackInfo(f"syn{i:05d}", f"Synthetic track {i}", "Synthetic") for i in range(tracks)]
    log.info("building a synthetic index: %d tracks, %d windows", tracks, emb.shape[0])
    started = time.perf_counter()
    index = WindowIndex.build(emb, track_rows, offsets, infos, model_version=model_version)
    log.info("built in %.1f s", time.perf_counter() - started)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    index.save(tmp)
    tmp.rename(out_dir)
    return out_dir


def _current_searcher(index_dir: Path) -> Path:
    """A built synthetic index, its searcher re-tuned (or, for other build settings, rebuilt from its
    stored vectors) when it was made under other settings than today's defaults (an index cached
    before the tuning changed)."""
    from serving.index import SearcherConfig, WindowIndex, with_searcher_config

    index = WindowIndex.load(index_dir)
    if index.searcher_made_with(SearcherConfig()):
        log.info("reusing synthetic index %s", index_dir)
    else:
        log.info("synthetic index %s was made under other searcher settings: re-tuning it", index_dir)
        with_searcher_config(index, SearcherConfig()).save(index_dir)  # save swaps it in atomically
    return index_dir


def synthetic_index_for_model(model_dir: Path, tracks: int, *, root: Path | None = None, seed: int = 0,
                              windows_per_track: int = LoadBenchConfig.synthetic_windows_per_track) -> Path:
    """Build (or reuse) the random `tracks`-track index for the model in `model_dir`, kept under
    `root` (default artifacts/bench) by track count, model version and seed."""
    from data_gen.paths import artifacts_dir
    from serving.embedder import ModelMetadata

    version = ModelMetadata.read(model_dir).version
    root = root if root is not None else artifacts_dir() / "bench"
    return build_synthetic_index(synthetic_index_dir(root, tracks, version, seed), tracks, version,
                                 windows_per_track, seed)


# --- the run --------------------------------------------------------------------------------
class RssSampler:
    """Samples a process's resident memory (VmRSS) every `interval_s` in a thread, and its CPU time
    over the `with` block; for several processes (`earworm serve --processes N`), their sums (pages
    they share, such as a memory-mapped index, count once per process). Stops quietly when a process
    exits (`exited` is then True and `cpu_used` None): a benchmark must report a crashed server, not
    die with it."""

    def __init__(self, pid: int | Sequence[int], interval_s: float):
        import psutil

        self._procs = [psutil.Process(p) for p in ([pid] if isinstance(pid, int) else pid)]
        self._interval = interval_s
        self.samples: list[int] = []
        self.exited = False
        self.cpu_start: float | None = None
        self.cpu_used: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def cpu_seconds(self) -> float:
        return float(sum(t.user + t.system for t in (p.cpu_times() for p in self._procs)))

    def _sample(self) -> bool:
        import psutil

        try:
            self.samples.append(sum(p.memory_info().rss for p in self._procs))
            return True
        except psutil.Error:  # gone (or a zombie): nothing more to sample
            self.exited = True
            return False

    def _run(self) -> None:
        while self._sample():
            if self._stop.wait(self._interval):
                break

    def __enter__(self) -> "RssSampler":
        import psutil

        try:
            self.cpu_start = self.cpu_seconds()
        except psutil.Error:
            self.exited = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import psutil

        self._stop.set()
        self._thread.join()
        if not self.exited and self._sample():
            try:
                self.cpu_used = self.cpu_seconds() - self.cpu_start if self.cpu_start is not None else None
            except psutil.Error:
                self.exited = True

    def summary_mb(self) -> dict[str, float]:
        mb = np.asarray(self.samples) / 2**20
        if not mb.size:
            return {}
        at = lambda f: float(mb[min(int(f * (mb.size - 1)), mb.size - 1)])  # noqa: E731
        return {"start": at(0.0), "25%": at(0.25), "50%": at(0.5), "75%": at(0.75), "end": float(mb[-1]),
                "max": float(mb.max())}


@dataclass
class _ClientFigures:
    latencies_ms: list[float]
    errors: dict[str, int]
    seconds: float
    busy_retries: int = 0


def _drive_clients(target: str, config: LoadBenchConfig, token: str | None, on_start) -> _ClientFigures:
    """Warm up, call `on_start()`, then run the closed-loop clients for config.seconds."""
    from data_gen.audio import encode_audio
    from serving.client import ClientError, RecognizerClient

    queries = [encode_audio(hum_like_audio(config.query_seconds, config.seed + i))
               for i in range(config.distinct_queries)]
    if config.one_channel:
        clients = [RecognizerClient(target, token=token, timeout=config.timeout_s)] * config.clients
    else:
        clients = [RecognizerClient(target, token=token, timeout=config.timeout_s) for _ in range(config.clients)]
    for i, client in enumerate(clients):  # warm-up, not timed; also fails fast if unreachable
        for j in range(config.warmup_requests):
            client.identify_bytes(queries[(i + j) % len(queries)])
    latencies: list[list[float]] = [[] for _ in clients]
    errors: list[Counter] = [Counter() for _ in clients]
    busy = [0] * len(clients)
    start_barrier = threading.Barrier(len(clients) + 1)
    end_time = [0.0]

    def client_loop(k: int) -> None:
        client, lat, err = clients[k], latencies[k], errors[k]
        rng = random.Random(config.seed * 1000 + k)
        i = k
        start_barrier.wait()
        while time.perf_counter() < end_time[0]:
            t0 = time.perf_counter()
            backoff = config.busy_backoff_ms
            while True:
                try:
                    client.identify_bytes(queries[i % len(queries)])
                    lat.append((time.perf_counter() - t0) * 1000.0)  # from the first attempt
                except ClientError as e:
                    code = e.code.name if e.code else "CLIENT"
                    if code == "RESOURCE_EXHAUSTED":
                        # the server is at its admission limit: back off (jittered, doubling) and
                        # retry, as a well-behaved client does, instead of spinning on rejections;
                        # at the end of the run the request is dropped unanswered
                        if time.perf_counter() >= end_time[0]:
                            break
                        busy[k] += 1
                        time.sleep(rng.uniform(0.5, 1.0) * backoff / 1000.0)
                        backoff = min(2 * backoff, config.busy_backoff_max_ms)
                        continue
                    err[code] += 1
                break
            i += 1

    threads = [threading.Thread(target=client_loop, args=(k,), name=f"client-{k}") for k in range(len(clients))]
    for t in threads:
        t.start()
    on_start()
    started = time.perf_counter()
    end_time[0] = started + config.seconds
    start_barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for client in set(clients):
        client.close()
    return _ClientFigures([x for lat in latencies for x in lat], dict(sum(errors, Counter())), elapsed, sum(busy))


def _client_process(target: str, config: LoadBenchConfig, token: str | None, started, results) -> None:
    """Entry point of the client process: the figures (or the error message) go to `results`."""
    try:
        results.put(_drive_clients(target, config, token, started.set))
    except Exception as e:  # noqa: BLE001 - reported by the parent
        results.put(f"{type(e).__name__}: {e}")
        started.set()


def run_load(target: str, config: LoadBenchConfig, *, token: str | None = None,
             server_pid: int | Sequence[int] | None = None, metrics=None) -> LoadResult:
    """Closed-loop clients for `config.seconds`; returns latency/throughput/error/memory figures.

    The clients run in a separate (spawned) process, as real clients would: they must not share
    the server's interpreter lock when the server runs in this process. `metrics` (the in-process
    server's Metrics) adds the server-side view of the same window; `server_pid` (or the pids of a
    server's processes) samples RSS and CPU time.
    """
    import multiprocessing as mp
    import queue

    from serving.client import ClientError

    ctx = mp.get_context("spawn")
    started, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_client_process, args=(target, config, token, started, results),
                       name="bench-clients", daemon=True)
    proc.start()
    try:
        while not started.wait(1.0):
            if not proc.is_alive():
                raise ClientError("the benchmark's client process died during start-up")
        before = metrics.snapshot() if metrics is not None else None
        sampler = RssSampler(server_pid, config.rss_interval_s) if server_pid else None
        if sampler:
            sampler.__enter__()
        try:
            figures = results.get(timeout=config.seconds + config.timeout_s + 120)
        except queue.Empty as e:
            raise ClientError("the benchmark's clients did not report back") from e
        finally:
            if sampler:
                sampler.__exit__(None, None, None)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    if isinstance(figures, str):
        raise ClientError(figures)
    all_lat = np.asarray(figures.latencies_ms, np.float64)
    pct = {f"p{q}": float(np.percentile(all_lat, q)) for q in (50, 95, 99)} if all_lat.size else {}
    if all_lat.size:
        pct.update(mean=float(all_lat.mean()), max=float(all_lat.max()), min=float(all_lat.min()))
    server: dict[str, object] = {}
    if metrics is not None:
        window = metrics.snapshot().minus(before)
        n = max(window.total, 1)
        server = {"requests": window.total, "codes": window.codes,
                  "mean_latency_ms": round(window.latency_sum_ms / n, 1),
                  "mean_embed_ms": round(window.stage_ms.get("embed", 0.0) / n, 1),
                  "mean_search_ms": round(window.stage_ms.get("search", 0.0) / n, 1)}
    return LoadResult(
        clients=config.clients,
        seconds=figures.seconds,
        requests=int(all_lat.size),
        throughput_rps=all_lat.size / figures.seconds,
        latency_ms=pct,
        errors=figures.errors,
        rss_mb=sampler.summary_mb() if sampler else {},
        server=server,
        server_cpu_ms_per_request=(sampler.cpu_used * 1000.0 / max(all_lat.size, 1))
        if sampler and sampler.cpu_used is not None else None,
        busy_retries=figures.busy_retries,
    )


def format_result(result: LoadResult, query_seconds: float) -> str:
    lat = result.latency_ms
    lines = [
        f"{result.clients} clients x {result.seconds:.1f} s, {query_seconds:g} s queries: "
        f"{result.requests} requests, {result.throughput_rps:.1f} req/s",
    ]
    if lat:
        lines.append(f"latency ms: p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
                     f"mean {lat['mean']:.1f}  max {lat['max']:.1f}")
    errors = ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "0"
    lines.append(f"errors: {errors}")
    if result.busy_retries:
        lines.append(f"turned away as busy and retried after a back-off: {result.busy_retries} attempts")
    if result.rss_mb:
        r = result.rss_mb
        lines.append(f"server RSS MB over the run: start {r['start']:.0f}, 25% {r['25%']:.0f}, 50% {r['50%']:.0f}, "
                     f"75% {r['75%']:.0f}, end {r['end']:.0f} (max {r['max']:.0f})")
    if result.server_cpu_ms_per_request is not None:
        lines.append(f"server CPU per request: {result.server_cpu_ms_per_request:.1f} ms (user+system)")
    if result.server:
        lines.append(f"server side: {json.dumps(result.server, default=float)}")
    if result.matmul_gflops is not None:
        lines.append(f"{format_machine_line(result.matmul_gflops)} (this process, before the run)")
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------
def register(subparsers) -> None:
    from serving.arg_types import on_off, positive_int
    from serving.retrieval_types import parse_tempo_rates

    d = LoadBenchConfig()
    p = subparsers.add_parser(
        "bench-load", help="concurrent-client load benchmark of the server", allow_abbrev=False,
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", type=Path, help="exported model: start a server in this process")
    where.add_argument("--server", help="host:port of a running server")
    p.add_argument("--index", type=Path, help="index directory (with --model)")
    p.add_argument("--synthetic-tracks", type=positive_int, default=None,
                   help="with --model: build (or reuse) a random index of N tracks instead of --index")
    p.add_argument("--synthetic-dir", type=Path, default=None,
                   help="where synthetic indexes are kept (default artifacts/bench)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="with --server: sample this process's RSS and CPU (and its children's: a server of several processes)")
    p.add_argument("--token-file", type=Path, default=None,
                   help="file holding the bearer token for --server (default: $EARWORM_AUTH_TOKEN if set)")
    p.add_argument("--clients", type=positive_int, default=d.clients, help=f"default {d.clients}")
    p.add_argument("--one-channel", action="store_true",
                   help="the clients share one channel (one connection), as an application server does")
    p.add_argument("--seconds", type=float, default=d.seconds, help=f"default {d.seconds:g}")
    p.add_argument("--query-seconds", type=float, default=d.query_seconds, help=f"default {d.query_seconds:g}")
    p.add_argument("--workers", type=positive_int, default=None, help="server threads (in-process server)")
    from serving.cli import add_processes_argument

    add_processes_argument(p)
    p.add_argument("--batching", type=on_off, default=None, help="in-process server: on|off")
    p.add_argument("--batch-wait-ms", type=float, default=None, help="in-process server")
    p.add_argument("--tempo-views", type=parse_tempo_rates, default=None,
                   help="in-process server: the query's tempo views (default: the server's)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json-out", type=Path, default=None, help="also write the figures as JSON")
    from serving.milvus_index import add_backend_arguments

    add_backend_arguments(p, index_type=True)  # --backend milvus: the index's windows copied into --uri's collection
    p.set_defaults(func=run_bench_load)


def _with_children(pid: int | None) -> list[int] | None:
    """A running server's pid and those of its child processes (`earworm serve --processes N`
    supervises N servers)."""
    if pid is None:
        return None
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]  # gone already: the sampler reports it


def run_bench_load(args: argparse.Namespace) -> int:
    import os
    from dataclasses import replace

    from serving.client import ClientError
    from serving.server import ServerConfig, ServerError, create_server

    if logging.getLogger().level > logging.DEBUG:  # one log line per request would swamp the figures
        logging.getLogger("serving.servicer").setLevel(logging.WARNING)
    config = replace(LoadBenchConfig(), clients=args.clients, seconds=args.seconds,
                     query_seconds=args.query_seconds, seed=args.seed, one_channel=args.one_channel)
    from serving.arg_types import read_token

    try:
        token = read_token(args.token_file)
    except ValueError as e:
        print(f"earworm bench-load: {e}", file=os.sys.stderr)
        return 2
    server = group = None
    try:
        if args.model is not None:
            index_dir = args.index
            if args.synthetic_tracks:
                index_dir = synthetic_index_for_model(args.model, args.synthetic_tracks, root=args.synthetic_dir,
                                                      seed=args.seed,
                                                      windows_per_track=config.synthetic_windows_per_track)
            if index_dir is None:
                print("earworm bench-load: --model needs --index DIR or --synthetic-tracks N", file=os.sys.stderr)
                return 2
            sc = ServerConfig()
            if args.backend == "milvus":
                from serving.milvus_index import ensure_copy, index_config_from_args

                sc = replace(sc, index_backend="milvus", milvus_uri=args.uri, milvus_collection=args.collection,
                             milvus_search_params=args.milvus_search_params)
                ensure_copy(index_dir, args.uri, args.collection, index_config_from_args(args))
            sc = replace(sc, model_dir=args.model, index_dir=index_dir, host="127.0.0.1", port=0,
                         workers=args.workers or sc.workers,
                         batching=sc.batching if args.batching is None else args.batching,
                         watch_index_seconds=0,
                         query_tempo_rates=args.tempo_views or sc.query_tempo_rates)
            if args.batch_wait_ms is not None:
                sc = replace(sc, batch=replace(sc.batch, max_wait_ms=args.batch_wait_ms))
            from serving.processes import ServerProcesses, serving_processes

            try:
                processes = serving_processes(args.processes, sc)
            except ValueError as e:
                print(f"earworm bench-load: {e}", file=os.sys.stderr)
                return 2
            if processes > 1:
                group = ServerProcesses(sc, processes)
                group.start()
                target, pid, metrics = f"127.0.0.1:{group.port}", group.pids, None
                print(f"{processes} server processes behind nginx (pids {', '.join(map(str, group.pids))}, "
                      f"nginx {group.balancer_pid}): index {index_dir}, workers {sc.workers} each, batching "
                      f"{'on' if sc.batching else 'off'}; memory and CPU are their sums", flush=True)
            else:
                server, port = create_server(sc)
                target, pid, metrics = f"127.0.0.1:{port}", os.getpid(), server.metrics
                print(f"in-process server: model {server.components.embedder.version}, index "
                      f"{server.components.index.metadata.version} ({server.components.index.metadata.num_tracks} "
                      f"tracks, {server.components.index.metadata.num_windows} windows), workers {sc.workers}, "
                      f"batching {'on' if sc.batching else 'off'}", flush=True)
        else:
            target, pid, metrics = args.server, _with_children(args.server_pid), None
        matmul_gflops = one_thread_matmul_gflops()  # the servers are up and idle
        result = run_load(target, config, token=token, server_pid=pid, metrics=metrics)
        result.matmul_gflops = matmul_gflops
        if server is not None and server.embedding_stats():
            stats = server.embedding_stats()
            result.server["mean_batch_requests"] = round(
                stats["embed_requests"] / max(stats["embed_batches"], 1), 2)
    except (ServerError, ClientError) as e:
        print(f"earworm bench-load: {e}", file=os.sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop(grace=1.0)
        if group is not None:
            group.stop(grace=1.0)
    print(format_result(result, config.query_seconds))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(asdict(result), indent=2, default=float) + "\n")
    return 0 if not result.errors else 1
