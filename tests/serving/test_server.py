"""The Recognizer server end to end: a real gRPC server on a free port, real model and index."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import soxr

from data_gen import constants as C
from data_gen.audio import encode_audio
from protos.earworm.v1 import recognizer_pb2 as pb
from protos.earworm.v1 import recognizer_pb2_grpc as pb_grpc
from tests.conftest import sung_tone
from tests.serving.conftest import TRACK_IDS, loader_for, run_cli


def _stub(target: str) -> pb_grpc.RecognizerStub:
    return pb_grpc.RecognizerStub(grpc.insecure_channel(target))


def _pcm(samples: np.ndarray, rate: int = C.SAMPLE_RATE, encoding=pb.PCM_ENCODING_F32LE, channels=1):
    dtype = "<f4" if encoding == pb.PCM_ENCODING_F32LE else "<i2"
    data = samples.astype(dtype).tobytes() if dtype == "<f4" else (samples * 32767).astype(dtype).tobytes()
    return pb.Audio(pcm=pb.RawPcm(data=data, sample_rate_hz=rate, channels=channels, encoding=encoding))


def _code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# --- Identify ---------------------------------------------------------------------------------
def test_identify_good_recording_names_its_track(target, good_query, live_server):
    stub = _stub(target)
    response = stub.Identify(pb.IdentifyRequest(audio=pb.Audio(encoded=encode_audio(good_query)), top_k=3),
                             timeout=20)
    assert [m.rank for m in response.matches] == [1, 2, 3]
    best = response.matches[0]
    assert best.track_id == TRACK_IDS[1]
    assert best.title == f"Title {TRACK_IDS[1]}"
    assert best.score > 0.95  # its windows are the master's own windows
    assert abs(best.offset_seconds - 4.0) <= 1.0
    assert response.audio_seconds == pytest.approx(10.0, abs=0.01)
    server = live_server[0]
    assert response.model_version == server.components.embedder.version
    assert response.index_version == server.components.index.metadata.version
    assert response.no_match_threshold > 0
    assert response.no_match_reason == pb.NO_MATCH_REASON_UNSPECIFIED
    assert response.melody.distinct_notes >= 3 and response.melody.explanation == ""


@pytest.mark.parametrize("name", ["sine_440hz", "constant", "white_noise", "clicks_2hz"])
def test_identify_answers_no_melody_to_audio_without_one(target, name):
    from data_gen.synth.no_melody import signals

    audio = signals(seconds=10.0)[name]
    response = _stub(target).Identify(pb.IdentifyRequest(audio=pb.Audio(encoded=encode_audio(audio))), timeout=20)
    assert response.no_match and response.no_match_reason == pb.NO_MATCH_REASON_NO_MELODY
    assert len(response.matches) == 0  # no ranked list that claims a match
    assert response.melody.explanation.startswith("no melody heard")


@pytest.mark.parametrize("rate", [1, 3_999, 384_001])
def test_pcm_at_a_rate_no_recording_has_is_refused(target, rate):
    pcm = pb.RawPcm(data=np.array([16000, -16000] * 1000, "<i2").tobytes(), sample_rate_hz=rate,
                    encoding=pb.PCM_ENCODING_S16LE)
    with pytest.raises(grpc.RpcError) as e:
        _stub(target).Identify(pb.IdentifyRequest(audio=pb.Audio(pcm=pcm)), timeout=20)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "between 4,000 and 384,000" in e.value.details()


def test_identify_raw_pcm_at_another_rate_and_stereo(client, good_query):
    import soxr

    at_44k = soxr.resample(good_query, C.SAMPLE_RATE, 44_100).astype(np.float32)
    result = client.identify_audio(np.stack([at_44k, at_44k], axis=1), sample_rate=44_100, top_k=2)
    assert result.matches[0].track_id == TRACK_IDS[1]
    assert len(result.matches) == 2


def test_identify_a_phone_voice_memo_m4a(target, good_query):
    """Audio.encoded as phones record it (M4A/AAC at 44.1 kHz): decoded by FFmpeg in the server."""
    from tests.conftest import ffmpeg_encode

    at_44k = soxr.resample(good_query, C.SAMPLE_RATE, 44_100).astype(np.float32)
    m4a = ffmpeg_encode(at_44k, 44_100, "ipod", "aac")
    response = _stub(target).Identify(pb.IdentifyRequest(audio=pb.Audio(encoded=m4a), top_k=3), timeout=20)
    assert response.matches[0].track_id == TRACK_IDS[1]
    assert abs(response.matches[0].offset_seconds - 4.0) <= 1.0
    assert response.audio_seconds == pytest.approx(10.0, abs=0.1)  # AAC pads the last frame


def test_default_top_k_is_ten_or_all_tracks(client, good_query):
    result = client.identify_audio(good_query)  # top_k 0 -> server default
    assert len(result.matches) == len(TRACK_IDS)  # only 3 tracks in the index (< default 10)


TONE = sung_tone((57, 60, 64, 62, 65, 67, 64, 60, 62, 57), note_s=0.5)  # 5 s of a tune
NAN_TONE = TONE.copy()
NAN_TONE[1000] = np.nan

BAD_REQUESTS = {
    "empty": (pb.IdentifyRequest(audio=pb.Audio(encoded=b"")), "empty"),
    "undecodable": (pb.IdentifyRequest(audio=pb.Audio(encoded=b"RIFF not really a wav file" * 20)),
                    "could not be decoded"),
    "too_short": (pb.IdentifyRequest(audio=pb.Audio(encoded=encode_audio(TONE[: C.SAMPLE_RATE]))),
                  "at least"),
    "too_long": (pb.IdentifyRequest(audio=_pcm(np.tile(TONE, 13), encoding=pb.PCM_ENCODING_S16LE)),
                 "at most"),
    "silent": (pb.IdentifyRequest(audio=pb.Audio(encoded=encode_audio(np.zeros(5 * C.SAMPLE_RATE)))),
               "silent"),
    "nan_float_pcm": (pb.IdentifyRequest(audio=_pcm(NAN_TONE)), "NaN"),
    "top_k_negative": (pb.IdentifyRequest(audio=_pcm(TONE), top_k=-1), "top_k"),
    "top_k_too_big": (pb.IdentifyRequest(audio=_pcm(TONE), top_k=101), "top_k"),
    "sample_rate_zero": (pb.IdentifyRequest(audio=_pcm(TONE, rate=0)), "sample_rate"),
    "sample_rate_negative": (pb.IdentifyRequest(audio=_pcm(TONE, rate=-16000)), "sample_rate"),
    "sample_rate_huge": (pb.IdentifyRequest(audio=_pcm(TONE, rate=10_000_000)), "sample_rate"),
    "bad_encoding": (pb.IdentifyRequest(audio=_pcm(TONE, encoding=7)), "encoding"),
    "bad_channels": (pb.IdentifyRequest(audio=_pcm(TONE, channels=-2)), "channels"),
    "odd_pcm_length": (pb.IdentifyRequest(audio=pb.Audio(pcm=pb.RawPcm(data=b"\x00\x01\x02", sample_rate_hz=16000))),
                       "whole number"),
    "missing_audio": (pb.IdentifyRequest(top_k=3), "no audio"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_with_a_human_message(target, case):
    request, expected_text = BAD_REQUESTS[case]
    code, details = _code_of(lambda: _stub(target).Identify(request, timeout=20))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected_text.lower() in details.lower()


def test_oversize_audio_is_resource_exhausted_with_a_clear_message(server_factory, embedder, index_dir):
    from serving.index import WindowIndex

    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)),
                               servicer={"max_audio_bytes": 100_000})
    just_over = pb.IdentifyRequest(audio=pb.Audio(encoded=b"\x00" * 150_000))
    code, details = _code_of(lambda: _stub(target).Identify(just_over, timeout=20))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 0.1 MB" in details
    far_over = pb.IdentifyRequest(audio=pb.Audio(encoded=b"\x00" * 3_000_000))  # beyond the transport cap
    code, _ = _code_of(lambda: _stub(target).Identify(far_over, timeout=20))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unexpected_failure_is_internal_never_unknown(server_factory, embedder, index_dir):
    from serving.index import WindowIndex

    calls = []

    def broken(windows):  # works for the server's warm-up, then fails
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom: secret internals")
        return embedder.embed_windows(windows)

    server, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir), embed_windows=broken))
    code, details = _code_of(lambda: _stub(target).Identify(pb.IdentifyRequest(audio=_pcm(TONE)), timeout=20))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in details
    assert server.metrics.snapshot().codes.get("INTERNAL") == 1


def test_deadline_exceeded_when_embedding_outlives_the_deadline(server_factory, embedder, index_dir):
    from serving.index import WindowIndex

    release = threading.Event()
    calls = []

    def slow(windows):  # quick for the server's warm-up, then slower than the client's deadline
        calls.append(1)
        if len(calls) > 1:
            release.wait(5)
        return embedder.embed_windows(windows)

    server, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir), embed_windows=slow))
    code, _ = _code_of(lambda: _stub(target).Identify(pb.IdentifyRequest(audio=_pcm(TONE)), timeout=0.3))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    release.set()
    for _ in range(100):  # the server answers the late request itself, as DEADLINE_EXCEEDED
        if server.metrics.snapshot().total:
            break
        time.sleep(0.05)
    assert server.metrics.snapshot().codes == {"DEADLINE_EXCEEDED": 1}


# --- health, reflection, loading -------------------------------------------------------------
def _health(target: str, service: str = "") -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_not_serving_until_model_and_index_are_loaded(server_factory, embedder, index_dir):
    from grpc_health.v1 import health_pb2

    from serving.index import WindowIndex

    index = WindowIndex.load(index_dir)
    gate = threading.Event()
    inner = loader_for(embedder, index)

    def slow_loader(config):
        gate.wait(10)
        return inner(config)

    server, target = server_factory(loader=slow_loader, wait=False)
    assert _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _health(target, "earworm.v1.Recognizer") == health_pb2.HealthCheckResponse.NOT_SERVING
    code, details = _code_of(lambda: _stub(target).Identify(pb.IdentifyRequest(audio=_pcm(TONE)), timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE and "loading" in details
    gate.set()
    server.wait_until_ready(10)
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING
    assert _health(target, "earworm.v1.Recognizer") == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_recognizer_service(target):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(target))
    services = set(db.get_services())
    assert {"earworm.v1.Recognizer", "grpc.health.v1.Health"} <= services
    methods = {m.name for m in db.FindFileContainingSymbol("earworm.v1.Recognizer").service[0].method}
    assert methods == {"Identify", "StreamIdentify"}


def test_refuses_to_start_when_index_was_built_with_another_model(server_factory, make_index, tmp_path):
    from serving.server import ServerError

    other = tmp_path / "other_index"
    make_index(model_version="someone-elses-model-123").save(other)
    with pytest.raises(ServerError, match="someone-elses-model-123"):
        server_factory(index_dir=other)


def test_serve_command_exits_nonzero_with_the_mismatch_explained(make_index, untrained_model_dir, tmp_path,
                                                                  capsys):
    other = tmp_path / "other_index"
    make_index(model_version="another-model-v9").save(other)
    rc = run_cli(["serve", "--model", str(untrained_model_dir), "--index", str(other), "--port", "0",
               "--host", "127.0.0.1"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "another-model-v9" in err and "earworm serve:" in err


# --- auth and TLS ------------------------------------------------------------------------------
def test_bearer_token_is_required_when_set(server_factory, embedder, index_dir, good_query):
    from grpc_health.v1 import health_pb2

    from serving.client import ClientError, RecognizerClient
    from serving.index import WindowIndex

    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), auth_token="s3cret")
    for token in (None, "wrong"):
        with RecognizerClient(target, token=token) as c:
            with pytest.raises(ClientError) as info:
                c.identify_audio(good_query)
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(ClientError) as info:
                list(c.stream(good_query))
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with RecognizerClient(target, token="s3cret") as c:
        assert c.identify_audio(good_query).matches[0].track_id == TRACK_IDS[1]
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING  # health is exempt


def test_tls(server_factory, embedder, index_dir, good_query, tls_pair):
    from serving.client import RecognizerClient
    from serving.index import WindowIndex

    cert, key = tls_pair
    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), tls_cert=cert,
                               tls_key=key, host="localhost")
    port = target.rsplit(":", 1)[1]
    with RecognizerClient(f"localhost:{port}", tls_ca=cert) as c:
        assert c.identify_audio(good_query).matches[0].track_id == TRACK_IDS[1]


# --- StreamIdentify ----------------------------------------------------------------------------
def _stream_requests(samples, chunk_s=0.25, config=None):
    cfg = config or pb.StreamConfig(sample_rate_hz=C.SAMPLE_RATE, encoding=pb.PCM_ENCODING_S16LE)
    yield pb.StreamIdentifyRequest(config=cfg)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    step = int(chunk_s * C.SAMPLE_RATE)
    for i in range(0, pcm.size, step):
        yield pb.StreamIdentifyRequest(audio_chunk=pcm[i : i + step].tobytes())


def test_stream_sends_interims_then_a_final_answer_when_the_client_closes(server_factory, embedder,
                                                                          index_dir, masters):
    from serving.index import WindowIndex

    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)),
                               servicer={"confident_margin": 10.0})  # never final early
    audio = masters[TRACK_IDS[2]][: 7 * C.SAMPLE_RATE]
    answers = list(_stub(target).StreamIdentify(_stream_requests(audio), timeout=30))
    interims = [a for a in answers if not a.is_final]
    assert [round(a.result.audio_seconds) for a in interims] == [2, 4, 6]  # every 2 s of audio
    assert answers[-1].is_final and sum(a.is_final for a in answers) == 1
    assert answers[-1].result.audio_seconds == pytest.approx(7.0, abs=0.01)
    assert answers[-1].result.matches[0].track_id == TRACK_IDS[2]


def test_stream_ends_early_once_confident_and_stable(server_factory, embedder, index_dir, masters):
    from serving.client import RecognizerClient
    from serving.index import WindowIndex
    from serving.retrieval_types import RetrievalConfig

    # The query as sung only: in resampled tempo views of 2-3 s of audio, the untrained test model
    # scores every track alike (~0.99), so the early stop would wait for more audio (tested below).
    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir),
                                                 RetrievalConfig(query_tempo_rates=(1.0,))))
    audio = masters[TRACK_IDS[0]][: 16 * C.SAMPLE_RATE]
    with RecognizerClient(target, timeout=20) as client:
        answers = list(client.stream(audio, chunk_seconds=0.5, interim_interval_seconds=1.0))
    assert answers[-1].is_final and all(not a.is_final for a in answers[:-1])
    assert answers[-1].matches[0].track_id == TRACK_IDS[0]
    # exact master audio scores ~1 > threshold + margin from the first interim (2 s) on, but no
    # answer is final before early_final_seconds (6 s): interims at 2, 3, 4, 5 s, final at 6 s
    assert answers[-1].audio_seconds < 16.0
    assert [round(a.audio_seconds) for a in answers] == [2, 3, 4, 5, 6]


def test_stream_answers_like_identify_in_every_tempo_view(server_factory, embedder, index_dir, masters):
    """The stream's per-view window cache (settled windows only) gives the answer Identify gives for
    the same audio, with the default tempo views."""
    from serving.client import RecognizerClient
    from serving.index import WindowIndex

    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)),
                               servicer={"confident_margin": 10.0})  # never final early
    audio = masters[TRACK_IDS[1]][3 * C.SAMPLE_RATE : 12 * C.SAMPLE_RATE]
    with RecognizerClient(target, timeout=30) as client:
        answers = list(client.stream(audio, chunk_seconds=0.7, interim_interval_seconds=1.5))
        whole = client.identify_audio(audio)
    assert len(answers) > 2 and answers[-1].is_final
    got = [(m.track_id, m.score, m.offset_seconds) for m in answers[-1].matches]
    want = [(m.track_id, m.score, m.offset_seconds) for m in whole.matches]
    assert [g[0] for g in got] == [w[0] for w in want] and got[0][0] == TRACK_IDS[1]
    np.testing.assert_allclose([g[1:] for g in got], [w[1:] for w in want], atol=1e-4)


def test_stream_caps_the_audio_at_the_maximum(server_factory, embedder, index_dir, masters):
    from serving.index import WindowIndex

    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)),
                               servicer={"max_query_seconds": 6.0, "confident_margin": 10.0})
    answers = list(_stub(target).StreamIdentify(_stream_requests(masters[TRACK_IDS[1]]), timeout=30))
    assert answers[-1].is_final
    assert answers[-1].result.audio_seconds == pytest.approx(6.0, abs=0.01)


def test_stream_without_config_first_is_invalid(target):
    def requests():
        yield pb.StreamIdentifyRequest(audio_chunk=b"\x00\x00" * 100)

    code, details = _code_of(lambda: list(_stub(target).StreamIdentify(requests(), timeout=10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "config" in details


@pytest.mark.parametrize("cfg, text", [
    (pb.StreamConfig(sample_rate_hz=0), "sample_rate"),
    (pb.StreamConfig(sample_rate_hz=16000, top_k=500), "top_k"),
    (pb.StreamConfig(sample_rate_hz=16000, encoding=9), "encoding"),
    (pb.StreamConfig(sample_rate_hz=16000, interim_interval_seconds=-1), "interim"),
])
def test_stream_bad_config_is_invalid(target, cfg, text):
    code, details = _code_of(lambda: list(_stub(target).StreamIdentify(_stream_requests(TONE, config=cfg),
                                                                       timeout=10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and text in details


def test_stream_too_short_or_silent_is_invalid(target):
    code, details = _code_of(lambda: list(_stub(target).StreamIdentify(_stream_requests(TONE[:8000]), timeout=10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at least" in details
    silent = np.zeros(3 * C.SAMPLE_RATE, np.float32)
    code, details = _code_of(lambda: list(_stub(target).StreamIdentify(_stream_requests(silent), timeout=10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "silent" in details


# --- hot index swap ------------------------------------------------------------------------------
def test_index_swap_under_concurrent_load_fails_no_request(server_factory, embedder, make_index, good_query):
    index_a, index_b = make_index(" (A)"), make_index(" (B)")
    server, target = server_factory(loader=loader_for(embedder, index_a))
    request = pb.IdentifyRequest(audio=pb.Audio(encoded=encode_audio(good_query)), top_k=1)
    stop = threading.Event()
    seen: list[str] = []
    failures: list[BaseException] = []

    def hammer():
        stub = _stub(target)
        while not stop.is_set():
            try:
                r = stub.Identify(request, timeout=20)
                assert r.matches[0].track_id == TRACK_IDS[1]
                assert r.matches[0].title.endswith("(A)" if r.index_version == index_a.version else "(B)")
                seen.append(r.index_version)
            except BaseException as e:  # noqa: BLE001
                failures.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(6):
        while len(seen) < 3 * (i + 1):
            time.sleep(0.01)
        server.swap_index(index_b if i % 2 == 0 else index_a)
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert {index_a.version, index_b.version} <= set(seen)
    assert server.metrics.snapshot().errors == {}
    assert server.metrics.snapshot().extra["index_swaps"] == 6


def test_swap_refuses_an_index_of_another_model(live_server, make_index, client, good_query):
    from serving.servicer import IndexSwapError

    server, _ = live_server
    before = server.servicer.state.index_version
    with pytest.raises(IndexSwapError, match="other-model"):
        server.swap_index(make_index(model_version="other-model"))
    assert server.servicer.state.index_version == before
    assert client.identify_audio(good_query).index_version == before


def test_reload_picks_up_a_new_index_version_on_disk(server_factory, make_index, tmp_path, good_query):
    from serving.client import RecognizerClient

    path = tmp_path / "index"
    make_index(" (v1)").save(path)
    server, target = server_factory(index_dir=path, watch_index_seconds=0.1)
    with RecognizerClient(target) as c:
        first = c.identify_audio(good_query)
        assert first.matches[0].title.endswith("(v1)")
        make_index(model_version="wrong-model").save(path)  # refused: keeps serving v1
        assert server.reload_index() is False
        assert c.identify_audio(good_query).index_version == first.index_version
        v2 = make_index(" (v2)")
        v2.save(path)
        for _ in range(100):  # the watcher polls metadata.json every 0.1 s
            if server.servicer.state.index_version == v2.version:
                break
            time.sleep(0.05)
        second = c.identify_audio(good_query)
    assert second.index_version == v2.version
    assert second.matches[0].title.endswith("(v2)")


# --- batching and metrics -------------------------------------------------------------------------
def test_micro_batching_server_gives_the_same_answers(server_factory, embedder, index_dir, masters):
    from data_gen.windows import cut_query_views
    from serving.client import RecognizerClient
    from serving.index import WindowIndex
    from serving.retrieval_types import RetrievalConfig

    index = WindowIndex.load(index_dir)
    server, target = server_factory(loader=loader_for(embedder, index), batching=True)
    queries = {tid: a[2 * C.SAMPLE_RATE : 10 * C.SAMPLE_RATE] for tid, a in masters.items()}
    results: dict[str, object] = {}

    def ask(tid):
        with RecognizerClient(target) as c:
            results[tid] = c.identify_audio(queries[tid], top_k=1)

    threads = [threading.Thread(target=ask, args=(tid,)) for tid in queries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {tid: r.matches[0].track_id for tid, r in results.items()} == {tid: tid for tid in queries}
    stats = server._embedding.stats()
    per_query = cut_query_views(queries[TRACK_IDS[0]], RetrievalConfig().query_tempo_rates)[0].shape[0]
    assert per_query == 5 + 3 + 4  # 8 s as sung (windows 1 s apart), played 0.8x and 1.25x as long (2 s apart)
    assert stats["embed_requests"] == 3 and stats["embed_windows"] == 3 * per_query


def _scrape(server) -> dict[tuple[str, tuple], float]:
    """The server's /metrics page, fetched over HTTP and parsed by prometheus_client."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_served_for_prometheus(server_factory, embedder, index_dir, good_query):
    from serving.client import ClientError, RecognizerClient
    from serving.index import WindowIndex

    index = WindowIndex.load(index_dir)
    server, target = server_factory(loader=loader_for(embedder, index), metrics_port=0, host="127.0.0.1")
    with RecognizerClient(target) as c:
        c.identify_audio(good_query)
        c.identify_audio(good_query)
        with pytest.raises(ClientError):
            c.identify_bytes(b"junk")
    s = server.metrics.snapshot()
    assert s.requests == {"Identify": 3}
    assert s.codes == {"OK": 2, "INVALID_ARGUMENT": 1}
    assert sum(s.latency_counts) == 3 and s.stage_ms["embed"] > 0
    assert s.audio_seconds_sum == pytest.approx(20.0, abs=0.1)
    m = _scrape(server)
    assert m[("earworm_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "Identify")))] == 1
    assert m[("earworm_requests_total", (("code", "OK"), ("method", "Identify")))] == 2
    assert m[("earworm_request_latency_seconds_bucket", (("le", "+Inf"), ("method", "Identify")))] == 3
    assert m[("earworm_requests_in_progress", (("method", "Identify"),))] == 0
    info = next(k for k in m if k[0] == "earworm_index_info")
    assert dict(info[1])["version"] == index.version and dict(info[1])["model_version"] == embedder.version
    assert m[("earworm_index_reload_failing", ())] == 0
    assert "3 requests" in server.metrics.summary_line()


def test_metrics_port_in_use_is_a_clear_startup_error(server_factory, embedder, index_dir):
    import socket

    from serving.index import WindowIndex
    from serving.server import ServerError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ServerError, match="cannot serve metrics"):
            server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), host="127.0.0.1",
                           metrics_port=busy.getsockname()[1])


@pytest.mark.parametrize("package", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha(target, package):
    """grpcurl and Postman ask for reflection v1 first; grpcio-reflection serves only v1alpha."""
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(f"/grpc.reflection.{package}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=rpb.ServerReflectionResponse.FromString)
        answers = list(call(iter([rpb.ServerReflectionRequest(list_services=""),
                                  rpb.ServerReflectionRequest(file_containing_symbol="earworm.v1.Recognizer")]),
                            timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"earworm.v1.Recognizer", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto  # the Recognizer's .proto, serialized


def test_a_stream_holds_no_more_bytes_than_one_request(server_factory, embedder, index_dir):
    """A stream at 384 kHz x 16 channels of float32 used to be buffered up to 60 s (1,456 MiB)."""
    from serving.index import WindowIndex

    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)),
                               servicer={"max_audio_bytes": 1_000_000})
    cfg = pb.StreamConfig(sample_rate_hz=384_000, channels=16, encoding=pb.PCM_ENCODING_F32LE)
    sent = []

    def requests():
        yield pb.StreamIdentifyRequest(config=cfg)
        for _ in range(40):  # 40 x 256 kB = 10 MB offered; 1 MB is the limit
            sent.append(1)
            yield pb.StreamIdentifyRequest(audio_chunk=b"\x00" * 256_000)

    code, details = _code_of(lambda: list(_stub(target).StreamIdentify(requests(), timeout=30)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the stream's audio so far is 1,024,000 bytes" in details and "at most 1.0 MB" in details
    assert len(sent) < 40  # refused at the limit, not after buffering everything


def test_rejected_calls_are_counted_and_logged(server_factory, embedder, index_dir, good_query, caplog):
    """Over 1,200 UNAUTHENTICATED calls used to leave the server reporting "errors: none"."""
    import logging

    from serving.client import ClientError, RecognizerClient
    from serving.index import WindowIndex

    server, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), auth_token="s3cret")
    with caplog.at_level(logging.WARNING, logger="serving.server"), RecognizerClient(target, token="wrong") as c:
        for _ in range(5):
            with pytest.raises(ClientError):
                c.identify_audio(good_query)
    assert server.metrics.snapshot().codes.get("UNAUTHENTICATED") == 5
    assert "UNAUTHENTICATED=5" in server.metrics.summary_line()
    assert server.metrics.snapshot().timed == 0  # refused before any work: not in the latency histogram
    lines = [r for r in caplog.records if "without the right bearer token" in r.getMessage()]
    assert 1 <= len(lines) < 5  # logged, but not once per call
    with caplog.at_level(logging.WARNING, logger="serving.server"):
        server.stop(grace=0)
    logged = sum(int(r.getMessage().split()[1]) for r in caplog.records
                 if "without the right bearer token" in r.getMessage())
    assert logged == 5  # the last burst is logged at shutdown


def test_closed_by_default_and_the_token_never_on_the_command_line(tmp_path, monkeypatch):
    from serving.cli import read_token
    from serving.server import AUTH_TOKEN_ENV, ServerConfig

    assert ServerConfig().host == "localhost"
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert read_token(secret) == "s3cret"
    monkeypatch.setenv(AUTH_TOKEN_ENV, "from-env")
    assert read_token(None) == "from-env"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        read_token(tmp_path / "empty")
    with pytest.raises(SystemExit):  # there is no flag that takes the secret itself
        run_cli(["serve", "--model", "m", "--index", "i", "--auth-token", "s3cret"])


def test_a_failed_reload_is_retried_and_reported(server_factory, make_index, tmp_path):
    """A version whose files were not all written yet failed once and was never retried: the server
    kept the old index, reported SERVING and showed nothing."""
    import shutil

    path = tmp_path / "index"
    v1 = make_index(" (v1)")
    v1.save(path)
    server, _ = server_factory(index_dir=path, watch_index_seconds=0.05)
    v2 = make_index(" (v2)", track_ids=TRACK_IDS[:2])
    staged = tmp_path / "staged"
    v2.save(staged)
    shutil.copy(staged / "metadata.json", path / "metadata.json")  # the new version, its files still old
    for _ in range(200):
        if server.reload_problem:
            break
        time.sleep(0.02)
    assert server.reload_problem and v2.version in server.reload_problem and v1.version in server.reload_problem
    assert server.servicer.state.index_version == v1.version
    assert server.metrics.snapshot().extra.get("index_reload_failures", 0) >= 1
    assert server.metrics.registry.get_sample_value("earworm_index_reload_failing") == 1
    v2.save(path)  # now complete: the watcher's retry picks it up
    for _ in range(400):
        if server.servicer.state.index_version == v2.version:
            break
        time.sleep(0.02)
    assert server.servicer.state.index_version == v2.version and server.reload_problem is None
    assert server.metrics.registry.get_sample_value("earworm_index_reload_failing") == 0
    assert server.metrics.registry.get_sample_value("earworm_index_info", {
        "version": v2.version, "model_version": v2.metadata.model_version, "tracks": "2",
        "windows": str(v2.metadata.num_windows)}) == 1


def test_idle_streams_cannot_starve_identify_or_health(server_factory, embedder, index_dir, good_query):
    """Eight streams that sent a config and then nothing used to hold all 8 worker threads: Identify
    and the health check then failed with DEADLINE_EXCEEDED."""
    from grpc_health.v1 import health_pb2

    from serving.index import WindowIndex

    server, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), workers=8,
                                    servicer={"stream_idle_seconds": 1.5, "max_concurrent_streams": 4})
    release = threading.Event()
    codes: list[tuple[grpc.StatusCode, str]] = []

    def idle_stream():
        def requests():
            yield pb.StreamIdentifyRequest(config=pb.StreamConfig(sample_rate_hz=C.SAMPLE_RATE))
            release.wait(20)  # then nothing

        try:
            list(_stub(target).StreamIdentify(requests(), timeout=20))
            codes.append((grpc.StatusCode.OK, ""))
        except grpc.RpcError as e:
            codes.append((e.code(), e.details()))

    threads = [threading.Thread(target=idle_stream) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING
    answer = _stub(target).Identify(pb.IdentifyRequest(audio=pb.Audio(encoded=encode_audio(good_query))), timeout=5)
    assert answer.matches[0].track_id == TRACK_IDS[1]
    for t in threads:
        t.join(10)
    release.set()
    refused = [d for c, d in codes if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    idle = [d for c, d in codes if c == grpc.StatusCode.DEADLINE_EXCEEDED]
    assert len(refused) == 4 and "4 streams already" in refused[0]
    assert len(idle) == 4 and "no audio for 1.5 s" in idle[0]


def test_a_trickling_stream_ends_at_the_total_limit():
    from serving.servicer import ServicerConfig, _RpcFailure, _timed

    def trickle():
        while True:
            time.sleep(0.05)
            yield b"x"

    cfg = ServicerConfig(stream_idle_seconds=1.0, stream_total_seconds=0.4)
    with pytest.raises(_RpcFailure, match="lasted 0.4 s") as info:
        for _ in _timed(trickle(), cfg):
            pass
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert list(_timed(iter([1, 2, 3]), cfg)) == [1, 2, 3]


def test_copying_over_the_live_index_files_cannot_crash_the_server(server_factory, make_index, tmp_path,
                                                                    good_query):
    """`cp` over embeddings.npy while the server mapped it killed the server with SIGBUS, twice."""
    import shutil

    path = tmp_path / "index"
    make_index(" (v1)").save(path)
    smaller = tmp_path / "smaller"
    make_index(" (v2)", track_ids=TRACK_IDS[:1]).save(smaller)
    _, target = server_factory(index_dir=path, watch_index_seconds=0)
    request = pb.IdentifyRequest(audio=pb.Audio(encoded=encode_audio(good_query)))
    before = _stub(target).Identify(request, timeout=20)
    shutil.copyfile(smaller / "embeddings.npy", path / "embeddings.npy")  # in place: truncate + write
    after = _stub(target).Identify(request, timeout=20)
    assert after.matches[0].track_id == before.matches[0].track_id == TRACK_IDS[1]


def test_overload_is_refused_at_once_and_health_still_answers(server_factory, embedder, index_dir, good_query):
    """With no admission control, 32 clients waited 1.6 s (p50) in an unbounded queue."""
    from grpc_health.v1 import health_pb2

    from serving.index import WindowIndex

    release = threading.Event()
    calls = []

    def slow(windows):  # quick for the warm-up, then held until released
        calls.append(1)
        if len(calls) > 1:
            release.wait(10)
        return embedder.embed_windows(windows)

    server, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir), embed_windows=slow),
                                    workers=4, servicer={"max_concurrent_identify": 1})
    request = pb.IdentifyRequest(audio=pb.Audio(encoded=encode_audio(good_query)))
    first = _stub(target).Identify.future(request, timeout=20)
    while len(calls) < 2:
        time.sleep(0.01)
    code, details = _code_of(lambda: _stub(target).Identify(request, timeout=20))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in details  # refused, not queued
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING
    release.set()
    assert first.result().matches[0].track_id == TRACK_IDS[1]
    assert server.metrics.snapshot().codes.get("RESOURCE_EXHAUSTED") == 1


def test_the_stream_reader_ends_when_the_stream_does():
    from serving.servicer import ServicerConfig, _timed

    def endless():
        while True:
            yield b"x"

    before = [t for t in threading.enumerate() if t.name == "earworm-stream-reader" and t.is_alive()]
    stream = _timed(endless(), ServicerConfig())
    assert next(stream) == b"x"
    stream.close()  # the consumer stops early (a final answer) while the reader has more to give
    for _ in range(100):
        alive = [t for t in threading.enumerate() if t.name == "earworm-stream-reader" and t.is_alive()]
        if len(alive) <= len(before):
            break
        time.sleep(0.05)
    assert len(alive) <= len(before)


def test_a_long_high_rate_stream_is_answered_at_the_byte_cap(server_factory, embedder, index_dir, good_query):
    """48 kHz stereo float32 reaches one request's bytes before 60 s: it is answered there, not refused."""
    from serving.index import WindowIndex

    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)),
                               servicer={"max_audio_bytes": 8 * 48_000 * 12})  # 12 s at 48 kHz stereo f32
    loud = soxr.resample(np.tile(good_query, 2), C.SAMPLE_RATE, 48_000).astype(np.float32)  # 20 s
    pcm = np.stack([loud, loud], axis=1).astype("<f4").tobytes()
    cfg = pb.StreamConfig(sample_rate_hz=48_000, channels=2, encoding=pb.PCM_ENCODING_F32LE)

    def requests():
        yield pb.StreamIdentifyRequest(config=cfg)
        for i in range(0, len(pcm), 384_000):
            yield pb.StreamIdentifyRequest(audio_chunk=pcm[i : i + 384_000])

    answers = list(_stub(target).StreamIdentify(requests(), timeout=30))
    assert answers[-1].is_final and answers[-1].result.audio_seconds <= 12.01


@pytest.mark.parametrize("send_config", [False, True])
def test_a_cancelled_stream_is_counted_as_cancelled(server_factory, embedder, index_dir, send_config):
    """Cancelled streams used to be logged as INVALID_ARGUMENT "the stream closed before any message"."""
    import threading

    from serving.index import WindowIndex

    server, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)))
    release = threading.Event()

    def requests():
        if send_config:
            yield pb.StreamIdentifyRequest(config=pb.StreamConfig(sample_rate_hz=C.SAMPLE_RATE))
        release.wait(10)

    with grpc.insecure_channel(target) as channel:
        call = pb_grpc.RecognizerStub(channel).StreamIdentify(requests(), timeout=20)
        time.sleep(0.3)
        call.cancel()
        for _ in range(250):  # the request iterator stays open meanwhile: its end must not race the cancel
            if server.metrics.snapshot().requests.get("StreamIdentify"):
                break
            time.sleep(0.02)
        release.set()
    assert server.metrics.snapshot().codes == {"CANCELLED": 1}


def test_a_server_runs_blas_on_one_thread_per_call(target):
    """Requests run in parallel on server threads; OpenBLAS's own helper threads would only spin."""
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)
