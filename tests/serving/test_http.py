"""The HTTP front door (serving/http_app.py): same servicer, limits, token and metrics as gRPC."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.audio import encode_audio
from tests.serving.conftest import TRACK_IDS, loader_for


@pytest.fixture(scope="module")
def http_server(server_factory, embedder, index_dir, catalogue_manifest):
    from serving.index import WindowIndex

    server, _ = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), http_port=0,
                               catalogue=catalogue_manifest)
    return server


def _url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


def _call(server, path: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, headers, body bytes) of one HTTP request."""
    request = urllib.request.Request(_url(server, path), data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _multipart(fields: dict[str, str], audio: bytes, filename: str = "hum.wav") -> tuple[bytes, str]:
    boundary = "earwormtestboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{filename}"\r\n'
                 f"Content-Type: audio/wav\r\n\r\n".encode() + audio + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_identify_a_body_answers_the_grpc_response_as_json(http_server, good_query):
    status, headers, body = _call(http_server, "/v1/identify?top_k=2&include_pitch=true", encode_audio(good_query),
                                  {"Content-Type": "audio/wav"})
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(body)
    assert [m["track_id"] for m in answer["matches"]][:1] == [TRACK_IDS[1]] and len(answer["matches"]) == 2
    assert answer["no_match_reason"] == "NO_MATCH_REASON_UNSPECIFIED" and answer["no_match"] is False
    top = answer["matches"][0]
    assert top["rank"] == 1 and top["offset_seconds"] == pytest.approx(4.0, abs=0.6) and top["tempo_ratio"] == 1.0
    query = answer["query_pitch"]
    assert query["source"] == "yin" and query["hop_seconds"] == pytest.approx(0.02)
    assert len(query["midi"]) == pytest.approx(10.0 / 0.02, abs=3) and max(query["midi"]) > 40
    master = top["master_pitch"]  # the master's melody over the matched stretch, on its clock
    assert master["source"] == "yin" and master["start_seconds"] == pytest.approx(top["offset_seconds"], abs=0.05)
    assert len(master["midi"]) == pytest.approx(len(query["midi"]), abs=3)
    voiced = (np.array(master["midi"]) > 0) & (np.array(query["midi"][: len(master["midi"])]) > 0)
    diff = np.array(master["midi"])[voiced] - np.array(query["midi"][: len(master["midi"])])[voiced]
    assert voiced.sum() > 100 and np.median(np.abs(diff)) < 0.5  # the query is that stretch of the master


def test_a_master_with_a_melody_midi_sends_its_notes(http_server, masters):
    query = masters[TRACK_IDS[0]][2 * C.SAMPLE_RATE : 12 * C.SAMPLE_RATE]
    status, _, body = _call(http_server, "/v1/identify?include_pitch=1", encode_audio(query))
    top = json.loads(body)["matches"][0]
    assert status == 200 and top["track_id"] == TRACK_IDS[0]
    assert top["master_pitch"]["source"] == "midi" and set(top["master_pitch"]["midi"]) <= {0, 60, 62, 64, 66, 68}


def test_without_include_pitch_no_tracks_are_sent(http_server, good_query):
    answer = json.loads(_call(http_server, "/v1/identify", encode_audio(good_query))[2])
    assert answer["matches"][0]["track_id"] == TRACK_IDS[1]
    assert "master_pitch" not in answer["matches"][0] and "query_pitch" not in answer


def test_a_multipart_upload(http_server, good_query):
    body, content_type = _multipart({"top_k": "1"}, encode_audio(good_query))
    status, _, answer = _call(http_server, "/v1/identify", body, {"Content-Type": content_type})
    answer = json.loads(answer)
    assert status == 200 and [m["track_id"] for m in answer["matches"]] == [TRACK_IDS[1]]
    body, content_type = _multipart({"top_k": "1"}, b"", filename="")
    status, _, _ = _call(http_server, "/v1/identify", body.replace(b'name="audio"; filename=""', b'name="other"'),
                         {"Content-Type": content_type})
    assert status == 400


@pytest.mark.parametrize("path, data, status, code", [
    ("/v1/identify", b"not audio at all" * 100, 400, "INVALID_ARGUMENT"),
    ("/v1/identify", b"", 400, "INVALID_ARGUMENT"),
    ("/v1/identify?top_k=500", None, 400, "INVALID_ARGUMENT"),
    ("/v1/identify?top_k=many", None, 400, "INVALID_ARGUMENT"),
])
def test_bad_requests_are_400_with_a_message(http_server, good_query, path, data, status, code):
    got, _, body = _call(http_server, path, encode_audio(good_query) if data is None else data, method="POST")
    error = json.loads(body)["error"]
    assert got == status and error["code"] == code and error["message"]
    assert "Traceback" not in error["message"]


def test_oversize_is_413_before_the_body_is_read(server_factory, embedder, index_dir, good_query):
    from serving.index import WindowIndex

    server, _ = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), http_port=0,
                               servicer={"max_audio_bytes": 100_000})
    status, _, body = _call(server, "/v1/identify", encode_audio(good_query))  # 320 kB
    assert status == 413 and "at most 0.1 MB" in json.loads(body)["error"]["message"]
    form, content_type = _multipart({}, encode_audio(good_query))
    assert _call(server, "/v1/identify", form, {"Content-Type": content_type})[0] == 413


def test_busy_is_429_and_loading_is_503(http_server, server_factory, embedder, index_dir, good_query):
    from serving.index import WindowIndex

    gate = http_server.servicer._identifies
    held = 0
    while gate.acquire(blocking=False):  # every Identify slot taken
        held += 1
    try:
        status, headers, body = _call(http_server, "/v1/identify", encode_audio(good_query))
    finally:
        for _ in range(held):
            gate.release()
    assert status == 429 and headers["retry-after"] == "1" and json.loads(body)["error"]["code"] == "RESOURCE_EXHAUSTED"

    release = threading.Event()

    def slow(config):
        release.wait(20)
        return loader_for(embedder, WindowIndex.load(index_dir))(config)

    loading, _ = server_factory(loader=slow, wait=False, http_port=0)
    try:
        assert _call(loading, "/v1/identify", encode_audio(good_query))[0] == 503
        assert _call(loading, "/healthz")[0] == 503
    finally:
        release.set()
    loading.wait_until_ready(20)
    assert _call(loading, "/healthz")[0] == 200


def test_the_token_guards_http_too(server_factory, embedder, index_dir, good_query, catalogue_manifest):
    from serving.index import WindowIndex

    server, _ = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), http_port=0,
                               auth_token="s3cret", catalogue=catalogue_manifest)
    status, _, body = _call(server, "/v1/identify", encode_audio(good_query))
    assert status == 401 and json.loads(body)["error"]["code"] == "UNAUTHENTICATED"
    assert _call(server, f"/v1/tracks/{TRACK_IDS[0]}/audio")[0] == 401
    ok = _call(server, "/v1/identify", encode_audio(good_query), {"Authorization": "Bearer s3cret"})
    assert ok[0] == 200
    info = json.loads(_call(server, "/v1/info")[2])
    assert info["token_required"] is True and info["master_audio"] is True
    snapshot = server.metrics.snapshot()  # refusals counted like gRPC's, under the method they asked for
    assert snapshot.codes == {"UNAUTHENTICATED": 2, "OK": 1}
    assert snapshot.requests == {"Identify": 2, "TrackAudio": 1}


def test_info_health_metrics_and_the_page(http_server, embedder):
    info = json.loads(_call(http_server, "/v1/info")[2])
    assert info["model_version"] == embedder.version and info["tracks"] == 3 and info["serving"] is True
    assert info["token_required"] is False and info["min_query_seconds"] == C.MIN_QUERY_SECONDS
    assert _call(http_server, "/healthz")[0] == 200
    status, _, metrics = _call(http_server, "/metrics")
    assert status == 200 and b"earworm_requests_total" in metrics
    status, headers, page = _call(http_server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b'id="record"' in page
    assert _call(http_server, "/static/app.js")[0] == 200


def test_master_audio_with_ranges(http_server, catalogue_manifest):
    whole = (catalogue_manifest.parent / f"{TRACK_IDS[1]}.wav").read_bytes()
    status, headers, body = _call(http_server, f"/v1/tracks/{TRACK_IDS[1]}/audio")
    assert status == 200 and body == whole
    status, headers, body = _call(http_server, f"/v1/tracks/{TRACK_IDS[1]}/audio", headers={"Range": "bytes=100-199"})
    assert status == 206 and body == whole[100:200]
    status, _, body = _call(http_server, "/v1/tracks/nope/audio")
    assert status == 404 and json.loads(body)["error"]["code"] == "NOT_FOUND"


def _live(server, config: dict, chunks: list[bytes], end: bool = True) -> list[dict]:
    """Every message the live-mode socket answers."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    got = []
    with connect(f"ws://127.0.0.1:{server.http_port}/v1/stream", open_timeout=10) as ws:
        try:  # the server may answer an error and close before the client has sent everything
            ws.send(json.dumps(config))
            for chunk in chunks:
                ws.send(chunk)
            if end:
                ws.send(json.dumps({"end": True}))
        except ConnectionClosed:
            pass
        try:
            while True:
                got.append(json.loads(ws.recv(timeout=30)))
        except ConnectionClosed:
            pass
    return got


def test_live_mode_streams_to_stream_identify(http_server, good_query):
    pcm = (np.clip(good_query, -1, 1) * 32767).astype("<i2").tobytes()
    half_second = C.SAMPLE_RATE  # bytes in 0.5 s of s16 mono
    answers = _live(http_server, {"sample_rate_hz": C.SAMPLE_RATE, "encoding": "s16le", "top_k": 3,
                                  "interim_interval_seconds": 2, "include_pitch": True},
                    [pcm[i : i + half_second] for i in range(0, len(pcm), half_second)])
    assert answers and all("result" in a for a in answers)
    assert answers[-1]["is_final"] is True and sum(a["is_final"] for a in answers) == 1
    final = answers[-1]["result"]
    assert final["matches"][0]["track_id"] == TRACK_IDS[1]
    assert len(answers) >= 2  # interim answers while the audio came in
    # include_pitch: the final answer (only) carries the pitch tracks the page draws
    assert final["query_pitch"]["midi"] and final["matches"][0]["master_pitch"]["midi"]
    assert not any(a["result"].get("query_pitch", {}).get("midi") for a in answers[:-1])


@pytest.mark.parametrize("config, code", [
    ({"sample_rate_hz": 16000, "encoding": "mp3"}, "INVALID_ARGUMENT"),
    ({"sample_rate_hz": "fast"}, "INVALID_ARGUMENT"),
    ({"sample_rate_hz": 100}, "INVALID_ARGUMENT"),
])
def test_live_mode_bad_config(http_server, config, code):
    answers = _live(http_server, config, [], end=False)
    assert answers[-1]["error"]["code"] == code and answers[-1]["error"]["message"]


def test_live_mode_too_little_audio_and_the_token(server_factory, embedder, index_dir, good_query):
    from serving.index import WindowIndex

    server, _ = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir)), http_port=0,
                               auth_token="s3cret")
    cfg = {"sample_rate_hz": C.SAMPLE_RATE}
    assert _live(server, cfg, [b"\x00\x01" * 100])[-1]["error"]["code"] == "UNAUTHENTICATED"
    answers = _live(server, {**cfg, "token": "s3cret"}, [b"\x00\x01" * 100])
    assert answers[-1]["error"]["code"] == "INVALID_ARGUMENT" and "too little audio" in answers[-1]["error"]["message"]
