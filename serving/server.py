"""The Earworm gRPC server: Recognizer + standard health checking + reflection.

`create_server(config)` binds and starts a server (port 0 picks a free port, for tests), then loads
the exported model and the index; the health service answers NOT_SERVING until both are loaded and
their versions agree, SERVING afterwards. `earworm serve` (serving/cli.py) wraps it.

Hot index swap: `EarwormServer.reload_index()` re-reads the index directory (or the Milvus
collection, `index_backend="milvus"`: its version property) and swaps it in when its version changed (refused when it was built with another model); the server polls the index's
metadata.json every `watch_index_seconds`, and `earworm serve` also reloads on SIGHUP.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from protos.earworm.v1 import recognizer_pb2_grpc as pb_grpc
from serving.batching import BatchingConfig, DirectEmbedding, MicroBatcher
from serving.metrics import Metrics, start_metrics_http
from serving.retrieval_types import DEFAULT_QUERY_TEMPO_RATES
from serving.servicer import SERVICE_NAME, IndexSwapError, RecognizerServicer, ServicerConfig, ServingState

log = logging.getLogger(__name__)

AUTH_TOKEN_ENV = "EARWORM_AUTH_TOKEN"
MAX_QUEUED_RPCS_PER_WORKER = 8
"""Calls gRPC accepts at once (running or waiting for a thread) per worker thread; more are refused
with RESOURCE_EXHAUSTED by gRPC itself, so the wait queue is bounded."""
DEFAULT_PORT = 50051
DEFAULT_BATCHING = False
"""Micro-batching across requests is off by default because it did not pay on the 2-core machine:
`earworm bench-load --model serving/default_model --synthetic-tracks 10000 --seconds 30 --batching
on|off`, 4 clients, alternated runs: server CPU 17.4 vs 18.1 ms per request (-4 %), but throughput
37-38 vs 41-45 req/s and p50 75-77 vs 75-80 ms, i.e. no gain in what a user sees (TensorFlow's
per-window cost is nearly linear in the batch size on CPU, and two cores are already busy with
4 concurrent requests)."""

_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
"""grpcio-reflection serves only v1alpha; v1 (what grpcurl and Postman ask first) has the same
messages under another package name, so the same servicer answers both (`_add_reflection`)."""


class ServerError(RuntimeError):
    """The server cannot start or load: bad model/index, version mismatch, port in use, bad TLS."""


@dataclass(frozen=True)
class ServerConfig:
    """Everything `earworm serve` can set; defaults live here only."""

    model_dir: Path | None = None
    index_dir: Path | None = None
    host: str = "localhost"
    """Listen address. Closed by default: loopback only; "[::]" or "0.0.0.0" to serve a network
    (then with --tls-cert/--tls-key and a bearer token: README, "Deploying")."""
    port: int = DEFAULT_PORT
    metrics_port: int | None = None
    """Serve Prometheus metrics on http://host:metrics_port/metrics (None: not served; 0: any free port)."""
    http_port: int | None = None
    """Serve the page and the HTTP API (serving/http_app.py) on this port (None: not served; 0: any free)."""
    catalogue: Path | None = None
    """The catalogue manifest of the index (track_id,title,artist,path[,melody_midi]): lets answers carry
    each master's melody (include_pitch) and the page play the masters."""
    workers: int = 8
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token: str | None = None
    servicer: ServicerConfig = field(default_factory=ServicerConfig)
    batching: bool = DEFAULT_BATCHING
    batch: BatchingConfig = field(default_factory=BatchingConfig)
    index_mmap: bool = False
    """Memory-map embeddings.npy instead of reading it (`load_index`): for indexes too big to copy,
    swapped only by renaming a complete directory into place."""
    watch_index_seconds: float = 5.0
    """Poll the index's metadata.json this often and swap in a new version (0: never)."""
    no_match_threshold: float | None = None
    """Override the calibrated no-match threshold (None: the index's calibration.json)."""
    query_tempo_rates: tuple[float, ...] = DEFAULT_QUERY_TEMPO_RATES
    """Tempo views of each query (`serving.retrieval_types.RetrievalConfig.query_tempo_rates`)."""
    index_backend: str = "scann"
    """"scann": the index directory `index_dir`; "milvus": the collection `milvus_collection` at
    `milvus_uri` (serving.milvus_index), swapped when its version property changes."""
    milvus_uri: str | None = None
    milvus_collection: str = "earworm_windows"
    milvus_search_params: dict[str, Any] | None = None
    bind: str | None = None
    """A gRPC address to listen on instead of host:port: a worker behind `serving.balancer` listens on
    "unix:PATH", without TLS (the balancer ends it)."""
    reuse_port: bool = False
    """Bind the gRPC and HTTP ports with SO_REUSEPORT, so that the other processes of one `earworm
    serve --processes N` share them (`serving.processes`). Off for a server on its own: a port in use
    is then an error, not silently shared."""

    @property
    def has_index_source(self) -> bool:
        return self.milvus_uri is not None if self.index_backend == "milvus" else self.index_dir is not None

    @property
    def index_source(self) -> str:
        """Where the index comes from, for messages."""
        if self.index_backend == "milvus":
            return f"Milvus {self.milvus_uri} collection {self.milvus_collection}"
        return str(self.index_dir)

    @property
    def max_receive_bytes(self) -> int:
        """Transport limit, a bit above the audio limit so the servicer explains oversize audio."""
        limit = self.servicer.max_audio_bytes
        return limit + max(1 << 20, limit // 4)


@dataclass
class Components:
    """A loaded model + index and the retriever over them."""

    embedder: Any  # serving.embedder.Embedder (anything with .version and .embed_windows; see splits_frontend)
    index: Any  # serving.index.WindowIndex
    retriever: Any  # serving.retrieval.Retriever


Loader = Callable[[ServerConfig], Components]


def check_versions(model_version: str, index: Any, index_dir: Path | str | None = None) -> None:
    """Raise ServerError unless the index was built with `model_version`."""
    if index.metadata.model_version != model_version:
        where = f" in {index_dir}" if index_dir else ""
        raise ServerError(
            f"the index{where} (version {index.metadata.version}) was built with model "
            f"{index.metadata.model_version!r}, but the model being served is {model_version!r}. "
            "Rebuild the index with this model (earworm index) or serve the model it was built with."
        )


def load_index(index_dir: Path | str, mmap: bool = False) -> Any:
    """The index the server answers from. Its embeddings are read into memory (4 x dim bytes per
    window: 0.5 KB at dim 128, 154 MB for 300k windows) unless `mmap`: a memory-mapped file that
    something else overwrites in place (`cp` over embeddings.npy) kills the process with SIGBUS, so
    mapping is only for indexes too big to copy, and then only swapped by renaming a complete
    directory into place (what `earworm index` and `WindowIndex.save` do)."""
    from serving.index import WindowIndex

    return WindowIndex.load(index_dir, mmap=mmap)


def load_store(config: ServerConfig) -> Any:
    """The configured index: a directory (load_index) or a Milvus collection."""
    if config.index_backend == "milvus":
        from serving.milvus_index import MilvusWindowStore

        return MilvusWindowStore.open(str(config.milvus_uri), config.milvus_collection,
                                      search_params=config.milvus_search_params)
    return load_index(config.index_dir, config.index_mmap)


def read_source_version(config: ServerConfig) -> str | None:
    """The version of the configured index at its source (None when unreadable)."""
    if config.index_backend == "milvus":
        from serving.milvus_index import read_collection_version

        return read_collection_version(str(config.milvus_uri), config.milvus_collection)
    return read_index_version(config.index_dir)


def load_masters(manifest: Path) -> Any:
    """The catalogue's master melodies and audio (serving.pitch_tracks.MasterMelodies)."""
    from data_gen.manifest import ManifestError
    from serving.pitch_tracks import MasterMelodies

    try:
        return MasterMelodies(manifest)
    except (ManifestError, OSError) as e:
        raise ServerError(f"cannot read the catalogue {manifest}: {e}") from e


def load_components(config: ServerConfig) -> Components:
    """The default loader: Embedder(model_dir) + WindowIndex.load(index_dir) + Retriever."""
    from serving.embedder import Embedder, single_threaded_tensorflow
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

    if config.model_dir is None or not config.has_index_source:
        raise ServerError("both a model directory and an index (directory, or --backend milvus --uri) are needed")
    single_threaded_tensorflow()  # parallelism comes from requests and processes, not inside one request
    try:
        embedder = Embedder(config.model_dir)
        index = load_store(config)
    except Exception as e:  # ModelError, IndexLoadError, OSError: all mean "cannot start"
        raise ServerError(str(e)) from e
    check_versions(embedder.version, index, config.index_source)
    retriever = Retriever(embedder, index, RetrievalConfig(no_match_threshold=config.no_match_threshold,
                                                           query_tempo_rates=config.query_tempo_rates))
    return Components(embedder, index, retriever)


def warm_up(components: Components) -> None:
    """One silent query through the melody gate, the model and the index before reporting SERVING, so
    the first real request does not pay for TensorFlow's tracing and allocations (about a second)."""
    import numpy as np

    from data_gen import constants as C

    started = time.perf_counter()
    embedder = components.embedder
    silence = np.zeros((1, C.WINDOW_SAMPLES), np.float32)
    if getattr(embedder, "splits_frontend", False):
        emb = embedder.embed_log_power(embedder.log_power(silence))
        embedder.log_power(np.zeros(2 * C.WINDOW_SAMPLES, np.float32))  # a whole view, as queries send
    else:
        emb = embedder.embed_windows(silence)
    components.retriever.identify_embeddings(emb, np.zeros(1, np.float32), C.WINDOW_SECONDS, top_k=1)
    check_melody = getattr(components.retriever, "check_melody", None)
    if check_melody is not None:  # the melody gate's first call imports its FFTs (~0.2 s)
        check_melody(np.zeros(C.WINDOW_SAMPLES, np.float32))
    log.info("warmed up in %.0f ms", (time.perf_counter() - started) * 1000.0)


def read_index_version(index_dir: Path | str) -> str | None:
    """The `version` in an index directory's metadata.json (None when unreadable)."""
    try:
        return str(json.loads((Path(index_dir) / "metadata.json").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _AuthInterceptor(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every RPC except health and reflection. Every
    rejected call is counted (status UNAUTHENTICATED in the metrics) and logged, at most one line
    per `log_every_s` with the count since the last line."""

    def __init__(self, token: str, metrics: Metrics | None = None, log_every_s: float = 10.0):
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics
        self._log_every_s = log_every_s
        self._lock = threading.Lock()
        self._unlogged = 0
        self._latest = ""
        self._last_log = -math.inf

    def _rejected(self, method: str, peer_hint: str) -> None:
        if self._metrics is not None:
            self._metrics.record(method.rsplit("/", 1)[-1], grpc.StatusCode.UNAUTHENTICATED.name, None)
        with self._lock:
            self._unlogged += 1
            self._latest = f"{method}{peer_hint}"
            now = time.monotonic()
            if now - self._last_log < self._log_every_s:
                return
            count, self._unlogged, self._last_log = self._unlogged, 0, now
        log.warning("rejected %d call(s) without the right bearer token (latest: %s)", count, self._latest)

    def flush(self) -> None:
        """Log the rejections not logged yet (at shutdown)."""
        with self._lock:
            count, self._unlogged = self._unlogged, 0
        if count:
            log.warning("rejected %d call(s) without the right bearer token (latest: %s)", count, self._latest)

    def allows(self, given: str | bytes, method: str, peer: str = "") -> bool:
        """Whether `given` (the authorization metadata or header) carries the token; a refusal is
        counted and logged (the HTTP front door asks this too)."""
        if isinstance(given, bytes):
            given = given.decode("latin-1")
        if hmac.compare_digest(given.encode("utf-8", "replace"), self._expected):
            return True
        hint = (f" from {peer}" if peer else "") + ("" if given else ", no authorization")
        self._rejected(method, hint)
        return False

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_EXEMPT_PREFIXES):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if self.allows(given, handler_call_details.method):
            return handler
        return _deny(handler, "missing or wrong bearer token; send metadata 'authorization: Bearer <token>'")


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = dict(request_deserializer=handler.request_deserializer,
                  response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    return grpc.stream_stream_rpc_method_handler(abort, **kwargs)


class EarwormServer:
    """A started gRPC server plus what it serves; returned by `create_server`."""

    def __init__(self, config: ServerConfig, grpc_server: grpc.Server, port: int,
                 servicer: RecognizerServicer, health_servicer: health.HealthServicer, metrics: Metrics,
                 auth: "_AuthInterceptor | None" = None):
        self.config = config
        self.grpc_server = grpc_server
        self.port = port
        self.servicer = servicer
        self.health = health_servicer
        self.metrics = metrics
        self.auth = auth
        """The token check (None: no token required), shared by gRPC and HTTP."""
        self.http: Any = None
        """serving.http_app.HttpServer (config.http_port), or None."""
        self.metrics_http: Any = None
        """prometheus_client's HTTP server for /metrics (config.metrics_port), or None."""
        self.components: Components | None = None
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._stopped = threading.Event()
        self._embedding: DirectEmbedding | MicroBatcher | None = None
        self._reload_lock = threading.Lock()
        self._reload_problem: str | None = None
        self._watcher: threading.Thread | None = None

    @property
    def reload_problem(self) -> str | None:
        """"serving index X, newer Y failed: reason" while the newest index on disk cannot be
        served (metrics: earworm_index_reload_failing 1, earworm_index_reload_failures_total);
        None when all is well."""
        return self._reload_problem

    @reload_problem.setter
    def reload_problem(self, problem: str | None) -> None:
        self._reload_problem = problem
        self.metrics.reload_failing(problem is not None)

    @property
    def http_port(self) -> int | None:
        return None if self.http is None else self.http.port

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_http is None else int(self.metrics_http.server_port)

    def _index_served(self, index: Any) -> None:
        m = index.metadata
        self.metrics.index_served(m.version, m.model_version, m.num_tracks, m.num_windows)

    # --- loading -----------------------------------------------------------------------------
    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def load(self, loader: Loader) -> None:
        """Load model + index, then report SERVING. Records (and re-raises) any failure."""
        try:
            components = loader(self.config)
            if self.config.catalogue is not None:
                self.servicer.masters = load_masters(self.config.catalogue)
            check_versions(components.embedder.version, components.index, self.config.index_source)
            warm_up(components)
            # the batcher embeds what `servicer.query_features` makes: log-power windows when the model
            # splits its front-end (one spectrogram per tempo view), else raw windows
            embedder = components.embedder
            embed = embedder.embed_log_power if getattr(embedder, "splits_frontend", False) else embedder.embed_windows
            self._embedding = MicroBatcher(embed, self.config.batch) if self.config.batching else \
                DirectEmbedding(embed)
            self.servicer.attach(ServingState(components.retriever, components.index,
                                              components.embedder.version, components.embedder), self._embedding)
            self.components = components
            self._index_served(components.index)
        except BaseException as e:
            self._load_error = e
            self._ready.set()
            log.error("cannot serve: %s", e)
            raise
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._ready.set()
        log.info("serving model %s with index %s (%d tracks) on %s%s", components.embedder.version,
                 components.index.metadata.version, components.index.metadata.num_tracks,
                 self.config.bind or f"port {self.port}",
                 " (micro-batching on)" if self.config.batching else "")
        if self.config.has_index_source and self.config.watch_index_seconds > 0:
            self._watcher = threading.Thread(target=self._watch_index, name="index-watcher", daemon=True)
            self._watcher.start()

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Block until loading finished; raises ServerError if it failed or timed out."""
        if not self._ready.wait(timeout):
            raise ServerError(f"the model and index did not load within {timeout} s")
        if self._load_error is not None:
            err = self._load_error
            raise err if isinstance(err, ServerError) else ServerError(str(err))

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._load_error is None

    def embedding_stats(self) -> dict[str, float]:
        """Micro-batcher counters (batches, windows, requests); empty without batching."""
        return self._embedding.stats() if self._embedding is not None else {}

    # --- hot index swap ----------------------------------------------------------------------
    def swap_index(self, index: Any) -> None:
        """Serve `index` from now on (IndexSwapError when its model version differs)."""
        self.servicer.swap_index(index)
        self._index_served(index)
        if self.components is not None:
            self.components.index = index

    def reload_index(self, force: bool = False) -> bool:
        """Re-read config.index_dir; swap when its version changed (or `force`). True if swapped.

        Never raises: a broken or mismatched new index is logged and the old one keeps serving.
        """
        if not self.config.has_index_source or not self.ready:
            return False
        with self._reload_lock:
            state = self.servicer.state
            on_disk = read_source_version(self.config)
            if on_disk is None or (state is not None and on_disk == state.index_version and not force):
                return False
            try:
                index = load_store(self.config)
                if read_source_version(self.config) != index.version:
                    # replaced while it was being read: its files may mix two versions
                    raise IndexSwapError(f"index {on_disk} was replaced while it was being read; retrying")
                self.swap_index(index)
            except Exception as e:  # noqa: BLE001 - refused (IndexSwapError) or broken: keep the old one
                serving = state.index_version if state else "-"
                self.reload_problem = f"serving index {serving}, newer {on_disk} failed: {e}"
                self.metrics.increment("index_reload_failures")
                log.error("index reload failed (%s): %s", "refused" if isinstance(e, IndexSwapError) else "broken",
                          self.reload_problem)
                return False
            self.reload_problem = None
            return True

    def _watch_index(self) -> None:
        """Reload when the version on disk differs from the served one; a failed reload (e.g. a
        version whose files are not all written yet) is retried with backoff until it succeeds or
        the version on disk changes again."""
        interval = self.config.watch_index_seconds
        cap = max(interval, 300.0)
        delay, failed_version = interval, None
        while not self._stopped.wait(delay):
            current = read_source_version(self.config)
            state = self.servicer.state
            if current is None or state is None or current == state.index_version:
                delay, failed_version = interval, None
                if current is not None and state is not None:
                    self.reload_problem = None  # e.g. rolled back to the served version
                continue
            if current != failed_version:
                delay = interval  # a new version on disk: no backoff carried over
            log.info("index version on disk %s differs from the served %s: reloading", current, state.index_version)
            if self.reload_index():
                delay, failed_version = interval, None
            else:
                failed_version, delay = current, min(delay * 2, cap)

    # --- shutdown ----------------------------------------------------------------------------
    def stop(self, grace: float | None = 2.0) -> None:
        """Finish in-flight requests (up to `grace` s), stop, log the counters once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        if self.http is not None:
            self.http.stop()
        if self.auth is not None:
            self.auth.flush()
        if self._embedding is not None:
            self._embedding.close()
            for name, value in self._embedding.stats().items():
                self.metrics.increment(name, value)
        log.info("server stopped: %s", self.metrics.summary_line())

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ServerError("TLS needs both --tls-cert and --tls-key")
    try:
        cert, key = Path(config.tls_cert).read_bytes(), Path(config.tls_key).read_bytes()
    except OSError as e:
        raise ServerError(f"cannot read the TLS certificate or key: {e}") from e
    return grpc.ssl_server_credentials([(key, cert)])


def limit_blas_threads() -> None:
    """One BLAS thread per call in this process: every request already has a server thread of its
    own, and OpenBLAS's helper threads (numpy's matmuls, e.g. the re-ranking) spin while they wait for
    work. Measured 2026-12-04 (`earworm bench-load`, 10k tracks, 4 clients): 14.5 -> 18.1 req/s, server
    CPU 134 -> 101 ms per request."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def create_server(config: ServerConfig, loader: Loader = load_components, *,
                  wait: bool = True) -> tuple[EarwormServer, int]:
    """Bind and start the server, then load what it serves. Returns (server, bound port).

    Limits BLAS to one thread per call for the whole process (`limit_blas_threads`).
    wait=True loads before returning and raises ServerError (after stopping the server) when
    loading fails, e.g. on a model/index version mismatch. wait=False loads in a background
    thread; the health service says NOT_SERVING meanwhile; `server.wait_until_ready()` reports
    the outcome.
    """
    if config.workers < 1:
        raise ServerError(f"workers must be >= 1, got {config.workers}")
    busy = config.servicer.max_concurrent_identify + config.servicer.max_concurrent_streams
    if busy >= config.workers:
        log.warning("%d Identify + %d streams may hold all %d worker threads: health checks can then wait "
                    "(raise --workers or lower the limits)", config.servicer.max_concurrent_identify,
                    config.servicer.max_concurrent_streams, config.workers)
    limit_blas_threads()
    metrics = Metrics()
    servicer = RecognizerServicer(config.servicer, metrics)
    auth = _AuthInterceptor(config.auth_token, metrics) if config.auth_token else None
    interceptors = [auth] if auth else []
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="earworm-rpc"),
        interceptors=interceptors,
        maximum_concurrent_rpcs=MAX_QUEUED_RPCS_PER_WORKER * config.workers,  # beyond: RESOURCE_EXHAUSTED
        options=[
            ("grpc.max_receive_message_length", config.max_receive_bytes),
            ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        ],
    )
    pb_grpc.add_RecognizerServicer_to_server(servicer, grpc_server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    _add_reflection(grpc_server)
    address = config.bind or f"{config.host}:{config.port}"
    try:
        credentials = _credentials(config)
        port = (grpc_server.add_secure_port(address, credentials) if credentials
                else grpc_server.add_insecure_port(address))
    except RuntimeError as e:
        raise ServerError(f"cannot listen on {address}: {e}") from e
    if port == 0:
        raise ServerError(f"cannot listen on {address} (port in use?)")
    server = EarwormServer(config, grpc_server, port, servicer, health_servicer, metrics, auth)
    server._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    if config.metrics_port is not None:
        try:
            server.metrics_http = start_metrics_http(metrics, config.host, config.metrics_port)
        except OSError as e:
            grpc_server.stop(0)
            raise ServerError(f"cannot serve metrics on {config.host}:{config.metrics_port}: {e}") from e
        log.info("metrics on http://%s:%d/metrics", config.host, server.metrics_port)
    if config.http_port is not None:
        from serving.http_app import HttpServer

        server.http = HttpServer(server, config.host, config.http_port, reuse_port=config.reuse_port)
        try:
            server.http.start()
        except OSError as e:
            server.http = None
            if server.metrics_http is not None:
                server.metrics_http.shutdown()
            grpc_server.stop(0)
            raise ServerError(f"cannot serve HTTP on {config.host}:{config.http_port}: {e}") from e
        log.info("page and HTTP API on http://%s:%d/", config.host, server.http_port)
    grpc_server.start()
    log.info("listening on %s (port %d)%s%s; loading model and index...", address, port,
             ", TLS" if credentials else "", ", bearer token required" if config.auth_token else "")
    if wait:
        try:
            server.load(loader)
        except BaseException as e:
            server.stop(0)
            if isinstance(e, ServerError):
                raise
            raise ServerError(str(e)) from e
    else:
        threading.Thread(target=_load_quietly, args=(server, loader), name="earworm-loader",
                         daemon=True).start()
    return server, port


def _add_reflection(grpc_server: grpc.Server) -> None:
    """Server reflection, v1alpha (grpcio-reflection) and v1: the two protocols have the same
    messages, field for field, so v1's bytes are parsed with v1alpha's classes by one servicer."""
    names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME, REFLECTION_V1)
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, grpc_server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    grpc_server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),))


def _load_quietly(server: EarwormServer, loader: Loader) -> None:
    try:
        server.load(loader)
    except BaseException:  # noqa: BLE001 - recorded on the server, reported by wait_until_ready
        pass


def with_servicer(config: ServerConfig, **changes: Any) -> ServerConfig:
    """A copy of `config` with some ServicerConfig fields changed."""
    return replace(config, servicer=replace(config.servicer, **changes))
