"""Per-call load balancing over the processes of `earworm serve --processes N` (N > 1).

The kernel's SO_REUSEPORT spreads connections, not calls, and a gRPC client holds one connection for
all its calls: a few clients can land on one process while another idles, and one Python process
cannot keep two cores busy (its interpreter lock serialises the glue between the native calls).
Measured 2026-12-05 on the 2-core machine (10k-track index, 4 clients): with the clients split 2 + 2
over two processes, 86.7 req/s and p50 45.6 ms; all four on one of three processes, 64.1 req/s and
p50 61.9 ms; which one a run gets is chance.

So the public port belongs to a balancer process, which forwards each call to the worker process
with the fewest calls in flight (ties: in turn), over a Unix socket, as bytes: nothing is parsed
here, whatever the service (Recognizer, health, reflection). Metadata (the bearer token included),
the deadline, the status, its details and the trailing metadata pass unchanged both ways; a call the
client cancels is cancelled at the worker; a unary call that finds its worker unreachable (it is
being restarted) is sent to another one. TLS ends here: the workers listen on Unix sockets in a
private directory. The page and HTTP API stay on the workers' shared HTTP port (browsers open short
connections, which the kernel spreads well enough).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc

log = logging.getLogger(__name__)

UNREACHABLE_PAUSE_S = 1.0
"""A worker that could not be reached gets no new call for this long (unless every worker is paused)."""
_NO_DEADLINE_S = 1e6
"""`time_remaining()` of a call without a deadline is huge: anything above this means none."""
_NOT_FORWARDED = ("user-agent",)
"""Metadata the balancer's own channel sets (and "grpc-" keys, which gRPC reserves)."""
UNCOUNTED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Calls that cost a worker next to nothing and may last for hours (a health Watch): they go to the
least busy worker but do not count as its calls in flight."""


def method_kinds() -> dict[str, tuple[bool, bool]]:
    """Every method the workers serve, "/package.Service/Method" -> (client streams, server streams),
    read from the services' own descriptors (Recognizer, health, reflection v1alpha and v1)."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    from protos.earworm.v1 import recognizer_pb2

    kinds = {}
    for module in (recognizer_pb2, health_pb2, reflection_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                kinds[f"/{service.full_name}/{m.name}"] = (m.client_streaming, m.server_streaming)
    from serving.server import REFLECTION_V1  # the same messages as v1alpha under another name

    for path, kind in list(kinds.items()):
        if path.startswith(f"/{reflection_pb2.DESCRIPTOR.package}.ServerReflection/"):
            kinds[f"/{REFLECTION_V1}/{path.rsplit('/', 1)[1]}"] = kind
    return kinds


def _timeout(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE_S else max(float(remaining), 0.0)


def _forwarded(metadata: Sequence[Any] | None) -> list[tuple[str, Any]]:
    return [(m.key, m.value) for m in metadata or ()
            if not m.key.startswith(("grpc-", ":")) and m.key not in _NOT_FORWARDED]


def _give_back(error: grpc.RpcError, context: grpc.ServicerContext) -> None:
    """End the client's call with the worker's status, details and trailing metadata."""
    trailing = _forwarded(error.trailing_metadata() if hasattr(error, "trailing_metadata") else None)
    if trailing:
        context.set_trailing_metadata(trailing)
    code = error.code() if hasattr(error, "code") else None
    context.abort(code or grpc.StatusCode.UNKNOWN, (error.details() if hasattr(error, "details") else None) or "")


class Backend:
    """One worker: its channel, its calls in flight, and until when it is paused (unreachable)."""

    def __init__(self, address: str, max_send_bytes: int):
        self.address = address
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", max_send_bytes),
            ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 100),  # a restarted worker is back within a second
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ])
        self.in_flight = 0
        self.paused_until = 0.0
        self.calls = 0
        self._callables: dict[str, Callable[..., Any]] = {}

    def callable(self, method: str, kind: tuple[bool, bool]) -> Callable[..., Any]:
        """The channel's multi-callable for `method`, bytes in and out."""
        found = self._callables.get(method)
        if found is None:
            make = {(False, False): self.channel.unary_unary, (False, True): self.channel.unary_stream,
                    (True, False): self.channel.stream_unary, (True, True): self.channel.stream_stream}[kind]
            found = self._callables[method] = make(method)  # no (de)serializers: bytes as they came
        return found

    def close(self) -> None:
        self.channel.close()


class Balancer:
    """Forwards every call it is given to the least busy of `addresses` (gRPC targets of the workers,
    e.g. "unix:/run/earworm/worker-0.sock"). `handler()` is its generic handler for a gRPC server."""

    def __init__(self, addresses: Sequence[str], max_send_bytes: int = 64 << 20):
        if not addresses:
            raise ValueError("a balancer needs at least one worker address")
        self.backends = [Backend(a, max_send_bytes) for a in addresses]
        self.kinds = method_kinds()
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def _pick(self, exclude: Sequence[Backend] = (), counted: bool = True) -> Backend | None:
        """The backend with the fewest calls in flight, among those not paused when any is not (ties:
        in turn), the call counted there when `counted`; None when every one is excluded."""
        now = time.monotonic()
        with self._lock:
            left = [b for b in self.backends if b not in exclude]
            if not left:
                return None
            live = [b for b in left if b.paused_until <= now] or left
            start = next(self._turn) % len(live)
            best = min(live[start:] + live[:start], key=lambda b: b.in_flight)
            best.in_flight += counted
            best.calls += 1
            return best

    def _release(self, backend: Backend, counted: bool, unreachable: bool = False) -> None:
        with self._lock:
            backend.in_flight -= counted
            if unreachable:
                backend.paused_until = time.monotonic() + UNREACHABLE_PAUSE_S

    def in_flight(self) -> list[int]:
        with self._lock:
            return [b.in_flight for b in self.backends]

    def _unary_response(self, method: str, kind: tuple[bool, bool]) -> Callable[[Any, Any], bytes]:
        counted = not method.startswith(UNCOUNTED)

        def forward(request: Any, context: grpc.ServicerContext) -> bytes:
            tried: list[Backend] = []
            while True:
                backend = self._pick(tried, counted)
                assert backend is not None
                call = backend.callable(method, kind).future(
                    request, timeout=_timeout(context), metadata=_forwarded(context.invocation_metadata()))
                context.add_callback(call.cancel)
                unreachable = False
                try:
                    response = call.result()
                    trailing = _forwarded(call.trailing_metadata())
                    if trailing:
                        context.set_trailing_metadata(trailing)
                    return response
                except grpc.FutureCancelledError:  # the client went away: so did its call at the worker
                    context.abort(grpc.StatusCode.CANCELLED, "cancelled by the client")
                except grpc.RpcError as e:
                    # a worker being restarted: another one answers (only a unary request can be sent
                    # again; every method here reads, none changes anything)
                    unreachable = e.code() == grpc.StatusCode.UNAVAILABLE
                    if unreachable and not kind[0] and context.is_active() and len(tried) + 1 < len(self.backends):
                        tried.append(backend)
                        continue
                    _give_back(e, context)
                finally:
                    self._release(backend, counted, unreachable)
        return forward

    def _stream_response(self, method: str, kind: tuple[bool, bool]) -> Callable[[Any, Any], Iterator[bytes]]:
        counted = not method.startswith(UNCOUNTED)

        def forward(request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
            backend = self._pick(counted=counted)
            assert backend is not None
            unreachable = False
            try:
                call = backend.callable(method, kind)(
                    request, timeout=_timeout(context), metadata=_forwarded(context.invocation_metadata()))
                context.add_callback(call.cancel)
                yield from call
                trailing = _forwarded(call.trailing_metadata())
                if trailing:
                    context.set_trailing_metadata(trailing)
            except grpc.RpcError as e:
                unreachable = e.code() == grpc.StatusCode.UNAVAILABLE
                _give_back(e, context)
            finally:
                self._release(backend, counted, unreachable)
        return forward

    def handler(self) -> grpc.GenericRpcHandler:
        balancer = self

        class _Forwarding(grpc.GenericRpcHandler):
            def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                kind = balancer.kinds.get(handler_call_details.method)
                if kind is None:
                    return None  # UNIMPLEMENTED, as the workers would answer
                client_streams, server_streams = kind
                if server_streams:
                    fn = balancer._stream_response(handler_call_details.method, kind)
                    return (grpc.stream_stream_rpc_method_handler(fn) if client_streams
                            else grpc.unary_stream_rpc_method_handler(fn))
                fn = balancer._unary_response(handler_call_details.method, kind)
                return (grpc.stream_unary_rpc_method_handler(fn) if client_streams
                        else grpc.unary_unary_rpc_method_handler(fn))

        return _Forwarding()

    def close(self) -> None:
        for b in self.backends:
            b.close()


def start_balancer_server(balancer: Balancer, address: str, *, threads: int, max_concurrent_rpcs: int,
                          max_receive_bytes: int, credentials: grpc.ServerCredentials | None = None,
                          reuse_port: bool = False) -> tuple[grpc.Server, int]:
    """A started gRPC server on `address` whose every call `balancer` forwards. Returns (server, port);
    RuntimeError when the address cannot be bound."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="earworm-balance"),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[("grpc.max_receive_message_length", max_receive_bytes),
                 ("grpc.so_reuseport", 1 if reuse_port else 0)],
    )
    server.add_generic_rpc_handlers((balancer.handler(),))
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot listen on {address} (port in use?)")
    server.start()
    return server, port


__all__ = ["Backend", "Balancer", "UNCOUNTED", "UNREACHABLE_PAUSE_S", "method_kinds", "start_balancer_server"]
