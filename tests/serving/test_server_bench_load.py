"""serving.apps.bench_load: the load driver and the synthetic index it can build (functional checks only;
the figures themselves come from running `earworm bench-load`)."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np

from data_gen.synth.test_signals import hum_like_audio
from serving.apps.bench_load import LoadBenchConfig, build_synthetic_index, run_load
from tests.serving.conftest import loader_for


def test_hum_like_audio_is_deterministic_and_valid():
    from data_gen.audio import validate_audio

    a, b = hum_like_audio(3.0, seed=5), hum_like_audio(3.0, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (48_000,) and not np.array_equal(a, hum_like_audio(3.0, seed=6))
    validate_audio(a, min_seconds=2.0)


def test_synthetic_index_has_the_model_version_and_is_reused(tmp_path):
    from serving.index import WindowIndex

    path = build_synthetic_index(tmp_path / "syn", tracks=40, model_version="m-123", windows_per_track=15, seed=1)
    index = WindowIndex.load(path)
    assert index.metadata.model_version == "m-123"
    assert index.num_tracks == 40 and 10 * 40 <= index.num_windows <= 20 * 40
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)
    mtime = (path / "metadata.json").stat().st_mtime
    assert build_synthetic_index(path, 40, "m-123", 15, 1) == path
    assert (path / "metadata.json").stat().st_mtime == mtime
    # one cached under older searcher settings gets today's searcher over the same windows
    import json

    meta = json.loads((path / "metadata.json").read_text())
    meta["config"]["searcher"]["target_recall"] = 0.5
    (path / "metadata.json").write_text(json.dumps(meta))
    assert build_synthetic_index(path, 40, "m-123", 15, 1) == path
    again = WindowIndex.load(path)
    assert again.metadata.config["searcher"]["target_recall"] == 0.95
    np.testing.assert_array_equal(again.embeddings, index.embeddings)
    assert not path.with_name("syn.tmp").exists() and not path.with_name("syn.old").exists()


def test_run_load_reports_requests_errors_memory_and_server_view(server_factory, embedder, index_dir):
    from serving.index import WindowIndex

    server, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)))
    config = LoadBenchConfig(clients=2, seconds=1.0, query_seconds=5.0, distinct_queries=2, warmup_requests=1)
    result = run_load(target, config, server_pid=os.getpid(), metrics=server.metrics)
    assert result.requests > 0 and result.errors == {}
    assert result.server["codes"] == {"OK": result.server["requests"]}
    assert result.server["requests"] >= result.requests  # the server also counts the last in-flight ones
    assert set(result.rss_mb) == {"start", "25%", "50%", "75%", "end", "max"}
    assert result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]
    assert result.server_cpu_ms_per_request > 0
    json.dumps(result.__dict__)  # the --json-out payload is serialisable


def test_clients_back_off_and_retry_when_the_server_is_busy(server_factory, embedder, index_dir):
    """At the admission limit the server answers RESOURCE_EXHAUSTED at once; the benchmark's clients
    retry after a back-off (counted) instead of reporting an error or spinning on rejections."""
    from serving.index import WindowIndex

    server, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)),
                                    servicer={"max_concurrent_identify": 1})
    config = LoadBenchConfig(clients=3, seconds=1.5, query_seconds=5.0, distinct_queries=2, warmup_requests=0)
    result = run_load(target, config, metrics=server.metrics)
    assert result.requests > 0 and result.errors == {}
    assert result.busy_retries > 0
    rejected = result.server["codes"].get("RESOURCE_EXHAUSTED", 0)
    assert rejected >= result.busy_retries - 3  # every retry followed a rejection (a last one may be in flight)
    assert rejected < 20 * result.server["codes"]["OK"]  # backed off, not a spin


def test_one_channel_clients_share_one_connection(server_factory, embedder, index_dir, monkeypatch):
    """--one-channel: every client thread calls through one RecognizerClient (one connection), as an
    application server does; by default each client has its own."""
    import serving.client
    from serving.apps.bench_load import _drive_clients
    from serving.index import WindowIndex

    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)))
    made = []

    class Counting(serving.client.RecognizerClient):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(serving.client, "RecognizerClient", Counting)
    config = LoadBenchConfig(clients=3, seconds=0.5, query_seconds=5.0, distinct_queries=2, warmup_requests=1)
    for one_channel, expected in ((True, 1), (False, 3)):
        made.clear()
        figures = _drive_clients(target, replace(config, one_channel=one_channel), None, lambda: None)
        assert len(made) == expected and figures.latencies_ms and not figures.errors


def test_the_figures_end_with_the_machines_speed():
    from serving.apps.bench_load import LoadResult, format_result
    from serving.apps.machine_speed import one_thread_matmul_gflops

    gflops = one_thread_matmul_gflops(n=128, repeats=3)
    assert 0.1 < gflops < 10_000
    result = LoadResult(clients=4, seconds=30.0, requests=1500, throughput_rps=50.0,
                        latency_ms={"p50": 78.0, "p95": 96.0, "p99": 108.0, "mean": 78.5, "max": 130.0},
                        errors={}, matmul_gflops=95.04)
    text = format_result(result, 10.0)
    assert text.splitlines()[-1] == "machine: one-thread float32 matmul 95.0 GFLOP/s (this process, before the run)"
    assert "machine:" not in format_result(LoadResult(4, 30.0, 0, 0.0, {}, {}), 10.0)  # a result made without it
