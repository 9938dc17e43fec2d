"""Several server processes behind one port: `earworm serve --processes N`.

A Python process runs Python code on one core at a time (the interpreter lock). The query path is
mostly native code (LiteRT, TensorFlow, ScaNN, numpy), but its Python glue between those calls still
serialises concurrent requests, so one process cannot keep two cores busy: measured 2026-12-04 on
the 2-core machine (`earworm bench-load`, 10k-track index, 4 clients), one process answered 46.5
req/s (p50 86 ms) and two processes with 2 clients each 63.5 req/s (p50 62 ms).

Each worker process here is a whole server (`serving.server.create_server`: model, index, health,
hot swap) listening on a Unix socket of its own in a private directory. The public gRPC port belongs
to nginx (`serving.balancer`), which sends each call to the worker with the fewest calls in flight:
the kernel, given the port with SO_REUSEPORT, would spread connections and not calls, and a few
clients could land on one process while another idles (README, the round of 2026-12-05). TLS ends at
nginx. The page and HTTP API are served by the workers on one shared port (SO_REUSEPORT).

The parent process only supervises: it picks the port (port 0: a free one) and holds it while nginx
binds it, starts the workers (spawned: TensorFlow and gRPC must not be forked) and then nginx, waits
until every one serves, forwards SIGHUP (reload the index) and SIGTERM/SIGINT (stop gracefully: nginx
first), and restarts a process that dies, unless it dies during start-up (then everything stops with
its error).

What is per worker: the model and the ScaNN searcher (about 1 GB each at the default model), the
index's stored vectors unless `--index-mmap` (then the page cache holds one copy for all), the metrics
(worker i serves them on `metrics_port + i`; port 0: each its own free port), and the no-match
calibration and hot swap (every worker polls the index directory itself).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from serving.cores import usable_cores
from serving.ports import shared_port_socket
from serving.server import ServerConfig, ServerError

log = logging.getLogger(__name__)

AUTO_MAX_PROCESSES = 4
"""`--processes auto` starts one worker per core this process may run on, at most this many: each
holds its own model and searcher (about 1 GB)."""
START_TIMEOUT_S = 600.0
"""How long a worker may take to load its model and index (a large index takes minutes)."""
CRASH_LOOP_S = 30.0
"""A worker that dies within this long of its start is not restarted: everything stops."""


def stop_on_signals(reload: Callable[[], Any]) -> threading.Event:
    """Install a server command's signal handlers: SIGINT and SIGTERM set the returned event (stop
    gracefully), SIGHUP runs `reload` in a thread of its own (re-read the index)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if signum == getattr(signal, "SIGHUP", None):
            threading.Thread(target=reload, name="earworm-reload", daemon=True).start()
        else:
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, on_signal)
    return stop


def serving_processes(requested: int | None, config: ServerConfig) -> int:
    """How many processes serve `config`: `requested`, or `auto_processes()` when None. A Milvus Lite
    file can be opened by one process at a time: one then (ValueError when more were asked for)."""
    from serving.milvus_index import is_lite_uri

    lite = config.index_backend == "milvus" and config.milvus_uri is not None and is_lite_uri(config.milvus_uri)
    if lite:
        if requested is not None and requested > 1:
            raise ValueError(f"a Milvus Lite file ({config.milvus_uri}) can be opened by one process at a time: "
                             "serve it with --processes 1, or keep the windows on a Milvus server")
        return 1
    return auto_processes() if requested is None else requested


def auto_processes() -> int:
    """One worker per core available to this process, at most `AUTO_MAX_PROCESSES` (nginx spreads the
    calls, so no spare one is needed). One process without nginx (a warning says how to install it),
    and off Linux, whose SO_REUSEPORT does not spread the page's connections (BSD and macOS give them
    all to the last socket bound)."""
    if not sys.platform.startswith("linux"):
        return 1
    from serving.balancer import find_nginx

    if find_nginx() is None:
        log.warning("nginx is not installed: serving one process (scripts/setup.sh installs nginx, which "
                    "spreads the calls over one server process per core)")
        return 1
    return min(usable_cores(), AUTO_MAX_PROCESSES)  # usable_cores() is at least 1


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker reports once it serves."""

    slot: int
    pid: int
    port: int
    http_port: int | None
    metrics_port: int | None


def worker_config(config: ServerConfig, slot: int, socket_path: str, http_port: int | None) -> ServerConfig:
    """The config of worker `slot`: gRPC on its Unix socket `socket_path` without TLS (the balancer
    ends it), the shared HTTP port bound with SO_REUSEPORT, its own metrics port."""
    metrics = config.metrics_port
    if metrics:
        metrics += slot
    return replace(config, bind=f"unix:{socket_path}", tls_cert=None, tls_key=None, http_port=http_port,
                   metrics_port=metrics, reuse_port=True)


def _worker_main(config: ServerConfig, slot: int, events: Any, log_level: int) -> None:
    """A worker process: one server, until SIGTERM/SIGINT; SIGHUP reloads its index."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [{slot}] %(name)s: %(message)s")
    from serving.server import create_server

    serving: list[Any] = []  # the server, once created: what SIGHUP reloads
    stop = stop_on_signals(lambda: [s.reload_index(force=True) for s in serving])
    try:
        server, port = create_server(config)
    except ServerError as e:
        events.put(("error", slot, str(e)))
        raise SystemExit(1) from None
    except Exception as e:  # noqa: BLE001 - the parent must learn why, not wait for a timeout
        events.put(("error", slot, f"{type(e).__name__}: {e}"))
        raise
    serving.append(server)
    events.put(("ready", slot, WorkerInfo(slot, os.getpid(), port, server.http_port, server.metrics_port)))
    while not stop.wait(1.0):
        pass
    server.stop(grace=5.0)


class ServerProcesses:
    """`processes` servers of `config` on one port. `start()` returns once every one serves (or raises
    ServerError, having stopped them); `stop()` stops them gracefully."""

    def __init__(self, config: ServerConfig, processes: int):
        if processes < 1:
            raise ServerError(f"processes must be >= 1, got {processes}")
        self.config = config
        self.processes = processes
        self._ctx = mp.get_context("spawn")
        self._events = self._ctx.Queue()
        self._procs: dict[int, Any] = {}
        self._started_at: dict[int, float] = {}
        self.workers: dict[int, WorkerInfo] = {}
        self._held: list[Any] = []
        self.port = 0
        self.http_port: int | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._socket_dir: str | None = None
        self._grpc_ip = config.host
        self.balancer: Any = None  # serving.balancer.NginxBalancer, once started
        self._balancer_started = 0.0

    # -- ports -----------------------------------------------------------------------------------
    def _hold_ports(self) -> None:
        """Bind the shared ports (a free one for port 0) and hold them until the workers have bound
        them too: nobody else takes them meanwhile, and a port in use is reported before any worker
        loads a model."""
        try:
            grpc_sock = shared_port_socket(self.config.host, self.config.port)
            self._held.append(grpc_sock)
            self._grpc_ip, self.port = str(grpc_sock.getsockname()[0]), int(grpc_sock.getsockname()[1])
            if self.config.http_port is not None:
                http_sock = shared_port_socket(self.config.host, self.config.http_port)
                self._held.append(http_sock)
                self.http_port = int(http_sock.getsockname()[1])
        except OSError as e:
            self._release_ports()
            raise ServerError(f"cannot listen on {self.config.host}:{self.config.port}"
                              f"{'' if self.config.http_port is None else f' / HTTP {self.config.http_port}'}: "
                              f"{e}") from e

    def _release_ports(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()

    # -- workers ---------------------------------------------------------------------------------
    def _socket(self, slot: int) -> str:
        assert self._socket_dir is not None
        return os.path.join(self._socket_dir, f"worker-{slot}.sock")

    def _spawn(self, slot: int) -> None:
        cfg = worker_config(self.config, slot, self._socket(slot), self.http_port)
        proc = self._ctx.Process(target=_worker_main, args=(cfg, slot, self._events, logging.getLogger().level),
                                 name=f"earworm-serve-{slot}", daemon=False)
        proc.start()
        self._procs[slot] = proc
        self._started_at[slot] = time.monotonic()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        self._hold_ports()
        # the workers' sockets: a private directory (only this user may connect), removed at stop
        self._socket_dir = tempfile.mkdtemp(prefix="earworm-serve-")
        try:
            for slot in range(self.processes):
                self._spawn(slot)
            self._await_ready(set(range(self.processes)), timeout)
            self._start_balancer()
        except BaseException:
            self.stop(grace=1.0)
            raise
        finally:
            self._release_ports()
        log.info("%d server processes behind nginx on port %d: pids %s (nginx %d)", self.processes, self.port,
                 ", ".join(str(w.pid) for _, w in sorted(self.workers.items())), self.balancer.pid)

    def _start_balancer(self) -> None:
        from serving.balancer import BalancerError, NginxBalancer

        assert self._socket_dir is not None
        try:
            if self.balancer is None:  # made once; a restart starts the same config again
                # the address the port was held on ("localhost" may also name an IPv6 address nginx cannot bind)
                self.balancer = NginxBalancer(self._grpc_ip, self.port, [self._socket(s) for s in range(self.processes)],
                                              Path(self._socket_dir) / "nginx", max_body_bytes=self.config.max_receive_bytes,
                                              tls_cert=self.config.tls_cert, tls_key=self.config.tls_key)
            self.balancer.start()
        except (BalancerError, ValueError) as e:
            raise ServerError(str(e)) from e
        self._balancer_started = time.monotonic()

    def _await_ready(self, slots: set[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(slots)
        while waiting:
            try:
                kind, slot, payload = self._events.get(timeout=0.5)
            except queue.Empty:
                dead = [s for s in waiting if not self._procs[s].is_alive()]
                if dead:
                    raise ServerError(f"server process {dead[0]} exited (code {self._procs[dead[0]].exitcode}) "
                                      "while loading; see its log above")
                if time.monotonic() > deadline:
                    raise ServerError(f"server processes {sorted(waiting)} did not load within {timeout:g} s")
                continue
            if kind == "error":
                raise ServerError(payload)
            self.workers[slot] = payload
            waiting.discard(slot)

    @property
    def pids(self) -> list[int]:
        """Every process serving: the workers and nginx's."""
        workers = [p.pid for p in self._procs.values() if p.pid is not None]
        return workers + (self.balancer.pids() if self.balancer is not None else [])

    @property
    def balancer_pid(self) -> int | None:
        return None if self.balancer is None else self.balancer.pid

    @property
    def metrics_ports(self) -> list[int]:
        return [w.metrics_port for _, w in sorted(self.workers.items()) if w.metrics_port is not None]

    def reload_index(self) -> None:
        """Ask every worker to re-read its index (SIGHUP)."""
        for proc in self._procs.values():
            if proc.is_alive() and hasattr(signal, "SIGHUP"):
                os.kill(proc.pid, signal.SIGHUP)

    def supervise_once(self) -> None:
        """Restart any worker, or nginx, that died (ServerError when one died during start-up: a crash
        loop)."""
        with self._lock:
            if self._stopping:
                return
            if self.balancer is not None and not self.balancer.is_alive():
                lived = time.monotonic() - self._balancer_started
                if lived < CRASH_LOOP_S:
                    raise ServerError(f"nginx exited with code {self.balancer.exitcode} {lived:.0f} s after it "
                                      "started: not restarting it")
                log.error("nginx exited with code %s; starting it again", self.balancer.exitcode)
                self._start_balancer()
            for slot, proc in list(self._procs.items()):
                if proc.is_alive():
                    continue
                lived = time.monotonic() - self._started_at[slot]
                if lived < CRASH_LOOP_S:
                    raise ServerError(f"server process {slot} (pid {proc.pid}) exited with code {proc.exitcode} "
                                      f"{lived:.0f} s after it started: not restarting it")
                log.error("server process %d (pid %s) exited with code %s; starting it again", slot, proc.pid,
                          proc.exitcode)
                self._spawn(slot)
                self._await_ready({slot}, START_TIMEOUT_S)

    def stop(self, grace: float = 5.0) -> None:
        """Stop nginx (the calls in flight finish), then SIGTERM every worker (each drains its calls for
        `grace` s), then kill what is left."""
        with self._lock:
            self._stopping = True
            if self.balancer is not None:
                self.balancer.stop(grace)  # no new calls; the ones in flight still reach their workers
            for proc in self._procs.values():
                if proc.is_alive():
                    proc.terminate()
            deadline = time.monotonic() + grace + 10.0
            for proc in self._procs.values():
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    log.warning("server process %s did not stop in time: killing it", proc.pid)
                    proc.kill()
                    proc.join(5.0)
            self._release_ports()
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)


__all__ = ["AUTO_MAX_PROCESSES", "ServerProcesses", "WorkerInfo", "auto_processes", "serving_processes", "stop_on_signals",
           "worker_config"]
