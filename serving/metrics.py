"""Request counters and a latency histogram for the Recognizer server.

One `Metrics` object per server, shared by every handler thread (all updates take one lock; they
are a few integer additions, far cheaper than the request itself). It is read three ways: a
one-line summary logged when the server stops, `snapshot()` for the load benchmark, and
`prometheus_text()` (Prometheus text exposition format) for anyone who wants to scrape it.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5, 10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000, 10000, math.inf
)
"""Upper bounds (inclusive) of the latency histogram buckets, in milliseconds."""

OK = "OK"


@dataclass(frozen=True)
class MetricsSnapshot:
    """A consistent copy of the counters at one instant."""

    uptime_s: float
    requests: dict[str, int]  # method -> count (all outcomes)
    codes: dict[str, int]  # status code name -> count (OK included)
    latency_buckets_ms: tuple[float, ...]
    latency_counts: tuple[int, ...]  # per bucket (not cumulative), same length as the bounds
    latency_sum_ms: float
    audio_seconds_sum: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def errors(self) -> dict[str, int]:
        return {code: n for code, n in self.codes.items() if code != OK}

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

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
        )


class Metrics:
    """Thread-safe counters: requests per method, outcomes per status code, latency histogram."""

    def __init__(self, buckets_ms: tuple[float, ...] = LATENCY_BUCKETS_MS):
        if list(buckets_ms) != sorted(buckets_ms) or buckets_ms[-1] != math.inf:
            raise ValueError("latency buckets must be increasing and end with inf")
        self._buckets = tuple(float(b) for b in buckets_ms)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._requests: Counter[str] = Counter()
        self._codes: Counter[str] = Counter()
        self._latency_counts = [0] * len(self._buckets)
        self._latency_sum_ms = 0.0
        self._audio_seconds = 0.0
        self._extra: Counter[str] = Counter()

    def record(self, method: str, code: str, latency_ms: float, audio_seconds: float = 0.0) -> None:
        """Count one finished request. `code` is a grpc.StatusCode name ("OK", "INVALID_ARGUMENT")."""
        i = bisect.bisect_left(self._buckets, latency_ms)
        with self._lock:
            self._requests[method] += 1
            self._codes[code] += 1
            self._latency_counts[min(i, len(self._buckets) - 1)] += 1
            self._latency_sum_ms += latency_ms
            self._audio_seconds += audio_seconds

    def increment(self, name: str, amount: float = 1.0) -> None:
        """A free-form counter (index swaps, batches run, windows embedded...)."""
        with self._lock:
            self._extra[name] += amount

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            return MetricsSnapshot(
                uptime_s=time.monotonic() - self._started,
                requests=dict(self._requests),
                codes=dict(self._codes),
                latency_buckets_ms=self._buckets,
                latency_counts=tuple(self._latency_counts),
                latency_sum_ms=self._latency_sum_ms,
                audio_seconds_sum=self._audio_seconds,
                extra=dict(self._extra),
            )

    def summary_line(self) -> str:
        """One human line: totals, errors by code, approximate p50/p95/p99 (bucket upper bounds)."""
        s = self.snapshot()
        errors = ", ".join(f"{k}={v}" for k, v in sorted(s.errors.items())) or "none"
        if s.total:
            lat = (
                f"latency mean {s.latency_sum_ms / s.total:.1f} ms, p50<={s.latency_quantile_ms(0.5):g} "
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

    def prometheus_text(self, prefix: str = "earworm") -> str:
        """The counters in Prometheus text exposition format."""
        s = self.snapshot()
        lines = [
            f"# HELP {prefix}_requests_total Finished requests by method and status code.",
            f"# TYPE {prefix}_requests_total counter",
        ]
        # Codes are not kept per method (one server, two methods): expose both breakdowns.
        for method, n in sorted(s.requests.items()):
            lines.append(f'{prefix}_requests_total{{method="{method}"}} {n}')
        lines += [
            f"# HELP {prefix}_responses_total Finished requests by status code.",
            f"# TYPE {prefix}_responses_total counter",
        ]
        for code, n in sorted(s.codes.items()):
            lines.append(f'{prefix}_responses_total{{code="{code}"}} {n}')
        lines += [
            f"# HELP {prefix}_request_latency_ms Request latency in milliseconds.",
            f"# TYPE {prefix}_request_latency_ms histogram",
        ]
        cumulative = 0
        for bound, count in zip(s.latency_buckets_ms, s.latency_counts):
            cumulative += count
            le = "+Inf" if math.isinf(bound) else f"{bound:g}"
            lines.append(f'{prefix}_request_latency_ms_bucket{{le="{le}"}} {cumulative}')
        lines.append(f"{prefix}_request_latency_ms_sum {s.latency_sum_ms:.3f}")
        lines.append(f"{prefix}_request_latency_ms_count {cumulative}")
        lines += [
            f"# TYPE {prefix}_audio_seconds_total counter",
            f"{prefix}_audio_seconds_total {s.audio_seconds_sum:.3f}",
        ]
        for name, value in sorted(s.extra.items()):
            lines += [f"# TYPE {prefix}_{name}_total counter", f"{prefix}_{name}_total {value:g}"]
        return "\n".join(lines) + "\n"
