"""The Recognizer server's metrics, kept in a `prometheus_client` registry (one per server).

Prometheus scrapes them from `earworm serve --metrics-port PORT` (`/metrics`, served by
`prometheus_client` itself: `start_metrics_http`). The same registry is read two more ways: a
one-line summary logged when the server stops, and `snapshot()` for the load and soak benchmarks.

| metric | type | labels |
|---|---|---|
| `earworm_requests_total` | counter | method, code (every finished call, refused ones included) |
| `earworm_request_latency_seconds` | histogram | method (calls the servicer worked on; not calls refused by the token check) |
| `earworm_requests_in_progress` | gauge | method (Identify calls and streams being worked on: the queue depth admission control bounds) |
| `earworm_audio_seconds_total` | counter | |
| `earworm_stage_seconds_total` | counter | stage (melody check, embed, search, pitch tracks) |
| `earworm_no_match_total` | counter | reason |
| `earworm_index_info` | info | version, model_version, tracks, windows |
| `earworm_index_reload_failing` | gauge | 1 while the newest index on disk cannot be served |
| `earworm_<name>_total` | counter | free-form counts (`increment`): index_swaps, index_reload_failures, ... |
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, start_http_server

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5, 10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10000, math.inf
)
"""Upper bounds (inclusive) of the latency histogram buckets, in milliseconds."""

OK = "OK"
PREFIX = "earworm"
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS_MS", "Metrics", "MetricsSnapshot", "start_metrics_http"]


@dataclass(frozen=True)
class MetricsSnapshot:
    """A copy of the counters at one instant."""

    uptime_s: float
    requests: dict[str, int]  # method -> count (all outcomes)
    codes: dict[str, int]  # status code name -> count (OK included)
    latency_buckets_ms: tuple[float, ...]
    latency_counts: tuple[int, ...]  # per bucket (not cumulative), same length as the bounds
    latency_sum_ms: float
    audio_seconds_sum: float
    extra: dict[str, float] = field(default_factory=dict)
    stage_ms: dict[str, float] = field(default_factory=dict)
    """Milliseconds spent per stage (melody, embed, search), summed over requests."""

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def errors(self) -> dict[str, int]:
        return {code: n for code, n in self.codes.items() if code != OK}

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    @property
    def timed(self) -> int:
        """Requests in the latency histogram."""
        return sum(self.latency_counts)

    def latency_quantile_ms(self, q: float) -> float:
        """Upper bound of the bucket holding quantile `q` (0..1); nan when nothing was recorded."""
        n = sum(self.latency_counts)
        if n == 0:
            return math.nan
        rank = q * n
        seen = 0
        for bound, count in zip(self.latency_buckets_ms, self.latency_counts):
            seen += count
            if seen >= rank and count:
                return bound
        return self.latency_buckets_ms[-1]

    def minus(self, earlier: "MetricsSnapshot") -> "MetricsSnapshot":
        """The counts recorded between `earlier` and this snapshot (for a benchmark's window)."""
        def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}

        return MetricsSnapshot(
            uptime_s=self.uptime_s - earlier.uptime_s,
            requests=diff(self.requests, earlier.requests),
            codes=diff(self.codes, earlier.codes),
            latency_buckets_ms=self.latency_buckets_ms,
            latency_counts=tuple(a - b for a, b in zip(self.latency_counts, earlier.latency_counts)),
            latency_sum_ms=self.latency_sum_ms - earlier.latency_sum_ms,
            audio_seconds_sum=self.audio_seconds_sum - earlier.audio_seconds_sum,
            extra={k: v - earlier.extra.get(k, 0.0) for k, v in self.extra.items()},
            stage_ms={k: v - earlier.stage_ms.get(k, 0.0) for k, v in self.stage_ms.items()},
        )


class Metrics:
    """A server's metrics in its own `prometheus_client` registry (thread-safe, as prometheus_client is)."""

    def __init__(self, buckets_ms: tuple[float, ...] = LATENCY_BUCKETS_MS):
        if list(buckets_ms) != sorted(buckets_ms) or buckets_ms[-1] != math.inf:
            raise ValueError("latency buckets must be increasing and end with inf")
        self._buckets_ms = tuple(float(b) for b in buckets_ms)
        self._started = time.monotonic()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(f"{PREFIX}_requests", "Finished calls by method and status code.",
                                 ["method", "code"], registry=r)
        self._latency = Histogram(f"{PREFIX}_request_latency_seconds",
                                  "Time the server spent on a call, from arrival to answer.", ["method"],
                                  buckets=[b / 1000.0 for b in self._buckets_ms], registry=r)
        self._in_progress = Gauge(f"{PREFIX}_requests_in_progress",
                                  "Identify calls and streams being worked on now.", ["method"], registry=r)
        self._audio = Counter(f"{PREFIX}_audio_seconds", "Seconds of query audio decoded.", registry=r)
        self._stages = Counter(f"{PREFIX}_stage_seconds", "Time spent in each stage of answering.", ["stage"],
                               registry=r)
        self._no_match = Counter(f"{PREFIX}_no_match", "Answers with no match, by reason.", ["reason"], registry=r)
        self._index = Info(f"{PREFIX}_index", "The index being served.", registry=r)
        self._reload_failing = Gauge(f"{PREFIX}_index_reload_failing",
                                     "1 while a newer index on disk cannot be served (the log says why).",
                                     registry=r)
        self._extra: dict[str, Counter] = {}
        self._extra_lock = threading.Lock()

    # --- recording ---------------------------------------------------------------------------
    def record(self, method: str, code: str, latency_ms: float | None, audio_seconds: float = 0.0) -> None:
        """Count one finished call. `code` is a grpc.StatusCode name ("OK", "INVALID_ARGUMENT");
        `latency_ms` None for a call refused before any work (kept out of the latency histogram)."""
        self._requests.labels(method, code).inc()
        if latency_ms is not None:
            self._latency.labels(method).observe(max(latency_ms, 0.0) / 1000.0)
        if audio_seconds:
            self._audio.inc(audio_seconds)

    def in_progress(self, method: str) -> Gauge:
        """The gauge of calls of `method` being worked on (`with metrics.in_progress(m).track_inprogress():`)."""
        return self._in_progress.labels(method)

    def stage_ms(self, stage: str, ms: float) -> None:
        if ms > 0:
            self._stages.labels(stage).inc(ms / 1000.0)

    def no_match(self, reason: str) -> None:
        self._no_match.labels(reason).inc()

    def index_served(self, version: str, model_version: str, tracks: int, windows: int) -> None:
        self._index.info({"version": str(version), "model_version": str(model_version),
                          "tracks": str(tracks), "windows": str(windows)})

    def reload_failing(self, failing: bool) -> None:
        self._reload_failing.set(1 if failing else 0)

    def increment(self, name: str, amount: float = 1.0) -> None:
        """A free-form counter (`earworm_<name>_total`: index swaps, reload failures, batches...)."""
        if not _NAME.match(name):
            raise ValueError(f"not a metric name: {name!r}")
        counter = self._extra.get(name)
        if counter is None:
            with self._extra_lock:
                counter = self._extra.get(name)
                if counter is None:
                    counter = Counter(f"{PREFIX}_{name}", f"Count of {name.replace('_', ' ')}.", registry=self.registry)
                    self._extra[name] = counter
        counter.inc(amount)

    # --- reading -----------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (`CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)

    def snapshot(self) -> MetricsSnapshot:
        requests: dict[str, int] = {}
        codes: dict[str, int] = {}
        cumulative: dict[float, float] = {}
        latency_sum = audio = 0.0
        extra: dict[str, float] = {}
        stages: dict[str, float] = {}
        extra_names = {f"{PREFIX}_{n}_total": n for n in self._extra}
        for family in self.registry.collect():
            for s in family.samples:
                if s.name == f"{PREFIX}_requests_total":
                    requests[s.labels["method"]] = requests.get(s.labels["method"], 0) + int(s.value)
                    codes[s.labels["code"]] = codes.get(s.labels["code"], 0) + int(s.value)
                elif s.name == f"{PREFIX}_request_latency_seconds_bucket":
                    le = float(s.labels["le"]) * 1000.0
                    cumulative[le] = cumulative.get(le, 0.0) + s.value
                elif s.name == f"{PREFIX}_request_latency_seconds_sum":
                    latency_sum += s.value * 1000.0
                elif s.name == f"{PREFIX}_audio_seconds_total":
                    audio = s.value
                elif s.name == f"{PREFIX}_stage_seconds_total":
                    stages[s.labels["stage"]] = s.value * 1000.0
                elif s.name in extra_names:
                    extra[extra_names[s.name]] = s.value
        counts, before = [], 0.0
        for bound in self._buckets_ms:
            c = cumulative.get(bound, before)
            counts.append(int(round(c - before)))
            before = c
        return MetricsSnapshot(
            uptime_s=time.monotonic() - self._started, requests=requests, codes=codes,
            latency_buckets_ms=self._buckets_ms, latency_counts=tuple(counts), latency_sum_ms=latency_sum,
            audio_seconds_sum=audio, extra=extra, stage_ms=stages,
        )

    def summary_line(self) -> str:
        """One human line: totals, errors by code, approximate p50/p95/p99 (bucket upper bounds)."""
        s = self.snapshot()
        errors = ", ".join(f"{k}={v}" for k, v in sorted(s.errors.items())) or "none"
        if s.timed:
            lat = (
                f"latency mean {s.latency_sum_ms / s.timed:.1f} ms, p50<={s.latency_quantile_ms(0.5):g} "
                f"p95<={s.latency_quantile_ms(0.95):g} p99<={s.latency_quantile_ms(0.99):g} ms"
            )
        else:
            lat = "no latency recorded"
        per_method = ", ".join(f"{k}={v}" for k, v in sorted(s.requests.items())) or "none"
        extra = "".join(f", {k}={v:g}" for k, v in sorted(s.extra.items()))
        return (
            f"{s.total} requests in {s.uptime_s:.0f} s ({per_method}); errors: {errors}; {lat}; "
            f"{s.audio_seconds_sum:.0f} s of audio{extra}"
        )


def start_metrics_http(metrics: Metrics, host: str, port: int):
    """Serve `/metrics` over HTTP on (host, port) from a daemon thread, with prometheus_client's own
    server. Returns the HTTP server (its `server_port` is the bound port; `shutdown()` stops it)."""
    httpd, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return httpd
