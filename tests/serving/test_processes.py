"""`earworm serve --processes N`: several real server processes behind one port (serving.processes),
each call sent by nginx to the least busy one (serving.balancer; its own tests: test_balancer.py)."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import replace

import psutil
import pytest

from serving.processes import ServerProcesses, auto_processes, serving_processes, worker_config
from serving.server import ServerError
from tests.serving.conftest import TRACK_IDS, run_cli


def _identify_requests(metrics_port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "earworm_requests_total" and s.labels.get("method") == "Identify")


def test_the_balancer_spreads_one_clients_calls_over_the_processes(base_config, good_query, monkeypatch):
    import os
    import signal
    import time

    import serving.processes
    from serving.client import RecognizerClient

    import json

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from data_gen.audio import encode_audio

    group = ServerProcesses(replace(base_config, metrics_port=0, http_port=0), 2)
    group.start()
    pids = list(group.pids)
    try:
        assert len(set(pids)) == 3 and group.balancer_pid in pids  # two workers and nginx
        assert len(group.metrics_ports) == 2 and group.port > 0 and group.http_port > 0
        with RecognizerClient(f"127.0.0.1:{group.port}", timeout=60) as client:  # one connection
            for _ in range(16):
                assert client.identify_audio(good_query, top_k=1).matches[0].track_id == TRACK_IDS[1]
        counts = [_identify_requests(p) for p in group.metrics_ports]
        assert sum(counts) == 16 and min(counts) >= 4, counts  # calls, not connections, are spread
        with grpc.insecure_channel(f"127.0.0.1:{group.port}") as channel:  # health through the balancer
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        dead = group.balancer_pid
        os.kill(dead, signal.SIGKILL)  # nginx dies: it is started again
        deadline = time.monotonic() + 10
        while group.balancer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        monkeypatch.setattr(serving.processes, "CRASH_LOOP_S", 0.0)
        group.supervise_once()
        assert group.balancer.is_alive() and group.balancer_pid != dead
        with RecognizerClient(f"127.0.0.1:{group.port}", timeout=60) as client:
            assert client.identify_audio(good_query, top_k=1).matches[0].track_id == TRACK_IDS[1]
        pids = list(group.pids)
        for _ in range(2):  # the HTTP API shares its port the same way
            request = urllib.request.Request(f"http://127.0.0.1:{group.http_port}/v1/identify?top_k=1",
                                             data=encode_audio(good_query), headers={"Content-Type": "audio/wav"})
            with urllib.request.urlopen(request, timeout=60) as r:
                assert json.loads(r.read())["matches"][0]["track_id"] == TRACK_IDS[1]
    finally:
        group.stop(grace=1.0)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


def test_a_worker_that_cannot_load_stops_the_group_with_its_reason(make_index, base_config, tmp_path):
    other = tmp_path / "other_index"
    make_index(model_version="another-model-v7").save(other)
    group = ServerProcesses(replace(base_config, index_dir=other), 2)
    with pytest.raises(ServerError, match="another-model-v7"):
        group.start(timeout=300)
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in group.pids)


def test_a_port_held_by_another_program_is_refused_before_any_worker_starts(base_config):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        group = ServerProcesses(replace(base_config, port=busy.getsockname()[1]), 2)
        with pytest.raises(ServerError, match="cannot listen"):
            group.start()
        assert group.pids == []


def test_worker_configs_listen_on_their_sockets_share_http_and_number_their_metrics(base_config, tmp_path):
    tls = replace(base_config, metrics_port=9100, tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    cfg = worker_config(tls, 1, "/run/e/worker-1.sock", 8080)
    assert (cfg.bind, cfg.http_port, cfg.metrics_port, cfg.reuse_port) == ("unix:/run/e/worker-1.sock", 8080, 9101, True)
    assert cfg.tls_cert is None and cfg.tls_key is None  # TLS ends at the balancer
    assert worker_config(replace(base_config, metrics_port=0), 3, "w.sock", None).metrics_port == 0  # any free port
    assert 1 <= auto_processes() <= 4
    with pytest.raises(ServerError, match=">= 1"):
        ServerProcesses(base_config, 0)
    assert serving_processes(None, base_config) == auto_processes() and serving_processes(2, base_config) == 2
    lite = replace(base_config, index_backend="milvus", milvus_uri="artifacts/milvus/earworm.db")
    assert serving_processes(None, lite) == 1  # a Milvus Lite file opens in one process at a time
    with pytest.raises(ValueError, match="Milvus Lite"):
        serving_processes(3, lite)
    cluster = replace(lite, milvus_uri="http://milvus:19530")
    assert serving_processes(None, cluster) == auto_processes()


def test_serve_refuses_a_bad_process_count(untrained_model_dir, index_dir, capsys):
    with pytest.raises(SystemExit):
        run_cli(["serve", "--model", str(untrained_model_dir), "--index", str(index_dir), "--processes", "0"])
    assert "--processes" in capsys.readouterr().err


def test_serve_command_runs_the_processes_until_sigterm(untrained_model_dir, index_dir, good_query, tmp_path):
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from serving.client import RecognizerClient

    log_path = tmp_path / "serve.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("EARWORM_AUTH_TOKEN", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "serving.apps.earworm", "serve", "--model", str(untrained_model_dir),
                                 "--index", str(index_dir), "--host", "127.0.0.1", "--port", "0", "--processes", "2",
                                 "--watch-index", "0"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (found := re.search(r"serving on port (\d+) with 2 processes", log_path.read_text(errors="replace"))):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) >= 2
        with RecognizerClient(f"127.0.0.1:{found.group(1)}", timeout=60) as client:
            assert client.identify_audio(good_query, top_k=1).matches[0].track_id == TRACK_IDS[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        _, alive = psutil.wait_procs(workers, timeout=30)  # multiprocessing's helper leaves with its parent
        assert not alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
