"""Per-call load balancing over the processes of `earworm serve --processes N` (N > 1), by nginx.

The kernel's SO_REUSEPORT spreads connections, not calls, and a gRPC client holds one connection for
all its calls: a few clients can land on one process while another idles, an application server's
one channel lands on one process, and one Python process cannot keep two cores busy (its interpreter
lock serialises the glue between the native calls). Measured 2026-12-05 on the 2-core machine
(10k-track index, 4 clients): with the clients split 2 + 2 over two processes, 86.7 req/s and p50
45.6 ms; all four on one of three processes, 64.1 req/s and p50 61.9 ms; which one a run gets is chance.

So the public gRPC port belongs to nginx (`grpc_pass`, the gRPC proxy of the HTTP/2 module), which
sends each call to the worker with the fewest calls in flight (`least_conn`: nginx holds one upstream
connection per call in flight) over the workers' Unix sockets. Metadata (the bearer token
included), the deadline (`grpc-timeout`), the status, its details and the trailing metadata pass
unchanged; a call the client cancels is reset at the worker; TLS ends at nginx. It costs 0.3-0.5 ms
of CPU per call, where a gRPC Python forwarder measured 1.3-1.7 ms (README, the round of 2026-12-05).
The page and HTTP API stay on the workers' shared HTTP port (browsers open short connections, which
the kernel spreads well enough).

nginx comes from the system (`scripts/setup.sh` installs Debian's nginx-light); its config, pid file
and temporary files live in the server group's private run directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

NGINX_SEARCH = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
"""Where nginx lives when it is not on PATH (/usr/sbin is not on a normal user's PATH)."""
START_TIMEOUT_S = 30.0


class BalancerError(RuntimeError):
    """nginx is missing, or will not start (a bad certificate, the port taken)."""


def find_nginx() -> str | None:
    """The nginx executable, or None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_SEARCH if os.access(p, os.X_OK)), None)


def _listen_address(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(host: str, port: int) -> str:
    """nginx's listen parameters; "::" serves IPv4 too, as gRPC's own [::] does."""
    dual = " ipv6only=off" if host.strip("[]") == "::" else ""
    return f"{_listen_address(host, port)} http2 reuseport{dual}"


def nginx_config(host: str, port: int, worker_sockets: Sequence[str | Path], run_dir: Path, *,
                 max_body_bytes: int, tls_cert: Path | None = None, tls_key: Path | None = None,
                 shutdown_grace_s: float = 5.0) -> str:
    """The nginx.conf of one server group: gRPC on host:port (SO_REUSEPORT, as the port the parent
    holds while nginx binds it), each call to the least busy of `worker_sockets`."""
    if not worker_sockets:
        raise ValueError("a balancer needs at least one worker socket")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both a certificate and a key")
    run = Path(run_dir)
    servers = "\n".join(f"    server unix:{Path(s)};" for s in worker_sockets)
    tls = (f"    ssl_certificate {Path(tls_cert).resolve()};\n    ssl_certificate_key {Path(tls_key).resolve()};\n"
           if tls_cert is not None else "")
    temps = "\n".join(f"  {kind}_temp_path {run / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# written by earworm serve (serving/balancer.py); removed when the server stops
# one process, no master: it keeps this user (the owner of the workers' sockets), and earworm serve
# supervises and restarts it (a master killed outright would leave its worker serving the port)
master_process off;
daemon off;
pid {run / 'nginx.pid'};
error_log stderr warn;
worker_shutdown_timeout {max(1, int(round(shutdown_grace_s)))}s;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temps}
  # no size limit here: the workers' gRPC refuses a message over their limit with RESOURCE_EXHAUSTED
  # (nginx would answer 413, which a gRPC client reads as UNKNOWN); grpc_pass streams the body
  # through in pieces of client_body_buffer_size, never to disk
  client_max_body_size 0;
  client_body_buffer_size {int(min(max_body_bytes, 1 << 20))};
  upstream earworm_workers {{
    least_conn;
{servers}
    keepalive 64;
  }}
  upstream earworm_light {{
{servers}
    keepalive 8;
  }}
  server {{
    listen {_listen(host, port)}{' ssl' if tls else ''};
{tls}    grpc_read_timeout 1d;
    grpc_send_timeout 1d;
    grpc_next_upstream error timeout;
    location / {{
      grpc_pass grpc://earworm_workers;
    }}
    # health and reflection cost next to nothing and a health Watch may stay open for hours: not
    # counted among the workers' calls in flight (that would steer every call away from its worker)
    location /grpc.health.v1.Health/ {{
      grpc_pass grpc://earworm_light;
    }}
    location /grpc.reflection. {{
      grpc_pass grpc://earworm_light;
    }}
  }}
}}
"""


class NginxBalancer:
    """nginx in front of a server group's workers: `start()` writes its config into `run_dir`, starts
    it and returns once it has bound the port (BalancerError, with nginx's own message on stderr,
    when it will not start); `stop()` lets the calls in flight finish for `grace` s."""

    def __init__(self, host: str, port: int, worker_sockets: Sequence[str | Path], run_dir: Path | str, *,
                 max_body_bytes: int, tls_cert: Path | None = None, tls_key: Path | None = None,
                 shutdown_grace_s: float = 5.0):
        self.host, self.port = host, int(port)
        self.run_dir = Path(run_dir)
        self.config_path = self.run_dir / "nginx.conf"
        self._config = nginx_config(host, port, worker_sockets, self.run_dir, max_body_bytes=max_body_bytes,
                                    tls_cert=tls_cert, tls_key=tls_key, shutdown_grace_s=shutdown_grace_s)
        self._proc: subprocess.Popen | None = None
        self._grace = shutdown_grace_s

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def pids(self) -> list[int]:
        """nginx's process, while it runs."""
        return [self._proc.pid] if self.is_alive() else []

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def exitcode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        nginx = find_nginx()
        if nginx is None:
            raise BalancerError("nginx is not installed (scripts/setup.sh installs it; Debian: apt-get install "
                                "nginx-light): it spreads the calls over the server processes; or serve one "
                                "process (--processes 1)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config)
        pid_file = self.run_dir / "nginx.pid"
        pid_file.unlink(missing_ok=True)
        self._proc = subprocess.Popen([nginx, "-c", str(self.config_path), "-p", str(self.run_dir)],
                                      stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        # nginx writes its pid file once it has bound the port (another program's listener on the
        # port would answer a connection test, so that is no proof)
        while not (pid_file.is_file() and pid_file.read_text().strip() == str(self._proc.pid)):
            if self._proc.poll() is not None:
                raise BalancerError(f"nginx exited with code {self._proc.returncode} while starting on "
                                    f"{_listen_address(self.host, self.port)} (its message is above)")
            if time.monotonic() > deadline:
                self.stop(grace=0)
                raise BalancerError(f"nginx did not listen on {_listen_address(self.host, self.port)} "
                                    f"within {timeout:g} s")
            time.sleep(0.05)
        log.info("nginx (pid %d) spreads the calls on %s over the server processes", self._proc.pid,
                 _listen_address(self.host, self.port))

    def stop(self, grace: float | None = None) -> None:
        """SIGQUIT (nginx's graceful stop: calls in flight finish, at most `grace` s), then kill."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        grace = self._grace if grace is None else grace
        proc.send_signal(signal.SIGQUIT if grace > 0 else signal.SIGTERM)
        try:
            proc.wait(grace + 5.0)
        except subprocess.TimeoutExpired:
            log.warning("nginx (pid %d) did not stop in time: killing it", proc.pid)
            proc.kill()
            proc.wait(5.0)


__all__ = ["BalancerError", "NginxBalancer", "find_nginx", "nginx_config"]
