"""`earworm serve` and `earworm identify`; `register` also adds `calibrate` and `gate-check`.

Heavy imports (TensorFlow, ScaNN) happen inside the run functions so `earworm --help` stays fast.
Defaults come from the config dataclasses (ServerConfig, ServicerConfig, DemoConfig,
LoadBenchConfig); the flags below only name them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from serving.arg_types import nonneg_int, on_off, positive_float, positive_int, read_token

log = logging.getLogger(__name__)


# --- earworm serve ---------------------------------------------------------------------------
def add_server_arguments(p: argparse.ArgumentParser, *, model_required: bool) -> None:
    """Flags shared by `serve` and `bench-load` (in-process server)."""
    from serving.batching import BatchingConfig
    from serving.retrieval_types import parse_tempo_rates
    from serving.server import ServerConfig
    from serving.servicer import ServicerConfig

    d, s, b = ServerConfig(), ServicerConfig(), BatchingConfig()
    p.add_argument("--model", type=Path, required=model_required, help="exported model directory")
    p.add_argument("--index", type=Path, default=None,
                   help="index directory (earworm index)" + ("; required unless --backend milvus" if model_required else ""))
    from serving.milvus_index import add_backend_arguments

    add_backend_arguments(p)
    p.add_argument("--workers", type=positive_int, default=d.workers,
                   help=f"request threads (default {d.workers})")
    p.add_argument("--max-audio-bytes", type=positive_int, default=s.max_audio_bytes,
                   help=f"largest accepted audio payload, and most bytes a stream may hold (default {s.max_audio_bytes})")
    p.add_argument("--max-streams", type=positive_int, default=s.max_concurrent_streams,
                   help=f"StreamIdentify calls served at once; more get RESOURCE_EXHAUSTED "
                        f"(default {s.max_concurrent_streams}; keep it below --workers)")
    p.add_argument("--max-identify", type=positive_int, default=s.max_concurrent_identify,
                   help=f"Identify calls worked on at once; more get RESOURCE_EXHAUSTED at once "
                        f"(default {s.max_concurrent_identify}; with --max-streams, keep it below --workers)")
    p.add_argument("--stream-idle-seconds", type=positive_float, default=s.stream_idle_seconds,
                   help=f"end a stream that sends nothing this long (default {s.stream_idle_seconds:g})")
    p.add_argument("--batching", type=on_off, default=d.batching,
                   help=f"micro-batch embedding across concurrent requests: on|off "
                        f"(default {'on' if d.batching else 'off'})")
    p.add_argument("--batch-wait-ms", type=float, default=b.max_wait_ms,
                   help=f"how long a batch waits for more requests (default {b.max_wait_ms} ms)")
    p.add_argument("--threshold", type=float, default=None,
                   help="override the calibrated no-match threshold")
    p.add_argument("--tempo-views", type=parse_tempo_rates, default=d.query_tempo_rates,
                   help="comma list of the tempo views each query is matched in (how many times longer "
                        f"each plays; default {','.join(map(str, d.query_tempo_rates))}; 1 = as sung, "
                        "a third of the embedding work)")


def server_config_from_args(args: argparse.Namespace, **overrides):
    from serving.batching import BatchingConfig
    from serving.server import ServerConfig
    from serving.servicer import ServicerConfig

    d = ServerConfig()
    return replace(
        d,
        model_dir=args.model,
        index_dir=args.index,
        workers=args.workers,
        servicer=replace(ServicerConfig(), max_audio_bytes=args.max_audio_bytes,
                         max_concurrent_streams=args.max_streams, max_concurrent_identify=args.max_identify,
                         stream_idle_seconds=args.stream_idle_seconds),
        batching=args.batching,
        batch=replace(BatchingConfig(), max_wait_ms=args.batch_wait_ms),
        no_match_threshold=args.threshold,
        query_tempo_rates=args.tempo_views,
        index_backend=getattr(args, "backend", "scann"), milvus_uri=getattr(args, "uri", None),
        milvus_collection=getattr(args, "collection", d.milvus_collection),
        milvus_search_params=getattr(args, "milvus_search_params", None),
        **overrides,
    )


def _register_serve(subparsers) -> None:
    from serving.server import AUTH_TOKEN_ENV, DEFAULT_PORT, ServerConfig

    d = ServerConfig()
    p = subparsers.add_parser("serve", help="run the Recognizer gRPC server", allow_abbrev=False,
                              description="Serve Identify/StreamIdentify over gRPC (health + reflection on).")
    add_server_arguments(p, model_required=True)
    p.add_argument("--host", default=d.host, help=f"listen address (default {d.host}: this machine only; "
                                                  "[::] or 0.0.0.0 to serve a network, with TLS and a token)")
    p.add_argument("--port", type=nonneg_int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: any free")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--auth-token-file", type=Path, default=None,
                   help=f"require 'authorization: Bearer TOKEN' with the token read from this file "
                        f"(default: ${AUTH_TOKEN_ENV} if set; never on the command line, where `ps` shows it)")
    p.add_argument("--http-port", type=nonneg_int, default=None,
                   help="also serve the page to hum into and the HTTP API (POST /v1/identify) on http://HOST:PORT/ "
                        "(same --host, token, limits and metrics; default: not served)")
    p.add_argument("--catalogue", type=Path, default=None,
                   help="the index's catalogue manifest.csv: answers can then show each master's melody "
                        "(include_pitch) and the page can play the masters")
    p.add_argument("--metrics-port", type=nonneg_int, default=None,
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (same --host; default: not served)")
    p.add_argument("--index-mmap", action="store_true",
                   help="memory-map the index's embeddings instead of reading them into memory (for indexes "
                        "too big to copy; then replace the index only by renaming a complete directory)")
    p.add_argument("--watch-index", type=float, default=d.watch_index_seconds,
                   help=f"poll the index's metadata.json every N s and swap in a new version "
                        f"(0: off; default {d.watch_index_seconds:g}); SIGHUP also reloads")
    add_processes_argument(p)
    p.set_defaults(func=run_serve)


def processes_arg(value: str) -> int | None:
    """--processes: a count >= 1, or "auto" (None: `serving.processes.serving_processes` decides)."""
    return None if value == "auto" else positive_int(value)


def add_processes_argument(p: argparse.ArgumentParser) -> None:
    from serving.processes import AUTO_MAX_PROCESSES

    p.add_argument("--processes", type=processes_arg, default="auto",
                   help="server processes (each a whole server: about 1 GB more per process; one Python process "
                        "keeps only about one core busy); with N > 1 nginx owns the port and sends each call to "
                        "the least busy one, and process i serves metrics on --metrics-port + i; default auto: "
                        "one per core (one on a single core, for a Milvus Lite file or without nginx), at most "
                        f"{AUTO_MAX_PROCESSES}")


def run_serve(args: argparse.Namespace) -> int:
    from serving.milvus_index import backend_error
    from serving.server import ServerError, create_server

    problem = backend_error(args, ("index", "--index is required (or --backend milvus --uri URI)"))
    if problem:
        print(f"earworm serve: {problem}", file=sys.stderr)
        return 2
    try:
        token = read_token(args.auth_token_file)
    except ValueError as e:
        print(f"earworm serve: {e}", file=sys.stderr)
        return 1
    config = server_config_from_args(args, host=args.host, port=args.port, tls_cert=args.tls_cert,
                                     tls_key=args.tls_key, auth_token=token,
                                     watch_index_seconds=args.watch_index, index_mmap=args.index_mmap,
                                     metrics_port=args.metrics_port, http_port=args.http_port,
                                     catalogue=args.catalogue)
    from serving.processes import serving_processes

    try:
        processes = serving_processes(args.processes, config)
    except ValueError as e:
        print(f"earworm serve: {e}", file=sys.stderr)
        return 2
    if processes > 1:
        return _run_serve_processes(config, processes, args.host)
    server = None
    try:
        server, port = create_server(config, wait=False)
        server.wait_until_ready()
    except ServerError as e:
        if server is not None:
            server.stop(0)
        print(f"earworm serve: {e}", file=sys.stderr)
        return 1
    from serving.processes import stop_on_signals

    stop = stop_on_signals(lambda: server.reload_index(force=True))
    print(f"Earworm is serving on port {port} (Ctrl-C to stop). Try:\n"
          f"  earworm identify some_hum.wav --server localhost:{port}"
          + (f"\nThe page to hum into: http://{args.host}:{server.http_port}/" if server.http_port else "")
          + (f"\nMetrics: http://{args.host}:{server.metrics_port}/metrics" if server.metrics_port else ""),
          flush=True)
    while not stop.wait(1.0):
        pass
    server.stop(grace=5.0)
    return 0


def _run_serve_processes(config, processes: int, host: str) -> int:
    """`earworm serve --processes N` (N > 1): N server processes on one port, supervised until
    SIGINT/SIGTERM; SIGHUP makes every one reload its index."""
    from serving.processes import ServerProcesses, stop_on_signals
    from serving.server import ServerError

    group = ServerProcesses(config, processes)
    stop = stop_on_signals(group.reload_index)
    try:
        group.start()
    except ServerError as e:
        print(f"earworm serve: {e}", file=sys.stderr)
        return 1
    metrics = group.metrics_ports
    print(f"Earworm is serving on port {group.port} with {processes} processes (Ctrl-C to stop). Try:\n"
          f"  earworm identify some_hum.wav --server localhost:{group.port}"
          + (f"\nThe page to hum into: http://{host}:{group.http_port}/" if group.http_port else "")
          + (f"\nMetrics, one address per process: "
             + ", ".join(f"http://{host}:{m}/metrics" for m in metrics) if metrics else ""),
          flush=True)
    code = 0
    while not stop.wait(1.0):
        try:
            group.supervise_once()
        except ServerError as e:
            print(f"earworm serve: {e}", file=sys.stderr)
            code = 1
            break
    group.stop(grace=5.0)
    return code


# --- earworm identify ------------------------------------------------------------------------
def _register_identify(subparsers) -> None:
    from serving.client import DEFAULT_TARGET, DEFAULT_TIMEOUT_S

    p = subparsers.add_parser("identify", help="identify a recording with a running server", allow_abbrev=False,
                              description="Send a recording (WAV/FLAC/Ogg/MP3/M4A/WebM) to an Earworm server.")
    p.add_argument("file", type=Path, help="the hum/whistle/singing recording")
    p.add_argument("--server", default=DEFAULT_TARGET, help=f"host:port (default {DEFAULT_TARGET})")
    p.add_argument("--top-k", type=nonneg_int, default=5, help="matches to show (default 5)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON (for scripts)")
    p.add_argument("--token-file", type=Path, default=None,
                   help="file holding the bearer token (default: $EARWORM_AUTH_TOKEN if set)")
    p.add_argument("--tls-ca", type=Path, default=None, help="CA certificate (PEM): use TLS")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    p.set_defaults(func=run_identify)


def run_identify(args: argparse.Namespace) -> int:
    from serving.client import ClientError, RecognizerClient, format_table

    try:
        token = read_token(args.token_file)
    except ValueError as e:
        print(f"earworm identify: {e}", file=sys.stderr)
        return 2
    try:
        with RecognizerClient(args.server, token=token, tls_ca=args.tls_ca, timeout=args.timeout) as client:
            result = client.identify_file(args.file, top_k=args.top_k)
    except (ClientError, OSError) as e:
        print(f"earworm identify: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_table(result))
    return 0


# --- registration ----------------------------------------------------------------------------
def register(subparsers) -> None:
    """The serving core's commands: serve, identify, calibrate, gate-check (the demo and the
    benchmarks are registered by `serving.apps.cli`)."""
    from serving import calibrate, gate_check

    _register_serve(subparsers)
    _register_identify(subparsers)
    calibrate.register(subparsers)
    gate_check.register(subparsers)
