"""serving.balancer: nginx sends each call to the least busy worker (fake workers here: gRPC servers
on Unix sockets that answer with what they saw). Skipped where nginx is not installed
(scripts/setup.sh installs it)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures

import grpc
import pytest

from serving.balancer import BalancerError, NginxBalancer, find_nginx, nginx_config

IDENTIFY = "/earworm.v1.Recognizer/Identify"
STREAM = "/earworm.v1.Recognizer/StreamIdentify"
needs_nginx = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (scripts/setup.sh installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeWorker:
    """A gRPC server on a Unix socket answering Identify with b"<name>:<request>" (or what `behave`
    makes of the call) and StreamIdentify with each request numbered."""

    def __init__(self, path, name: str, behave=None, max_receive: int = 4 << 20):
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
        self.path = path
        self.server = grpc.server(futures.ThreadPoolExecutor(8),
                                  options=[("grpc.max_receive_message_length", max_receive)])
        self.server.add_generic_rpc_handlers((handler, health))
        assert self.server.add_insecure_port(self.address)
        self.server.start()

    def stop(self):
        self.server.stop(0).wait()


@pytest.fixture
def cluster(tmp_path):
    """(make_worker(name, behave=None) -> FakeWorker, serve(sockets, **tls) -> (client channel, nginx))."""
    workers, balancers, channels = [], [], []

    def make_worker(name, behave=None, **options):
        workers.append(FakeWorker(tmp_path / f"{name}.sock", name, behave, **options))
        return workers[-1]

    def serve(sockets, tls_cert=None, tls_key=None, host="127.0.0.1"):
        port = _free_port()
        balancer = NginxBalancer(host, port, sockets, tmp_path / f"run{len(balancers)}", max_body_bytes=1 << 20,
                                 tls_cert=tls_cert, tls_key=tls_key, shutdown_grace_s=1.0)
        balancers.append(balancer)
        balancer.start()
        channels.append(grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(tls_cert.read_bytes()))
                        if tls_cert else grpc.insecure_channel(f"127.0.0.1:{port}"))
        return channels[-1], balancer

    yield make_worker, serve
    for ch in channels:
        ch.close()
    for b in balancers:
        b.stop(grace=0)
    for w in workers:
        w.stop()


@needs_nginx
def test_a_call_goes_to_the_worker_with_the_fewest_calls_in_flight(cluster):
    make_worker, serve = cluster
    release = threading.Event()

    def slow(request, context):
        release.wait(20)
        return b"slow:" + request

    slow_worker, quick = make_worker("slow", slow), make_worker("quick")
    channel, _ = serve([slow_worker.path, quick.path])
    identify = channel.unary_unary(IDENTIFY)
    held = []
    for i in range(6):  # until the slow worker holds a call (nginx takes turns between idle workers)
        held.append(identify.future(f"h{i}".encode(), timeout=30))
        deadline = time.monotonic() + 10
        while not (slow_worker.seen or held[-1].done()) and time.monotonic() < deadline:
            time.sleep(0.01)
        if slow_worker.seen:
            break
    assert len(slow_worker.seen) == 1
    answers = [identify(f"q{i}".encode(), timeout=10) for i in range(4)]
    assert answers == [f"quick:q{i}".encode() for i in range(4)]  # never behind the busy one
    release.set()
    assert held[-1].result() == b"slow:" + held[-1].result()[5:] and len(slow_worker.seen) == 1


@needs_nginx
def test_idle_workers_take_calls_in_turn(cluster):
    make_worker, serve = cluster
    a, b = make_worker("a"), make_worker("b")
    channel, _ = serve([a.path, b.path])
    answers = [channel.unary_unary(IDENTIFY)(b"x", timeout=10) for _ in range(6)]
    assert sorted(answers) == [b"a:x"] * 3 + [b"b:x"] * 3


@needs_nginx
def test_a_health_watch_held_open_does_not_count_as_work(cluster):
    make_worker, serve = cluster
    a, b = make_worker("a"), make_worker("b")
    channel, _ = serve([a.path, b.path])
    watches = [channel.unary_stream("/grpc.health.v1.Health/Watch")(b"", timeout=30) for _ in range(2)]
    assert [next(w) for w in watches] == [b"serving"] * 2  # held open, on one worker or both
    answers = [channel.unary_unary(IDENTIFY)(b"x", timeout=10) for _ in range(6)]
    assert sorted(answers) == [b"a:x"] * 3 + [b"b:x"] * 3  # still in turn: the watches are not calls in flight
    for w in watches:
        w.cancel()


@needs_nginx
def test_status_details_and_trailing_metadata_come_back_unchanged(cluster):
    make_worker, serve = cluster

    def refuse(request, context):
        context.set_trailing_metadata((("x-earworm-why", "too short"),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the recording is 0.2 s long; at least 1 s is needed")

    channel, _ = serve([make_worker("w", refuse).path])
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(IDENTIFY)(b"short", timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "the recording is 0.2 s long; at least 1 s is needed"
    assert ("x-earworm-why", "too short") in [(m.key, m.value) for m in e.value.trailing_metadata()]


@needs_nginx
def test_metadata_and_the_deadline_reach_the_worker(cluster):
    make_worker, serve = cluster
    w = make_worker("w")
    channel, _ = serve([w.path])
    channel.unary_unary(IDENTIFY)(b"x", timeout=5, metadata=(("authorization", "Bearer s3cret"), ("x-n-bin", b"\x00\x01")))
    request, metadata, remaining = w.seen[0]
    assert request == b"x" and metadata["authorization"] == "Bearer s3cret" and metadata["x-n-bin"] == b"\x00\x01"
    assert 3.0 < remaining <= 5.1  # (gRPC rounds deadlines to its clock)
    channel.unary_unary(IDENTIFY)(b"y")  # no deadline: none at the worker either
    assert w.seen[1][2] is None or w.seen[1][2] > 1e6


@needs_nginx
def test_a_large_recording_passes_whole(cluster):
    make_worker, serve = cluster
    channel, _ = serve([make_worker("w").path])
    audio = bytes(range(256)) * 3000  # 768 kB, under the 1 MB limit
    assert channel.unary_unary(IDENTIFY)(audio, timeout=10) == b"w:" + audio


@needs_nginx
def test_a_recording_over_the_workers_limit_is_refused_by_them_not_unknown(cluster):
    make_worker, serve = cluster
    channel, _ = serve([make_worker("w", max_receive=100_000).path])
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(IDENTIFY)(bytes(300_000), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "100000" in e.value.details()


@needs_nginx
def test_a_stream_is_forwarded_both_ways(cluster):
    make_worker, serve = cluster
    channel, _ = serve([make_worker("w").path])
    answers = list(channel.stream_stream(STREAM)(iter([b"a", b"b", b"c"]), timeout=10))
    assert answers == [b"w#0:a", b"w#1:b", b"w#2:c"]


@needs_nginx
def test_an_unreachable_worker_is_passed_over(cluster, tmp_path):
    make_worker, serve = cluster
    live = make_worker("live")
    channel, _ = serve([tmp_path / "gone.sock", live.path])  # a worker being restarted
    answers = [channel.unary_unary(IDENTIFY)(b"x", timeout=10) for _ in range(4)]
    assert answers == [b"live:x"] * 4


@needs_nginx
def test_when_no_worker_is_reachable_the_client_hears_unavailable(cluster, tmp_path):
    _, serve = cluster
    channel, _ = serve([tmp_path / "a.sock", tmp_path / "b.sock"])
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary(IDENTIFY)(b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


@needs_nginx
def test_an_unknown_method_is_unimplemented(cluster):
    make_worker, serve = cluster
    channel, _ = serve([make_worker("w").path])
    with pytest.raises(grpc.RpcError) as e:
        channel.unary_unary("/earworm.v1.Recognizer/Nope")(b"x", timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


@needs_nginx
def test_a_call_the_client_cancels_is_cancelled_at_the_worker(cluster):
    make_worker, serve = cluster
    started = threading.Event()

    def hang(request, context):
        started.set()
        while context.is_active():
            time.sleep(0.01)
        return b""

    w = make_worker("w", hang)
    channel, _ = serve([w.path])
    call = channel.unary_unary(IDENTIFY).future(b"x", timeout=30)
    assert started.wait(10)
    call.cancel()
    assert w.cancelled.wait(10)


@needs_nginx
def test_tls_ends_at_nginx(cluster, tls_pair):
    make_worker, serve = cluster
    cert, key = tls_pair
    worker = make_worker("plain")  # the worker's socket has no TLS
    channel, _ = serve([worker.path], tls_cert=cert, tls_key=key)
    assert channel.unary_unary(IDENTIFY)(b"x", timeout=10) == b"plain:x"


@needs_nginx
def test_a_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        balancer = NginxBalancer("127.0.0.1", busy.getsockname()[1], [tmp_path / "w.sock"], tmp_path / "run",
                                 max_body_bytes=1 << 20)
        try:
            with pytest.raises(BalancerError, match="nginx exited"):
                balancer.start(timeout=20)
            assert not balancer.is_alive()
        finally:
            balancer.stop(grace=0)


def test_without_nginx_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    import serving.balancer

    monkeypatch.setattr(serving.balancer, "find_nginx", lambda: None)
    balancer = NginxBalancer("127.0.0.1", _free_port(), [tmp_path / "w.sock"], tmp_path / "run", max_body_bytes=1 << 20)
    with pytest.raises(BalancerError, match="setup.sh.*--processes 1"):
        balancer.start()


def test_the_config_sends_calls_to_the_least_busy_worker_and_keeps_its_files_in_the_run_dir(tmp_path):
    conf = nginx_config("0.0.0.0", 50051, [tmp_path / "w0.sock", tmp_path / "w1.sock"], tmp_path,
                        max_body_bytes=9 << 20)
    assert "least_conn;" in conf and f"server unix:{tmp_path / 'w1.sock'};" in conf
    assert "listen 0.0.0.0:50051 http2 reuseport;" in conf and "ssl" not in conf
    assert "client_max_body_size 0;" in conf and f"pid {tmp_path / 'nginx.pid'};" in conf
    assert f"client_body_temp_path {tmp_path / 'client_body'};" in conf
    assert "listen [::1]:7 http2 reuseport;" in nginx_config("::1", 7, ["w"], tmp_path, max_body_bytes=1)
    assert "listen [::]:7 http2 reuseport ipv6only=off;" in nginx_config("[::]", 7, ["w"], tmp_path, max_body_bytes=1)
    with pytest.raises(ValueError, match="at least one"):
        nginx_config("h", 1, [], tmp_path, max_body_bytes=1)
    with pytest.raises(ValueError, match="both"):
        nginx_config("h", 1, ["w"], tmp_path, max_body_bytes=1, tls_cert=tmp_path / "c.pem")
