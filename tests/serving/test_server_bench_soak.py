"""serving.apps.bench_soak: the soak and the worst-request phase run end to end for a few seconds against a
real `earworm serve` child process (functional checks only; the figures come from running
`earworm bench-soak` for minutes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serving.apps.bench_soak import (
    DEFAULT_MIX,
    INVALID,
    SOAK_KINDS,
    SoakConfig,
    bad_payloads,
    parse_mix,
    run_soak,
)
from tests.serving.conftest import run_cli


@pytest.fixture(scope="module")
def small_index(untrained_model_dir, tmp_path_factory):
    from serving.apps.bench_load import build_synthetic_index
    from serving.embedder import ModelMetadata

    version = ModelMetadata.read(untrained_model_dir).version
    return build_synthetic_index(tmp_path_factory.mktemp("soak") / "syn", tracks=20, model_version=version,
                                 windows_per_track=10, seed=3)


def test_mix_parsing():
    mix = dict(parse_mix("good=1,oversize=0"))
    assert mix["good"] == 1 and mix["oversize"] == 0 and mix["bad_header"] == DEFAULT_MIX["bad_header"]
    assert set(mix) == set(SOAK_KINDS)
    for bad in ("nonsense=1", "good", "good=-1", "good=x"):
        with pytest.raises(Exception):
            parse_mix(bad)


def test_inputs_expected_to_be_refused_are_refused_by_the_decoder():
    """The soak's expectations agree with data_gen.audio: an encoded input marked "refused" does not decode."""
    from data_gen import constants as C
    from data_gen.audio import AudioError, decode_audio

    checked = 0
    for kind, payloads in bad_payloads(seed=0).items():
        for p in payloads:
            audio = p.request.audio
            if p.expected != {INVALID} or audio.WhichOneof("content") != "encoded" or p.request.top_k:
                continue
            with pytest.raises(AudioError):
                decode_audio(audio.encoded, min_seconds=C.MIN_QUERY_SECONDS, max_seconds=C.MAX_QUERY_SECONDS)
            checked += 1
    assert checked >= 15


def test_a_dead_server_is_reported_as_a_crash_not_raised():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    try:
        config = SoakConfig(clients=1, seconds=20.0, swap_every_s=0, query_seconds=3.0, distinct_queries=1,
                            mix=(("good", 1.0),), timeout_s=2.0)
        result = run_soak("127.0.0.1:9", config, server_pid=sleeper.pid)
    finally:
        sleeper.wait()
    assert result.crashes == 1 and not result.ok and result.seconds < 15
    assert set(result.unexpected["good"]) == {"UNAVAILABLE"}


def test_soak_with_swaps_has_no_crash_and_no_unexpected_code(untrained_model_dir, small_index, tmp_path):
    out = tmp_path / "soak.json"
    mix = "good=4,good_pitch=1,stream_short=2,stream_idle=2,bad_random=1,bad_truncated=1,bad_header=2,bad_empty=1,oversize=1"
    rc = run_cli(["bench-soak", "--model", str(untrained_model_dir), "--index", str(small_index), "--clients", "3",
                  "--seconds", "5", "--swap-every", "1.5", "--watch-index", "0.3", "--stream-idle-seconds", "1",
                  "--query-seconds", "4", "--mix", mix, "--work-dir", str(tmp_path / "work"), "--json-out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0, report
    assert report["crashes"] == 0 and report["crash"] is None and report["ok"] is True
    assert report["unexpected_total"] == 0 and report["unexpected"] == {}, report["unexpected_examples"]
    assert report["requests"] == sum(k["requests"] for k in report["by_kind"].values()) >= 5
    assert set(report["by_kind"]) <= set(SOAK_KINDS) and report["by_kind"]["good"]["codes"].get("OK", 0) > 0
    assert report["good_latency_ms"]["p50"] <= report["good_latency_ms"]["p99"]
    swaps = report["swaps"]
    assert swaps["done"] >= 2 and swaps["served"] == swaps["done"] and not swaps["errors"]
    assert report["server_log"]["tracebacks"] == 0
    rss = report["rss_mb"]
    assert rss["idle_start"] > 0 and rss["run_max"] >= rss["run_start"] > 0 and rss["hwm"] >= rss["run_start"]
    assert (tmp_path / "work" / "server.log").is_file()


def test_worst_requests_report_codes_and_peak_memory(untrained_model_dir, small_index, tmp_path):
    out = tmp_path / "worst.json"
    rc = run_cli(["bench-soak", "--model", str(untrained_model_dir), "--index", str(small_index), "--worst",
                  "--worst-kinds", "pcm_max,wav_header_huge,oversize", "--json-out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0, report
    assert report["crashes"] == 0 and report["unexpected"] == 0 and report["idle_rss_mb"] > 0
    rows = {r["kind"]: r for r in report["kinds"]}
    assert list(rows) == ["pcm_max", "wav_header_huge", "oversize"]
    assert rows["pcm_max"]["code"] == "OK" and rows["oversize"]["code"] == "RESOURCE_EXHAUSTED"
    for r in rows.values():
        assert r["peak_mb"] >= r["rss_before_mb"] > 0 and r["ratio_to_idle"] > 0.5
