"""`earworm bench-soak`: a long mixed run against a server process, with hot index swaps; and
`--worst`: the server's peak memory under the worst single request of each kind.

The soak starts `earworm serve` as a separate process (`--model DIR` with `--index DIR` or
`--synthetic-tracks N`), so that a crash shows as the process exiting instead of taking the
benchmark with it, or targets a running one (`--server host:port --server-pid PID`). For
`--seconds`, `--clients` threads each send, one after the other, a request of a kind drawn from
`--mix`: hum queries (an encoded WAV, some with include_pitch), bad inputs (random bytes, truncated
WAVs, WAV headers that lie about rate, channels or size, empty or missing audio), requests over the
server's byte limit, StreamIdentify calls that send a config and half a second of audio and then go
silent (the server's `--stream-idle-seconds` must end them), and short normal streams. Every
`--swap-every` seconds a new version of the index (the same index re-saved with a new version, by
`WindowIndex.save`: a complete directory renamed into place) goes where the server watches
(`--watch-index`); a swap counts as served once a response names its version.

Each kind has the status codes a correct server may answer (a refusal such as INVALID_ARGUMENT
for bad audio, or RESOURCE_EXHAUSTED when all slots are busy, is expected); any other code, and
UNKNOWN / INTERNAL / UNAVAILABLE always, is unexpected. The exit status is 1 when the server
crashed or an unexpected code appeared.

`--worst` sends, one at a time to an idle server, the largest request of each kind the limits
allow (`data_gen.audio` MAX_NATIVE_RATE / MAX_CHANNELS, the servicer's max_audio_bytes and
max_query_seconds) and reports the server's peak RSS during each (VmHWM after
`echo 5 > /proc/PID/clear_refs`, and VmRSS sampled every few ms) against its idle RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from data_gen import constants as C
from data_gen.synth.test_signals import hum_like_audio
from serving.apps.bench_load import RssSampler

log = logging.getLogger(__name__)

OK = "OK"
BUSY = "RESOURCE_EXHAUSTED"
INVALID = "INVALID_ARGUMENT"
DEADLINE = "DEADLINE_EXCEEDED"
CLIENT_DEADLINE = "DEADLINE_EXCEEDED_CLIENT"
"""The client's own deadline passed (gRPC core's "Deadline Exceeded"): the server did not answer in
time, which no kind expects (the server's DEADLINE_EXCEEDED answers carry their own message)."""
ALWAYS_UNEXPECTED = frozenset({"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", CLIENT_DEADLINE})

SOAK_KINDS = ("good", "good_pitch", "stream_short", "stream_idle", "bad_random", "bad_truncated", "bad_header",
              "bad_empty", "oversize")
DEFAULT_MIX = {"good": 45, "good_pitch": 5, "stream_short": 10, "stream_idle": 2, "bad_random": 5,
               "bad_truncated": 5, "bad_header": 8, "bad_empty": 5, "oversize": 3}
"""Relative weights of the kinds each client draws from (`--mix good=45,oversize=3,...` overrides some)."""

WORST_KINDS = ("good", "wav_max", "wav_max_channels", "wav_header_huge", "pcm_max", "mp3_max", "flac_max",
               "pitch_max", "stream_cap", "oversize", "oversize_transport")


# --- /proc ---------------------------------------------------------------------------------
def proc_status_kb(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, ...); empty when the process is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[name] = int(parts[0])
    return out


def rss_mb(pid: int, field_name: str = "VmRSS") -> float | None:
    kb = proc_status_kb(pid).get(field_name)
    return None if kb is None else kb / 1024.0


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (`echo 5 > /proc/PID/clear_refs`, Linux >= 4.0,
    same user). False when that is not possible (then only sampling measures the peak)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _PeakSampler:
    """VmRSS of a process every `interval_s` in a thread; `peak_mb` is the largest seen."""

    def __init__(self, pid: int, interval_s: float):
        self.pid, self.interval = pid, interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            value = rss_mb(self.pid)
            if value is None:
                return
            self.peak_mb = max(self.peak_mb, value)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "_PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the server process ----------------------------------------------------------------------
@dataclass(frozen=True)
class ServerLaunch:
    """How the benchmark starts `earworm serve` (None: the server's own default)."""

    model: Path
    index: Path
    watch_index_s: float = 1.0
    stream_idle_s: float | None = None
    max_audio_bytes: int | None = None
    workers: int | None = None
    max_streams: int | None = None
    max_identify: int | None = None
    tempo_views: str | None = None
    processes: int | None = 1
    """One process by default: the soak follows that process's memory and answers (a server of N
    processes is N of them; None: the server's own default)."""

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "serving.apps.earworm", "serve", "--model", str(Path(self.model).resolve()),
                "--index", str(Path(self.index).resolve()), "--host", "127.0.0.1", "--port", "0",
                "--watch-index", f"{self.watch_index_s:g}"]
        for flag, value in (("--stream-idle-seconds", self.stream_idle_s), ("--max-audio-bytes", self.max_audio_bytes),
                            ("--workers", self.workers), ("--max-streams", self.max_streams),
                            ("--max-identify", self.max_identify), ("--tempo-views", self.tempo_views),
                            ("--processes", self.processes)):
            if value is not None:
                argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        return argv


class ServerError(RuntimeError):
    """The server process did not start (its log tail is in the message)."""


class ServerProcess:
    """`earworm serve` in a child process; stdout and stderr go to `log_path`."""

    _PORT_LINE = re.compile(r"serving on port (\d+)")

    def __init__(self, launch: ServerLaunch, log_path: Path):
        self.launch = launch
        self.log_path = log_path
        env = dict(os.environ)
        env.pop("EARWORM_AUTH_TOKEN", None)  # the benchmark's own local server takes no token
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(launch.argv(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        self.port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def returncode(self) -> int | None:
        return self.proc.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = 300.0) -> "ServerProcess":
        """Wait for the port line, then for health SERVING; ServerError if the process exits first."""
        deadline = time.monotonic() + timeout_s
        while self.port is None:
            if self.returncode() is not None:
                raise ServerError(f"the server exited with status {self.returncode()} while starting:\n"
                                  f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"the server did not start within {timeout_s:g} s:\n{self.log_tail()}")
            found = self._PORT_LINE.search(self.log_text())
            if found:
                self.port = int(found.group(1))
            else:
                time.sleep(0.2)
        wait_serving(self.target, max(1.0, deadline - time.monotonic()), alive=lambda: self.returncode() is None)
        return self

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; the exit status (negative: killed by that signal)."""
        if self.returncode() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.returncode()


def wait_serving(target: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll the standard health service until it answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if not alive():
                raise ServerError("the server exited before it was SERVING")
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"the server at {target} was not SERVING within {timeout_s:g} s")
            time.sleep(0.2)


def _pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- payloads --------------------------------------------------------------------------------
def wav_header(rate: int, channels: int, bits: int, data_bytes: int, *, riff_bytes: int | None = None,
               format_tag: int = 1, block_align: int | None = None) -> bytes:
    """A 44-byte RIFF/WAVE header saying whatever it is told (sizes and rates wrap at 32 bits)."""
    align = channels * bits // 8 if block_align is None else block_align
    fmt = struct.pack("<HHIIHH", format_tag & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF,
                      (rate * max(align, 0)) & 0xFFFFFFFF, align & 0xFFFF, bits & 0xFFFF)
    riff = 4 + 8 + len(fmt) + 8 + data_bytes if riff_bytes is None else riff_bytes
    return (b"RIFF" + struct.pack("<I", riff & 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", data_bytes & 0xFFFFFFFF))


def _s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@dataclass(frozen=True)
class _Payload:
    variant: str
    expected: frozenset[str]
    """Codes a correct server may answer (besides RESOURCE_EXHAUSTED when it is busy)."""
    request: object  # pb.IdentifyRequest


def bad_payloads(seed: int) -> dict[str, list[_Payload]]:
    """The bad inputs of the soak, by kind, each with the codes it may get."""
    from data_gen.audio import encode_audio
    from protos.earworm.v1 import recognizer_pb2 as pb

    def enc(data: bytes) -> object:
        return pb.IdentifyRequest(audio=pb.Audio(encoded=data))

    rng = np.random.default_rng(seed)
    hum = hum_like_audio(3.0, seed + 1000)
    wav = encode_audio(hum)
    body = _s16(hum)
    refused = frozenset({INVALID})
    either = frozenset({INVALID, OK})
    out: dict[str, list[_Payload]] = {}
    out["bad_random"] = [_Payload(f"random {n} bytes", refused, enc(rng.integers(0, 256, n, np.uint8).tobytes()))
                         for n in (1, 16, 200, 4096, 65_536, 1 << 20)]
    # A cut inside the header cannot decode; one inside the data leaves a shorter recording, which
    # is too short (INVALID_ARGUMENT) or still long enough (OK).
    out["bad_truncated"] = [_Payload(f"WAV cut at {cut} of {len(wav)} bytes", refused if cut <= 44 else either,
                                     enc(wav[:cut])) for cut in (4, 12, 30, 44, len(wav) // 3, len(wav) * 3 // 4)]
    lies = [("rate 1 Hz", wav_header(1, 1, 16, len(body)), refused),
            ("rate 4 GHz", wav_header(0xFFFFFFFF, 1, 16, len(body)), refused),
            ("rate 0", wav_header(0, 1, 16, len(body)), refused),
            ("rate 3 kHz", wav_header(3_000, 1, 16, len(body)), refused),
            ("rate 1 MHz", wav_header(1_000_000, 1, 16, len(body)), refused),
            ("0 channels", wav_header(16_000, 0, 16, len(body)), refused),
            ("65535 channels", wav_header(16_000, 65_535, 16, len(body)), refused),
            ("17 channels", wav_header(16_000, 17, 16, len(body)), refused),
            ("0 bits", wav_header(16_000, 1, 0, len(body)), refused),
            ("unknown format tag", wav_header(16_000, 1, 16, len(body), format_tag=0x1234), refused),
            # Sizes that lie: readers clamp them to the bytes present (OK) or refuse (INVALID_ARGUMENT).
            ("data size 4 GB", wav_header(16_000, 1, 16, 0xFFFFFFFF), either),
            ("RIFF size 0", wav_header(16_000, 1, 16, len(body), riff_bytes=0), either),
            ("block align 0", wav_header(16_000, 1, 16, len(body), block_align=0), either),
            ("384 kHz x 16 ch claiming 4 GB", wav_header(384_000, 16, 16, 0xFFFFFFF0), either)]
    out["bad_header"] = [_Payload(name, expected, enc(header + body)) for name, header, expected in lies]
    out["bad_empty"] = [
        _Payload("0 bytes", refused, enc(b"")),
        _Payload("no audio", refused, pb.IdentifyRequest()),
        _Payload("PCM without data", refused, pb.IdentifyRequest(audio=pb.Audio(pcm=pb.RawPcm(
            sample_rate_hz=16_000, encoding=pb.PCM_ENCODING_S16LE)))),
        _Payload("PCM at 0 Hz", refused, pb.IdentifyRequest(audio=pb.Audio(pcm=pb.RawPcm(
            data=body, sample_rate_hz=0, encoding=pb.PCM_ENCODING_S16LE)))),
        _Payload("PCM odd byte count", refused, pb.IdentifyRequest(audio=pb.Audio(pcm=pb.RawPcm(
            data=body[:-1], sample_rate_hz=16_000, encoding=pb.PCM_ENCODING_S16LE)))),
        _Payload("top_k 1000", refused, pb.IdentifyRequest(audio=pb.Audio(encoded=wav), top_k=1000)),
    ]
    return out


def transport_limit(max_audio_bytes: int) -> int:
    """The server's gRPC receive limit for this audio limit (`ServerConfig.max_receive_bytes`)."""
    return max_audio_bytes + max(1 << 20, max_audio_bytes // 4)


# --- the soak ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SoakConfig:
    clients: int = 16
    seconds: float = 300.0
    swap_every_s: float = 20.0
    """Seconds between index swaps (0: none)."""
    query_seconds: float = 10.0
    stream_seconds: float = 5.0
    distinct_queries: int = 8
    mix: tuple[tuple[str, float], ...] = tuple(DEFAULT_MIX.items())
    max_audio_bytes: int = 16 * 1024 * 1024
    """The server's limit (ServicerConfig.max_audio_bytes): oversize requests go above it."""
    stream_idle_s: float = 3.0
    """The server's --stream-idle-seconds: idle streams should end this long after their last chunk."""
    watch_index_s: float = 1.0
    timeout_s: float = 60.0
    rss_interval_s: float = 0.2
    busy_backoff_s: tuple[float, float] = (0.02, 0.1)
    """After RESOURCE_EXHAUSTED a client waits a random time in this range, as a real one would."""
    seed: int = 0


@dataclass
class _Call:
    kind: str
    variant: str
    code: str
    ms: float
    details: str = ""
    versions: tuple[str, ...] = ()
    expected: frozenset[str] = frozenset()
    idle_ended_s: float | None = None


class _Tally:
    """One client's counts (merged at the end; no locks in the hot loop)."""

    def __init__(self) -> None:
        self.codes: dict[str, Counter] = defaultdict(Counter)
        self.unexpected: dict[str, Counter] = defaultdict(Counter)
        self.latency_ms: dict[str, list[float]] = defaultdict(list)
        self.examples: list[dict] = []
        self.first_seen: dict[str, float] = {}
        self.idle_ended_s: list[float] = []

    def add(self, call: _Call, now: float) -> bool:
        """Count `call`; True when its code was unexpected."""
        self.codes[call.kind][call.code] += 1
        if call.code == OK:
            self.latency_ms[call.kind].append(call.ms)
        for v in call.versions:
            if v not in self.first_seen:
                self.first_seen[v] = now
        if call.idle_ended_s is not None:
            self.idle_ended_s.append(call.idle_ended_s)
        bad = call.code in ALWAYS_UNEXPECTED or call.code not in call.expected | {BUSY}
        if bad:
            self.unexpected[call.kind][call.code] += 1
            if len(self.examples) < 20:
                self.examples.append({"kind": call.kind, "variant": call.variant, "code": call.code,
                                      "details": call.details[:300]})
        return bad


def _code_of(error) -> tuple[str, str]:
    import grpc

    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    name = code.name if isinstance(code, grpc.StatusCode) else "CLIENT"
    if name == DEADLINE and details.strip().lower() == "deadline exceeded":
        name = CLIENT_DEADLINE
    return name, details


class _SoakClient:
    """One client thread's channel and the requests it draws."""

    def __init__(self, target: str, token: str | None, config: SoakConfig, shared: dict, k: int):
        import grpc

        from protos.earworm.v1 import recognizer_pb2_grpc as pb_grpc

        self.config = config
        self.shared = shared
        self.rng = random.Random(config.seed * 1000 + k)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel = grpc.insecure_channel(target, [("grpc.max_send_message_length", -1),
                                                      ("grpc.max_receive_message_length", 16 << 20)])
        self.stub = pb_grpc.RecognizerStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def identify(self, kind: str, variant: str, request, expected: frozenset[str]) -> _Call:
        import grpc

        t0 = time.perf_counter()
        try:
            response = self.stub.Identify(request, timeout=self.config.timeout_s, metadata=self.metadata)
            return _Call(kind, variant, OK, (time.perf_counter() - t0) * 1000.0, versions=(response.index_version,),
                         expected=expected)
        except grpc.RpcError as e:
            code, details = _code_of(e)
            return _Call(kind, variant, code, (time.perf_counter() - t0) * 1000.0, details, expected=expected)

    def stream(self, kind: str, variant: str, messages: Callable[[threading.Event], Iterator],
               timeout_s: float, expected: frozenset[str]) -> tuple[_Call, float | None]:
        """Run one StreamIdentify; also returns when the last message was sent (perf_counter)."""
        import grpc

        done = threading.Event()
        sent_last = [None]

        def requests():
            for message in messages(done):
                yield message
                sent_last[0] = time.perf_counter()

        versions: list[str] = []
        t0 = time.perf_counter()
        try:
            for response in self.stub.StreamIdentify(requests(), timeout=timeout_s, metadata=self.metadata):
                versions.append(response.result.index_version)
            code, details = OK, ""
        except grpc.RpcError as e:
            code, details = _code_of(e)
        finally:
            done.set()  # releases a request iterator still waiting
        call = _Call(kind, variant, code, (time.perf_counter() - t0) * 1000.0, details,
                     tuple(dict.fromkeys(versions)), expected)
        return call, sent_last[0]

    def one(self, kind: str) -> _Call:
        from protos.earworm.v1 import recognizer_pb2 as pb

        s, rng = self.shared, self.rng
        if kind in ("good", "good_pitch"):
            i = rng.randrange(len(s["queries"]))
            request = pb.IdentifyRequest(audio=pb.Audio(encoded=s["queries"][i]), include_pitch=kind == "good_pitch")
            return self.identify(kind, f"{self.config.query_seconds:g} s hum WAV", request, frozenset({OK}))
        if kind in s["bad"]:
            p = rng.choice(s["bad"][kind])
            return self.identify(kind, p.variant, p.request, p.expected)
        if kind == "oversize":
            size = rng.choice(s["oversize_sizes"])
            request = pb.IdentifyRequest(audio=pb.Audio(encoded=s["oversize_bytes"][:size]))
            return self.identify(kind, f"{size:,} bytes", request, frozenset({BUSY}))
        if kind == "stream_short":
            audio = s["stream_audio"][rng.randrange(len(s["stream_audio"]))]

            def short(_done):
                yield pb.StreamIdentifyRequest(config=pb.StreamConfig(
                    sample_rate_hz=C.SAMPLE_RATE, channels=1, encoding=pb.PCM_ENCODING_F32LE))
                step = C.SAMPLE_RATE // 2
                for start in range(0, audio.shape[0], step):
                    yield pb.StreamIdentifyRequest(audio_chunk=audio[start : start + step].tobytes())

            call, _ = self.stream(kind, f"{self.config.stream_seconds:g} s in 0.5 s chunks", short,
                                  self.config.timeout_s, frozenset({OK}))
            return call
        if kind == "stream_idle":
            chunk = s["stream_audio"][0][: C.SAMPLE_RATE // 2].tobytes()
            idle = self.config.stream_idle_s

            def idle_stream(done):
                yield pb.StreamIdentifyRequest(config=pb.StreamConfig(
                    sample_rate_hz=C.SAMPLE_RATE, channels=1, encoding=pb.PCM_ENCODING_F32LE))
                yield pb.StreamIdentifyRequest(audio_chunk=chunk)
                done.wait(idle + 30.0)  # silent until the call ends

            call, last = self.stream(kind, "0.5 s then silence", idle_stream, idle + 15.0, frozenset({DEADLINE}))
            if call.code == DEADLINE and "no audio" not in call.details:
                call.code = f"{DEADLINE}(other)"  # ended by a deadline, but not the idle limit
            if call.code == DEADLINE and last is not None:
                call.idle_ended_s = time.perf_counter() - last
            return call
        raise ValueError(f"unknown kind {kind!r}")


@dataclass
class SoakResult:
    target: str
    config: dict
    seconds: float
    requests: int
    throughput_rps: float
    by_kind: dict[str, dict]
    unexpected: dict[str, dict[str, int]]
    unexpected_total: int
    unexpected_examples: list[dict]
    good_latency_ms: dict[str, float]
    rss_mb: dict[str, float | None] = field(default_factory=dict)
    swaps: dict[str, object] = field(default_factory=dict)
    idle_streams_ended_s: dict[str, float] = field(default_factory=dict)
    crashes: int = 0
    crash: dict | None = None
    server_log: dict[str, object] = field(default_factory=dict)
    ok: bool = True


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


class IndexSwapper:
    """Writes new versions of one index into the directory a server watches: the index is loaded
    once, then re-saved with a new version each time (`WindowIndex.save`: a complete sibling
    directory renamed into place, never a file overwritten in place)."""

    def __init__(self, source_dir: Path, live_dir: Path):
        from serving.index import WindowIndex

        self.index = WindowIndex.load(source_dir, mmap=False)
        self.live_dir = Path(live_dir)
        self.base_version = self.index.metadata.version
        self.done: list[dict] = []

    def swap(self) -> str:
        import datetime as dt

        n = len(self.done) + 1
        version = f"{self.base_version}-soak{n:03d}-{uuid.uuid4().hex[:6]}"
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.index.metadata = replace(self.index.metadata, version=version, created=created)
        t0 = time.perf_counter()
        self.index.save(self.live_dir)
        self.done.append({"version": version, "at": time.perf_counter(), "save_s": time.perf_counter() - t0})
        return version


def run_soak(target: str, config: SoakConfig, *, token: str | None = None, server_pid: int | None = None,
             server: ServerProcess | None = None, swapper: IndexSwapper | None = None) -> SoakResult:
    """The mixed closed-loop run with index swaps; never raises because the server died (that is
    reported as a crash). `server` (started here) or `server_pid` (running elsewhere) is watched."""
    from data_gen.audio import encode_audio

    if server is not None:
        server_pid = server.pid
    mix = [(k, float(w)) for k, w in config.mix if w > 0]
    if not mix:
        raise ValueError("the mix has no kind with a positive weight")
    kinds, weights = [k for k, _ in mix], [w for _, w in mix]
    big = transport_limit(config.max_audio_bytes) + 1
    shared = {
        "queries": [encode_audio(hum_like_audio(config.query_seconds, config.seed + i))
                    for i in range(config.distinct_queries)],
        "stream_audio": [hum_like_audio(config.stream_seconds, config.seed + 500 + i).astype("<f4")
                         for i in range(4)],
        "bad": bad_payloads(config.seed),
        "oversize_bytes": b"RIFF" + bytes(big - 4),
        "oversize_sizes": [config.max_audio_bytes + 1, big],  # refused by the servicer / by gRPC itself
    }
    stop = threading.Event()
    crash: dict | None = None
    rss: dict[str, float | None] = {}
    if server_pid:
        rss["idle_start"] = rss_mb(server_pid)
        rss["hwm_reset"] = reset_peak_rss(server_pid)

    def crashed() -> dict | None:
        if server is not None and server.returncode() is not None:
            rc = server.returncode()
            return {"returncode": rc, "signal": signal.Signals(-rc).name if rc < 0 and -rc in
                    signal.valid_signals() else None, "log_tail": server.log_tail(40)}
        if server is None and server_pid and not _pid_alive(server_pid):
            return {"returncode": None, "signal": None, "log_tail": ""}
        return None

    tallies = [_Tally() for _ in range(config.clients)]
    clients = [_SoakClient(target, token, config, shared, k) for k in range(config.clients)]
    started = time.perf_counter()
    end = started + config.seconds

    def client_loop(k: int) -> None:
        client, tally = clients[k], tallies[k]
        while not stop.is_set() and time.perf_counter() < end:
            kind = client.rng.choices(kinds, weights)[0]
            try:
                call = client.one(kind)
            except Exception as e:  # noqa: BLE001 - a bug of the client must show, not hang the run
                call = _Call(kind, "client error", "CLIENT", 0.0, f"{type(e).__name__}: {e}")
            tally.add(call, time.perf_counter())
            if call.code == BUSY and kind != "oversize":
                stop.wait(client.rng.uniform(*config.busy_backoff_s))

    def swap_loop() -> None:
        assert swapper is not None
        next_at = started + config.swap_every_s
        while not stop.wait(max(0.0, next_at - time.perf_counter())):
            if time.perf_counter() >= end:
                return
            try:
                swapper.swap()
            except Exception as e:  # noqa: BLE001 - reported; the soak goes on
                log.error("index swap failed: %s", e)
                swap_errors.append(f"{type(e).__name__}: {e}")
            next_at += config.swap_every_s

    swap_errors: list[str] = []
    sampler = RssSampler(server_pid, config.rss_interval_s) if server_pid else None
    threads = [threading.Thread(target=client_loop, args=(k,), name=f"soak-client-{k}", daemon=True)
               for k in range(config.clients)]
    if swapper is not None and config.swap_every_s > 0:
        threads.append(threading.Thread(target=swap_loop, name="soak-swapper", daemon=True))
    if sampler:
        sampler.__enter__()
    for t in threads:
        t.start()
    try:
        while time.perf_counter() < end and not stop.is_set():
            crash = crash or crashed()
            if crash:
                stop.set()
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop.set()
    if not stop.is_set():
        stop.set()
    join_by = time.perf_counter() + max(config.timeout_s, config.stream_idle_s + 15.0) + 15.0
    for t in threads:
        t.join(max(0.1, join_by - time.perf_counter()))
    elapsed = time.perf_counter() - started
    crash = crash or crashed()
    if sampler:
        sampler.__exit__(None, None, None)
    if server_pid and not crash:
        rss["hwm"] = rss_mb(server_pid, "VmHWM")
    if sampler and sampler.samples:
        summary = sampler.summary_mb()
        rss.update({f"run_{k}": v for k, v in summary.items()})

    # Merge the clients' counts.
    codes: dict[str, Counter] = defaultdict(Counter)
    unexpected: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    first_seen: dict[str, float] = {}
    examples: list[dict] = []
    idle_ended: list[float] = []
    for t in tallies:
        for k, c in t.codes.items():
            codes[k].update(c)
        for k, c in t.unexpected.items():
            unexpected[k].update(c)
        for k, v in t.latency_ms.items():
            latencies[k].extend(v)
        for v, when in t.first_seen.items():
            first_seen[v] = min(when, first_seen.get(v, when))
        examples.extend(t.examples)
        idle_ended.extend(t.idle_ended_s)
    for c in clients:
        c.close()

    # The last version written may not have been asked about yet: probe until the server serves it.
    swaps: dict[str, object] = {}
    if swapper is not None:
        last = swapper.done[-1]["version"] if swapper.done else None
        if last and last not in first_seen and not crash:
            first_seen.update(_probe_versions(target, token, shared["queries"][0], last,
                                              deadline_s=max(10.0, 6 * config.watch_index_s)))
        served = [d for d in swapper.done if d["version"] in first_seen]
        lags = [first_seen[d["version"]] - d["at"] for d in served]
        swaps = {"done": len(swapper.done), "served": len(served), "errors": swap_errors,
                 "lag_s": {k: round(v, 3) for k, v in _percentiles(lags).items() if k in ("p50", "max")},
                 "save_s_max": round(max((d["save_s"] for d in swapper.done), default=0.0), 3),
                 "versions_seen": len(first_seen)}
    total = sum(sum(c.values()) for c in codes.values())
    by_kind = {k: {"requests": sum(codes[k].values()), "codes": dict(codes[k]),
                   "latency_ms": {q: round(v, 1) for q, v in _percentiles(latencies[k]).items()
                                  if q in ("p50", "p99", "max")}}
               for k in sorted(codes, key=lambda k: SOAK_KINDS.index(k) if k in SOAK_KINDS else 99)}
    unexpected_total = sum(sum(c.values()) for c in unexpected.values())
    server_log: dict[str, object] = {}
    if server is not None:
        text = server.log_text()
        server_log = {"path": str(server.log_path),
                      "now_serving_lines": text.count("now serving index"),
                      "reload_failures": text.count("index reload failed"),
                      "tracebacks": text.count("Traceback (most recent call last)"),
                      "unexpected_failures": len(re.findall(r"failed unexpectedly", text))}
    result = SoakResult(
        target=target, config=_config_dict(config), seconds=round(elapsed, 2), requests=total,
        throughput_rps=round(total / max(elapsed, 1e-9), 2), by_kind=by_kind,
        unexpected={k: dict(c) for k, c in unexpected.items() if c}, unexpected_total=unexpected_total,
        unexpected_examples=examples[:20], good_latency_ms={k: round(v, 1) for k, v in
                                                          _percentiles(latencies["good"]).items()},
        rss_mb={k: (round(v, 1) if isinstance(v, float) else v) for k, v in rss.items()}, swaps=swaps,
        idle_streams_ended_s={k: round(v, 2) for k, v in _percentiles(idle_ended).items()
                              if k in ("n", "p50", "mean", "max")},
        crashes=1 if crash else 0, crash=crash, server_log=server_log)
    result.ok = not crash and unexpected_total == 0
    return result


def _probe_versions(target: str, token: str | None, query: bytes, wanted: str, deadline_s: float) -> dict[str, float]:
    """Good queries every 0.5 s until a response names `wanted` (or `deadline_s` passes)."""
    import grpc

    from protos.earworm.v1 import recognizer_pb2 as pb
    from protos.earworm.v1 import recognizer_pb2_grpc as pb_grpc

    seen: dict[str, float] = {}
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    until = time.perf_counter() + deadline_s
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.RecognizerStub(channel)
        while time.perf_counter() < until:
            try:
                version = stub.Identify(pb.IdentifyRequest(audio=pb.Audio(encoded=query)), timeout=30.0,
                                        metadata=metadata).index_version
                seen.setdefault(version, time.perf_counter())
                if version == wanted:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    return seen


def _config_dict(config) -> dict:
    d = asdict(config)
    if "mix" in d:
        d["mix"] = dict(config.mix)
    return d


def format_soak(result: SoakResult) -> str:
    c = result.config
    lines = [f"soak: {c['clients']} clients x {result.seconds:.1f} s against {result.target}, "
             f"swap every {c['swap_every_s']:g} s: {result.requests} requests ({result.throughput_rps:.1f}/s)"]
    lines.append(f"{'kind':<14} {'requests':>8}  {'p50 ms':>7} {'p99 ms':>7}  codes")
    for kind, k in result.by_kind.items():
        lat = k["latency_ms"]
        codes = ", ".join(f"{code}={n}" for code, n in sorted(k["codes"].items(), key=lambda x: -x[1]))
        p50 = f"{lat['p50']:.0f}" if lat else "-"
        p99 = f"{lat['p99']:.0f}" if lat else "-"
        lines.append(f"{kind:<14} {k['requests']:>8}  {p50:>7} {p99:>7}  {codes}")
    if result.unexpected_total:
        lines.append(f"UNEXPECTED codes: {result.unexpected_total}: " + "; ".join(
            f"{kind}: " + ", ".join(f"{code}={n}" for code, n in codes.items())
            for kind, codes in result.unexpected.items()))
        for e in result.unexpected_examples[:5]:
            lines.append(f"  e.g. {e['kind']} ({e['variant']}): {e['code']} {e['details']}")
    else:
        lines.append("unexpected codes: none")
    g = result.good_latency_ms
    if g:
        lines.append(f"good queries answered: {g['n']}, latency ms p50 {g['p50']:.0f}, p95 {g['p95']:.0f}, "
                     f"p99 {g['p99']:.0f}, max {g['max']:.0f}")
    r = result.rss_mb
    if r:
        def f(key):
            v = r.get(key)
            return "-" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{v:.0f}"
        lines.append(f"server RSS MB: idle at start {f('idle_start')}; over the run start {f('run_start')}, "
                     f"25% {f('run_25%')}, 50% {f('run_50%')}, 75% {f('run_75%')}, end {f('run_end')}, "
                     f"sampled max {f('run_max')}; peak (VmHWM) {f('hwm')}"
                     + ("" if r.get("hwm_reset") else " (not reset: since the server started)"))
    s = result.swaps
    if s:
        lag = s.get("lag_s") or {}
        lines.append(f"index swaps: {s['done']} done, {s['served']} served"
                     + (f" (first answer with the new version after p50 {lag['p50']:.1f} s, max {lag['max']:.1f} s)"
                        if lag else "") + (f"; {len(s['errors'])} failed to write" if s["errors"] else ""))
    if result.idle_streams_ended_s:
        i = result.idle_streams_ended_s
        lines.append(f"idle streams ended by the server {i['mean']:.1f} s (mean; max {i['max']:.1f}) after their "
                     f"last chunk ({i['n']} streams)")
    if result.server_log:
        sl = result.server_log
        lines.append(f"server log: {sl['now_serving_lines']} 'now serving index', {sl['reload_failures']} reload "
                     f"failures, {sl['tracebacks']} tracebacks")
    lines.append(f"crashes: {result.crashes}")
    if result.crash:
        lines.append(f"  the server exited with status {result.crash['returncode']} "
                     f"({result.crash.get('signal') or 'no signal'}); its log ends:\n{result.crash['log_tail']}")
    return "\n".join(lines)


# --- the worst single requests -----------------------------------------------------------------
@dataclass(frozen=True)
class _Worst:
    what: str
    expected: frozenset[str]
    send: Callable[[object, tuple, float], tuple[str, str]]
    """send(stub, metadata, timeout) -> (code name, details)."""


def _identify_sender(request):
    def send(stub, metadata, timeout):
        import grpc

        try:
            stub.Identify(request, timeout=timeout, metadata=metadata)
            return OK, ""
        except grpc.RpcError as e:
            return _code_of(e)

    return send


def worst_request(kind: str, max_audio_bytes: int, max_seconds: float = C.MAX_QUERY_SECONDS,
                  seed: int = 0) -> _Worst:
    """The largest request of `kind` that the limits allow (built now: some are 20 MB)."""
    from data_gen.audio import MAX_CHANNELS, MAX_NATIVE_RATE, encode_audio, resample
    from protos.earworm.v1 import recognizer_pb2 as pb

    rate = MAX_NATIVE_RATE

    def hum_at(seconds: float, at_rate: int) -> np.ndarray:
        return resample(hum_like_audio(seconds, seed), C.SAMPLE_RATE, at_rate)[: int(seconds * at_rate)]

    def encoded(data: bytes):
        return pb.IdentifyRequest(audio=pb.Audio(encoded=data))

    ok = frozenset({OK})
    if kind == "good":
        return _Worst("10 s hum, 16 kHz 16-bit WAV (the baseline)", ok,
                      _identify_sender(encoded(encode_audio(hum_like_audio(10.0, seed)))))
    if kind == "wav_max":
        # 8-bit mono holds the most samples per byte: the most decoded audio a WAV under the cap can give.
        frames = min(max_audio_bytes - 1024, int(max_seconds * rate) - rate // 10)
        data = _encode(hum_at(frames / rate, rate), rate, "WAV", "PCM_U8")
        return _Worst(f"WAV under the byte cap: 8-bit mono {rate // 1000} kHz, {frames / rate:.1f} s, "
                      f"{len(data) / 2**20:.1f} MiB", ok, _identify_sender(encoded(data)))
    if kind == "wav_max_channels":
        frames = min((max_audio_bytes - 1024) // MAX_CHANNELS, int(max_seconds * rate) - rate // 10)
        mono = hum_at(frames / rate, rate)
        data = _encode(np.repeat(mono[:, None], MAX_CHANNELS, axis=1), rate, "WAV", "PCM_U8")
        return _Worst(f"WAV, {MAX_CHANNELS} channels 8-bit {rate // 1000} kHz, {frames / rate:.1f} s, "
                      f"{len(data) / 2**20:.1f} MiB", ok, _identify_sender(encoded(data)))
    if kind == "wav_header_huge":
        body = _s16(hum_at((max_audio_bytes - 44) // 2 / rate, rate))
        data = wav_header(rate, 1, 16, 0xFFFFFFFF) + body
        return _Worst(f"WAV header claiming 4 GiB of data ({0xFFFFFFFF / 2 / rate / 3600:.1f} h at {rate // 1000} kHz), "
                      f"{len(data) / 2**20:.1f} MiB sent", frozenset({OK, INVALID}), _identify_sender(encoded(data)))
    if kind == "pcm_max":
        n = min(max_audio_bytes // 2, int(max_seconds * rate) - rate // 10)
        pcm = pb.RawPcm(data=_s16(hum_at(n / rate, rate)), sample_rate_hz=rate, channels=1,
                        encoding=pb.PCM_ENCODING_S16LE)
        return _Worst(f"raw PCM s16le mono {rate // 1000} kHz, {n / rate:.1f} s, {n * 2 / 2**20:.1f} MiB", ok,
                      _identify_sender(pb.IdentifyRequest(audio=pb.Audio(pcm=pcm))))
    if kind == "mp3_max":
        seconds = max_seconds - 1.0  # the encoder's padding must not push it over the limit
        stereo = np.repeat(hum_at(seconds, 48_000)[:, None], 2, axis=1)
        data = _encode(stereo, 48_000, "MP3")
        return _Worst(f"MP3 48 kHz stereo, {seconds:g} s, {len(data) / 2**20:.1f} MiB", ok,
                      _identify_sender(encoded(data)))
    if kind == "flac_max":
        # A hum on one of 8 channels (FLAC's most), silence on the rest: compresses far below the cap
        # and decodes to the most audio a request may hold (max_seconds at 384 kHz).
        import soundfile as sf

        seconds = max_seconds - 0.5
        channels = 8
        buf = io.BytesIO()
        mono = hum_at(seconds, rate)
        with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
            block = 1 << 16
            for start in range(0, mono.shape[0], block):
                chunk = np.zeros((min(block, mono.shape[0] - start), channels), np.float32)
                chunk[:, 0] = mono[start : start + block]
                f.write(chunk)
        data = buf.getvalue()
        if len(data) > max_audio_bytes:
            raise ValueError(f"the FLAC is {len(data):,} bytes, over the {max_audio_bytes:,}-byte cap")
        return _Worst(f"FLAC {channels} ch {rate // 1000} kHz, {seconds:g} s, {len(data) / 2**20:.1f} MiB "
                      f"(decodes to {seconds * rate * 4 / 2**20:.0f} MiB of mono float32)", ok,
                      _identify_sender(encoded(data)))
    if kind == "pitch_max":
        seconds = max_seconds - 0.5
        request = pb.IdentifyRequest(audio=pb.Audio(encoded=encode_audio(hum_like_audio(seconds, seed))),
                                     include_pitch=True)
        return _Worst(f"{seconds:g} s hum WAV 16 kHz with include_pitch", ok, _identify_sender(request))
    if kind == "stream_cap":
        cap = min(int(max_seconds * rate) * 2, max_audio_bytes // 2 * 2)
        pcm = _s16(hum_at(cap / 2 / rate, rate))
        chunk = min(1 << 20, max_audio_bytes) // 2 * 2

        def send(stub, metadata, timeout):
            import grpc

            def requests():
                yield pb.StreamIdentifyRequest(config=pb.StreamConfig(sample_rate_hz=rate, channels=1,
                                                                      encoding=pb.PCM_ENCODING_S16LE))
                for start in range(0, len(pcm), chunk):
                    yield pb.StreamIdentifyRequest(audio_chunk=pcm[start : start + chunk])

            answers, last = 0, None
            try:
                for response in stub.StreamIdentify(requests(), timeout=timeout, metadata=metadata):
                    answers, last = answers + 1, response
            except grpc.RpcError as e:
                return _code_of(e)
            final = last is not None and last.is_final
            return OK, (f"{answers} answers; the {'final' if final else 'last'} one on "
                        f"{last.result.audio_seconds if last is not None else 0.0:.1f} s of audio")

        return _Worst(f"stream of s16le mono {rate // 1000} kHz up to the byte cap ({len(pcm) / 2**20:.1f} MiB, "
                      f"{len(pcm) / 2 / rate:.1f} s) in {chunk / 2**20:.0f} MiB chunks", ok, send)
    if kind == "oversize":
        return _Worst(f"encoded audio of max_audio_bytes + 1 ({max_audio_bytes + 1:,} bytes)", frozenset({BUSY}),
                      _identify_sender(encoded(b"RIFF" + bytes(max_audio_bytes - 3))))
    if kind == "oversize_transport":
        size = transport_limit(max_audio_bytes) + (1 << 20)
        return _Worst(f"a {size / 2**20:.0f} MiB message, over gRPC's receive limit", frozenset({BUSY}),
                      _identify_sender(encoded(b"RIFF" + bytes(size - 4))))
    raise ValueError(f"unknown worst-request kind {kind!r}; known: {', '.join(WORST_KINDS)}")


@dataclass
class WorstResult:
    target: str
    pid: int
    idle_rss_mb: float
    peak_method: str
    kinds: list[dict]
    crashes: int = 0
    crash: dict | None = None
    unexpected: int = 0
    goal_ratio: float = 2.0
    fresh_server_per_kind: bool = False
    ok: bool = True


def run_worst(target: str, pid: int, kinds: list[str], *, max_audio_bytes: int,
              max_seconds: float = C.MAX_QUERY_SECONDS, token: str | None = None,
              server: ServerProcess | None = None, timeout_s: float = 300.0, seed: int = 0,
              sample_interval_s: float = 0.005, settle_s: float = 1.0) -> WorstResult:
    """Each kind alone against the idle server at `pid`: its status and the server's peak RSS."""
    import grpc

    from protos.earworm.v1 import recognizer_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    time.sleep(settle_s)
    idle = rss_mb(pid)
    if idle is None:
        raise ServerError(f"no process {pid} to measure")
    rows: list[dict] = []
    crash = None
    methods = set()
    with grpc.insecure_channel(target, [("grpc.max_send_message_length", -1),
                                        ("grpc.max_receive_message_length", 16 << 20)]) as channel:
        stub = pb_grpc.RecognizerStub(channel)
        # One ordinary query first, not measured: the first real request allocates for good (TensorFlow's
        # buffers for a full batch of windows), which no kind should be charged with.
        worst_request("good", max_audio_bytes, max_seconds, seed).send(stub, metadata, timeout_s)
        for kind in kinds:
            worst = worst_request(kind, max_audio_bytes, max_seconds, seed)
            time.sleep(settle_s)
            before = rss_mb(pid)
            reset = reset_peak_rss(pid)
            t0 = time.perf_counter()
            with _PeakSampler(pid, sample_interval_s) as sampler:
                code, details = worst.send(stub, metadata, timeout_s)
            seconds = time.perf_counter() - t0
            hwm = rss_mb(pid, "VmHWM") if reset else None
            methods.add("VmHWM after clear_refs + sampling" if reset else "VmRSS sampling")
            peak = max(v for v in (hwm, sampler.peak_mb, before) if v is not None)
            alive = (server.returncode() is None) if server is not None else _pid_alive(pid)
            expected = code in worst.expected and code not in ALWAYS_UNEXPECTED
            rows.append({"kind": kind, "what": worst.what, "code": code, "expected": expected, "idle_mb": round(idle, 1),
                         "details": details[:200], "seconds": round(seconds, 2),
                         "rss_before_mb": round(before or 0.0, 1), "peak_mb": round(peak, 1),
                         "growth_mb": round(peak - (before or 0.0), 1),
                         "sampled_peak_mb": round(sampler.peak_mb, 1), "hwm_mb": round(hwm, 1) if hwm else None,
                         "ratio_to_idle": round(peak / idle, 3)})
            if not alive:
                rc = server.returncode() if server is not None else None
                crash = {"kind": kind, "returncode": rc, "log_tail": server.log_tail(40) if server else ""}
                break
    result = WorstResult(target=target, pid=pid, idle_rss_mb=round(idle, 1), peak_method=" / ".join(sorted(methods)),
                         kinds=rows, crashes=1 if crash else 0, crash=crash,
                         unexpected=sum(not r["expected"] for r in rows))
    result.ok = not crash and result.unexpected == 0
    return result


def format_worst(result: WorstResult) -> str:
    if result.fresh_server_per_kind:
        idles = [r["idle_mb"] for r in result.kinds] or [result.idle_rss_mb]
        where = (f"each against a fresh idle server (idle RSS {min(idles):.0f}-{max(idles):.0f} MB before any "
                 f"request)")
    else:
        where = (f"one after the other against one server (pid {result.pid}, {result.target}; idle RSS "
                 f"{result.idle_rss_mb:.0f} MB before any request; later kinds also carry what earlier ones "
                 f"left allocated)")
    lines = [f"worst single requests, {where}; peak = {result.peak_method}; x idle = peak / idle RSS "
             f"(goal: under {result.goal_ratio:g}); +MB = peak - RSS just before the request"]
    lines.append(f"{'kind':<19} {'code':<19} {'s':>6} {'before MB':>9} {'peak MB':>8} {'+MB':>5} {'x idle':>6}  request")
    for r in result.kinds:
        flag = "" if r["expected"] else "  UNEXPECTED"
        over = " !" if r["ratio_to_idle"] >= result.goal_ratio else ""
        lines.append(f"{r['kind']:<19} {r['code']:<19} {r['seconds']:>6.1f} {r['rss_before_mb']:>9.0f} "
                     f"{r['peak_mb']:>8.0f} {r['growth_mb']:>5.0f} {r['ratio_to_idle']:>6.2f}{over}  {r['what']}{flag}")
        if r["details"]:
            lines.append(f"{'':<19} {r['details']}")
    worst = max(result.kinds, key=lambda r: r["peak_mb"], default=None)
    if worst:
        lines.append(f"highest peak: {worst['kind']} {worst['peak_mb']:.0f} MB = {worst['ratio_to_idle']:.2f}x idle "
                     f"({'within' if worst['ratio_to_idle'] < result.goal_ratio else 'OVER'} the goal)")
    lines.append(f"crashes: {result.crashes}")
    if result.crash:
        lines.append(f"  the server exited during {result.crash['kind']} (status {result.crash['returncode']}):\n"
                     f"{result.crash['log_tail']}")
    return "\n".join(lines)


# --- CLI ---------------------------------------------------------------------------------------
def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """"good=40,oversize=5" -> the default mix with those weights replaced (0 drops a kind)."""
    mix = dict(DEFAULT_MIX)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if not sep or name not in SOAK_KINDS:
            raise argparse.ArgumentTypeError(f"use KIND=WEIGHT with KIND one of {', '.join(SOAK_KINDS)}; got {part!r}")
        try:
            mix[name] = float(weight)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{part!r}: the weight is not a number") from e
        if mix[name] < 0:
            raise argparse.ArgumentTypeError(f"{part!r}: weights are >= 0")
    return tuple(mix.items())


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in WORST_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {unknown}; use some of {', '.join(WORST_KINDS)}")
    return kinds


def register(subparsers) -> None:
    from serving.arg_types import positive_float, positive_int

    d = SoakConfig()
    p = subparsers.add_parser(
        "bench-soak", help="long mixed run with hot index swaps against a server process (--worst: peak memory "
                           "under the worst single requests)", allow_abbrev=False,
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", type=Path, help="exported model: start `earworm serve` as a child process")
    where.add_argument("--server", help="host:port of a running server")
    p.add_argument("--index", type=Path, help="with --model: the index to serve (copied; the copy is swapped)")
    p.add_argument("--synthetic-tracks", type=positive_int, default=None,
                   help="with --model: a random index of N tracks for the model (built once, reused)")
    p.add_argument("--synthetic-dir", type=Path, default=None, help="where synthetic indexes are kept "
                                                                    "(default artifacts/bench)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="with --server: the server's process (RSS sampling, crash detection; needed by --worst)")
    p.add_argument("--swap-index-dir", type=Path, default=None,
                   help="with --server: the index directory that server watches; the soak re-saves it under new "
                        "versions (without it: no swaps)")
    p.add_argument("--token-file", type=Path, default=None,
                   help="with --server: file holding the bearer token (default: $EARWORM_AUTH_TOKEN if set)")
    p.add_argument("--clients", type=positive_int, default=d.clients, help=f"default {d.clients}")
    p.add_argument("--seconds", type=positive_float, default=d.seconds, help=f"default {d.seconds:g}")
    p.add_argument("--swap-every", type=float, default=d.swap_every_s,
                   help=f"seconds between index swaps (0: none; default {d.swap_every_s:g})")
    p.add_argument("--query-seconds", type=positive_float, default=d.query_seconds,
                   help=f"length of the good queries (default {d.query_seconds:g})")
    p.add_argument("--mix", type=parse_mix, default=d.mix,
                   help="kind weights, e.g. good=40,oversize=5 (others keep their default: "
                        + ",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items()) + ")")
    p.add_argument("--timeout", type=positive_float, default=d.timeout_s, help=f"per call (default {d.timeout_s:g} s)")
    p.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("the server (started with --model; for --server, say what it runs with)")
    g.add_argument("--stream-idle-seconds", type=positive_float, default=d.stream_idle_s,
                   help=f"the server's idle-stream limit (default here {d.stream_idle_s:g})")
    g.add_argument("--max-audio-bytes", type=positive_int, default=d.max_audio_bytes,
                   help=f"the server's audio byte limit (default {d.max_audio_bytes})")
    g.add_argument("--watch-index", type=positive_float, default=d.watch_index_s,
                   help=f"the server polls its index this often (default here {d.watch_index_s:g} s)")
    g.add_argument("--workers", type=positive_int, default=None, help="server threads (default: the server's)")
    g.add_argument("--max-streams", type=positive_int, default=None, help="(default: the server's)")
    g.add_argument("--max-identify", type=positive_int, default=None, help="(default: the server's)")
    g.add_argument("--tempo-views", default=None, help="the server's --tempo-views (default: the server's)")
    w = p.add_argument_group("worst single requests")
    w.add_argument("--worst", action="store_true",
                   help="instead of the soak: each kind's worst request alone, and the server's peak RSS")
    w.add_argument("--worst-kinds", type=_kinds, default=list(WORST_KINDS),
                   help=f"comma list (default all: {','.join(WORST_KINDS)})")
    w.add_argument("--fresh-server", action="store_true",
                   help="with --worst and --model: a new server for each kind (each measured from a cold heap; "
                        "about 10 s more per kind)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where the live index copy and the server log go (default: a temporary directory, "
                        "removed afterwards unless the server crashed)")
    p.add_argument("--keep-work-dir", action="store_true")
    p.add_argument("--json-out", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(func=run_bench_soak)


def run_bench_soak(args: argparse.Namespace) -> int:
    from serving.apps.bench_load import synthetic_index_for_model
    from serving.arg_types import read_token

    def fail(message: str, status: int = 2) -> int:
        print(f"earworm bench-soak: {message}", file=sys.stderr)
        return status

    if logging.getLogger().level > logging.DEBUG:  # a line per index save would break up the figures
        logging.getLogger("serving.index").setLevel(logging.WARNING)
    config = replace(SoakConfig(), clients=args.clients, seconds=args.seconds, swap_every_s=args.swap_every,
                     query_seconds=args.query_seconds, mix=args.mix, max_audio_bytes=args.max_audio_bytes,
                     stream_idle_s=args.stream_idle_seconds, watch_index_s=args.watch_index,
                     timeout_s=args.timeout, seed=args.seed)
    server: ServerProcess | None = None
    swapper: IndexSwapper | None = None
    result: SoakResult | WorstResult | None = None
    work: Path | None = None
    token = None
    try:
        if args.model is not None:
            index = args.index
            if args.synthetic_tracks:
                index = synthetic_index_for_model(args.model, args.synthetic_tracks, root=args.synthetic_dir,
                                                  seed=args.seed)
            if index is None:
                return fail("--model needs --index DIR or --synthetic-tracks N")
            work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="earworm-soak-"))
            work.mkdir(parents=True, exist_ok=True)
            live = work / "index"
            if live.exists():
                shutil.rmtree(live)
            shutil.copytree(index, live)  # the copy is what gets swapped: never the index given
            launch = ServerLaunch(model=args.model, index=live, watch_index_s=0.0 if args.worst else args.watch_index,
                                  stream_idle_s=args.stream_idle_seconds, max_audio_bytes=args.max_audio_bytes,
                                  workers=args.workers, max_streams=args.max_streams, max_identify=args.max_identify,
                                  tempo_views=args.tempo_views)

            def start(log_name: str) -> ServerProcess:
                print(f"starting the server: {' '.join(launch.argv()[1:])}", flush=True)
                started = time.perf_counter()
                process = ServerProcess(launch, work / log_name)
                try:
                    process.wait_ready()
                except BaseException:
                    process.stop()
                    raise
                print(f"server pid {process.pid} SERVING on {process.target} after "
                      f"{time.perf_counter() - started:.1f} s", flush=True)
                return process

            if args.worst and args.fresh_server:
                result = _worst_fresh(start, args.worst_kinds, max_audio_bytes=args.max_audio_bytes, seed=args.seed)
                text = format_worst(result)
            else:
                server = start("server.log")
                target, pid = server.target, server.pid
            if not args.worst and config.swap_every_s > 0:
                swapper = IndexSwapper(index, live)
        else:
            try:
                token = read_token(args.token_file)
            except ValueError as e:
                return fail(str(e))
            target, pid = args.server, args.server_pid
            if args.worst and not pid:
                return fail("--worst needs --server-pid (its memory is what is measured)")
            if args.fresh_server:
                return fail("--fresh-server needs --model (the benchmark starts the servers)")
            if not args.worst and args.swap_index_dir and config.swap_every_s > 0:
                swapper = IndexSwapper(args.swap_index_dir, args.swap_index_dir)
        if result is not None:
            pass  # measured already (--fresh-server)
        elif args.worst:
            result = run_worst(target, pid, args.worst_kinds, max_audio_bytes=args.max_audio_bytes, token=token,
                               server=server, seed=args.seed)
            text = format_worst(result)
        else:
            result = run_soak(target, config, token=token, server_pid=pid, server=server, swapper=swapper)
            text = format_soak(result)
    except (ServerError, OSError, ValueError) as e:
        return fail(f"{e}" + (f"\n(server log: {server.log_path})" if server else ""), 1)
    finally:
        if server is not None:
            status = server.stop()
            if status not in (0, None, -signal.SIGTERM) and not (result and result.crashes):
                print(f"note: the server exited with status {status} when stopped (log: {server.log_path})",
                      file=sys.stderr)
        failed = result is None or not result.ok
        if work is not None and args.work_dir is None and not args.keep_work_dir and not failed:
            shutil.rmtree(work, ignore_errors=True)
            if isinstance(result, SoakResult) and result.server_log:
                result.server_log["path"] = None  # removed with the work directory
        elif work is not None:
            print(f"work directory (live index, server log): {work}", file=sys.stderr)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(asdict(result), indent=2, default=str) + "\n")
    return 0 if result.ok else 1


def _worst_fresh(start: Callable[[str], ServerProcess], kinds: list[str], **kwargs) -> WorstResult:
    """`run_worst` for each kind against its own freshly started server."""
    rows: list[dict] = []
    crash, methods, first = None, set(), None
    for kind in kinds:
        server = start(f"server-{kind}.log")
        try:
            one = run_worst(server.target, server.pid, [kind], server=server, **kwargs)
        finally:
            server.stop()
        first = first or one
        rows += one.kinds
        methods.add(one.peak_method)
        if one.crash:
            crash = one.crash
            break
    assert first is not None
    result = WorstResult(target="a fresh server per kind", pid=first.pid, idle_rss_mb=first.idle_rss_mb,
                         peak_method=" / ".join(sorted(methods)), kinds=rows, crashes=1 if crash else 0, crash=crash,
                         unexpected=sum(not r["expected"] for r in rows), fresh_server_per_kind=True)
    result.ok = not crash and result.unexpected == 0
    return result
