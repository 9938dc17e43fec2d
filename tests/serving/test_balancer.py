"""serving.balancer: each call forwarded, as bytes, to the least busy worker (fake workers here: gRPC
servers on Unix sockets that answer with what they saw)."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from serving.balancer import Balancer, method_kinds, start_balancer_server

IDENTIFY = "/earworm.v1.Recognizer/Identify"
STREAM = "/earworm.v1.Recognizer/StreamIdentify"


class FakeWorker:
    """A gRPC server on a Unix socket answering Identify with b"<name>:<request>" (or what `behave`
    makes of the call) and StreamIdentify with each request numbered."""

    def __init__(self, path, name: str, behave=None):
        self.name = name
        self.behave = behave
        self.seen: list[tuple[bytes, dict, float | None]] = []
        self.cancelled = threading.Event()
        worker = self

        def identify(request, context):
            metadata = {m.key: m.value for m in context.invocation_metadata()}
            worker.seen.append((request, metadata, context.time_remaining()))
            context.add_callback(lambda: None if context.is_active() else worker.cancelled.set())
            if worker.behave is not None:
                return worker.behave(request, context)
            return f"{worker.name}:".encode() + request

        def stream(requests, context):
            for i, request in enumerate(requests):
                yield f"{worker.name}#{i}:".encode() + request

        def watch(request, context):
            yield b"serving"
            while context.is_active():
                time.sleep(0.01)

        handler = grpc.method_handlers_generic_handler("earworm.v1.Recognizer", {
            "Identify": grpc.unary_unary_rpc_method_handler(identify),
            "StreamIdentify": grpc.stream_stream_rpc_method_handler(stream)})
        health = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Watch": grpc.unary_stream_rpc_method_handler(watch)})
        self.address = f"unix:{path}"
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        self.server.add_generic_rpc_handlers((handler, health))
        assert self.server.add_insecure_port(self.address)
        self.server.start()

    def stop(self):
        self.server.stop(0).wait()


@pytest.fixture
def cluster(tmp_path):
    """(make_worker(name, behave=None) -> FakeWorker, serve(addresses) -> client channel)."""
    workers, servers, channels = [], [], []

    def make_worker(name, behave=None):
        workers.append(FakeWorker(tmp_path / f"{name}.sock", name, behave))
        return workers[-1]

    def serve(addresses):
        balancer = Balancer(addresses)
        server, port = start_balancer_server(balancer, "127.0.0.1:0", threads=16, max_concurrent_rpcs=64,
                                             max_receive_bytes=1 << 20)
        servers.append((server, balancer))
        channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
        return channels[-1], balancer

    yield make_worker, serve
    for ch in channels:
        ch.close()
    for server, balancer in servers:
        server.stop(0).wait()
        balancer.close()
    for w in workers:
        w.stop()


def test_every_method_the_workers_serve_is_known_with_its_kind():
    kinds = method_kinds()
    assert kinds[IDENTIFY] == (False, False) and kinds[STREAM] == (True, True)
    assert kinds["/grpc.health.v1.Health/Check"] == (False, False)
    assert kinds["/grpc.health.v1.Health/Watch"] == (False, True)
    assert kinds["/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"] == (True, True)
    assert kinds["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"] == (True, True)


def test_a_call_goes_to_the_worker_with_the_fewest_calls_in_flight(cluster):
    make_worker, serve = cluster
    release = threading.Event()

    def slow(request, context):
        release.wait(10)
        return b"slow:" + request

    slow_worker, quick = make_worker("slow", slow), make_worker("quick")
    channel, balancer = serve([slow_worker.address, quick.address])
    identify = channel.unary_unary(IDENTIFY)
    first = identify.future(b"q0", timeout=20)  # a fresh balancer's first turn: the first worker
    deadline = time.monotonic() + 10
    while not slow_worker.seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert balancer.in_flight() == [1, 0]
    answers = [identify(f"q{i}".encode(), timeout=10) for i in range(1, 5)]
    assert answers == [f"quick:q{i}".encode() for i in range(1, 5)]  # never behind the busy one
    release.set()
    assert first.result() == b"slow:q0"
    assert balancer.in_flight() == [0, 0]


def test_idle_workers_take_calls_in_turn(cluster):
    make_worker, serve = cluster
    a, b = make_worker("a"), make_worker("b")
    channel, _ = serve([a.address, b.address])
    answers = [channel.unary_unary(IDENTIFY)(b"x", timeout=10) for _ in range(6)]
    assert sorted(answers) == [b"a:x"] * 3 + [b"b:x"] * 3


def test_a_health_watch_held_open_does_not_count_as_work(cluster):
    make_worker, serve = cluster
    a, b = make_worker("a"), make_worker("b")
    channel, balancer = serve([a.address, b.address])
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch")(b"", timeout=30)
    assert next(watch) == b"serving"
    assert balancer.in_flight() == [0, 0]  # else every call would shun the watched worker
    answers = [channel.unary_unary(IDENTIFY)(b"x", timeout=10) for _ in range(4)]
    assert sorted(answers) == [b"a:x"] * 2 + [b"b:x"] * 2
    watch.cancel()


def test_status_details_and_trailing_metadata_come_back_unchanged(cluster):
    make_worker, serve = cluster

    def refuse(request, context):
        context.set_trailing_metadata((("x-earworm-why", "too short"),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the recording is 0.2 s long; at least 1 s is needed")

    channel, _ = serve([make_worker("w", refuse).address])
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(IDENTIFY)(b"short", timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "the recording is 0.2 s long; at least 1 s is needed"
    assert ("x-earworm-why", "too short") in [(m.key, m.value) for m in e.value.trailing_metadata()]


def test_metadata_and_the_deadline_reach_the_worker(cluster):
    make_worker, serve = cluster
    w = make_worker("w")
    channel, _ = serve([w.address])
    channel.unary_unary(IDENTIFY)(b"x", timeout=5, metadata=(("authorization", "Bearer s3cret"), ("x-n-bin", b"\x00\x01")))
    request, metadata, remaining = w.seen[0]
    assert request == b"x" and metadata["authorization"] == "Bearer s3cret" and metadata["x-n-bin"] == b"\x00\x01"
    assert 3.0 < remaining <= 5.1  # (gRPC rounds deadlines to its clock)
    channel.unary_unary(IDENTIFY)(b"y")  # no deadline: none at the worker either
    assert w.seen[1][2] is None or w.seen[1][2] > 1e6


def test_a_stream_is_forwarded_both_ways(cluster):
    make_worker, serve = cluster
    channel, _ = serve([make_worker("w").address])
    answers = list(channel.stream_stream(STREAM)(iter([b"a", b"b", b"c"]), timeout=10))
    assert answers == [b"w#0:a", b"w#1:b", b"w#2:c"]


def test_an_unreachable_worker_is_passed_over(cluster, tmp_path):
    make_worker, serve = cluster
    live = make_worker("live")
    channel, balancer = serve([f"unix:{tmp_path / 'gone.sock'}", live.address])
    answers = [channel.unary_unary(IDENTIFY)(b"x", timeout=10) for _ in range(4)]
    assert answers == [b"live:x"] * 4  # sent again to the live one, then not tried while paused
    assert balancer.backends[0].calls <= 1 and balancer.in_flight() == [0, 0]


def test_when_no_worker_is_reachable_the_client_hears_unavailable(cluster, tmp_path):
    _, serve = cluster
    channel, _ = serve([f"unix:{tmp_path / 'a.sock'}", f"unix:{tmp_path / 'b.sock'}"])
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(IDENTIFY)(b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_an_unknown_method_is_unimplemented(cluster):
    make_worker, serve = cluster
    channel, _ = serve([make_worker("w").address])
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary("/earworm.v1.Recognizer/Nope")(b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_call_the_client_cancels_is_cancelled_at_the_worker(cluster):
    make_worker, serve = cluster
    started = threading.Event()

    def hang(request, context):
        started.set()
        while context.is_active():
            time.sleep(0.01)
        return b""

    w = make_worker("w", hang)
    channel, balancer = serve([w.address])
    call = channel.unary_unary(IDENTIFY).future(b"x", timeout=30)
    assert started.wait(10)
    call.cancel()
    assert w.cancelled.wait(10)
    deadline = time.monotonic() + 10
    while balancer.in_flight() != [0] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert balancer.in_flight() == [0]


def test_a_balancer_needs_a_worker():
    with pytest.raises(ValueError, match="at least one"):
        Balancer([])


def test_tls_ends_at_the_balancer(cluster, tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    make_worker, _ = cluster
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    worker = make_worker("plain")  # the worker's socket has no TLS
    balancer = Balancer([worker.address])
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server, port = start_balancer_server(balancer, "localhost:0", threads=4, max_concurrent_rpcs=16,
                                         max_receive_bytes=1 << 20, credentials=credentials)
    try:
        with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(cert.read_bytes())) as channel:
            assert channel.unary_unary(IDENTIFY)(b"x", timeout=10) == b"plain:x"
    finally:
        server.stop(0).wait()
        balancer.close()
