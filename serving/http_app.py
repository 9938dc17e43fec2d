"""The HTTP front door and the page: a Starlette app served by uvicorn in the gRPC server's process.

`POST /v1/identify` goes through the very same `RecognizerServicer.Identify` as gRPC (same limits,
admission control, token, metrics): the request is turned into an `IdentifyRequest`, answered by the
servicer with an HTTP stand-in for the gRPC context, and the `IdentifyResponse` is sent as protobuf
JSON (proto field names, default values included). A gRPC status becomes the usual HTTP one.

| route | what |
|---|---|
| `GET /` , `GET /static/*` | the page (`serving/web/static/`) |
| `GET /v1/info` | model and index versions, track count, whether a token is needed, query length limits |
| `POST /v1/identify?top_k=&include_pitch=` | the recording as the body (WebM/Opus, WAV, MP3, M4A, FLAC, Ogg) or as the `audio` field of a multipart form (`top_k`, `include_pitch` may be fields too) |
| `WS /v1/stream` | live mode, through `StreamIdentify`: a JSON config first (`sample_rate_hz`, `encoding` "s16le"/"f32le", `channels`, `top_k`, `interim_interval_seconds`, `include_pitch`, `token`), then binary PCM chunks, then `{"end": true}`; answers `{"result": IdentifyResponse, "is_final": bool}` as they firm up, or `{"error": {code, message}}` |
| `GET /v1/tracks/{track_id}/audio` | the master recording (needs `--catalogue`), with HTTP ranges |
| `GET /healthz` | 200 when serving, 503 while loading |
| `GET /metrics` | the same Prometheus registry as `--metrics-port` |
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from protos.earworm.v1 import recognizer_pb2 as pb

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "web" / "static"
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,  # the server is busy; oversize bodies are 413 before this
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
REQUEST_SECONDS = 30.0
"""The deadline an HTTP request gets (gRPC clients set their own)."""
FORM_OVERHEAD_BYTES = 64 * 1024
"""Room for a multipart form's boundaries and small fields beyond the audio limit."""
MAX_CONCURRENT_HTTP = 64
"""Connections uvicorn serves at once; more are answered 503 at once."""


class _Aborted(Exception):
    pass


class _HttpContext:
    """What `RecognizerServicer.Identify` uses of a gRPC ServicerContext, for an HTTP request."""

    def __init__(self, seconds: float):
        self._deadline = time.monotonic() + seconds
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def time_remaining(self) -> float:
        return self._deadline - time.monotonic()

    def is_active(self) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Aborted(details)


class _StreamContext(_HttpContext):
    """The context of a live-mode stream: no deadline (the servicer's idle and total limits hold),
    inactive once the browser has gone."""

    def __init__(self):
        super().__init__(0.0)
        self.gone = threading.Event()

    def time_remaining(self) -> None:
        return None

    def is_active(self) -> bool:
        return not self.gone.is_set()


PCM_ENCODINGS = {"s16le": pb.PCM_ENCODING_S16LE, "f32le": pb.PCM_ENCODING_F32LE}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def create_app(server: Any):
    """The Starlette app of an `EarwormServer` (serving/server.py)."""
    from google.protobuf.json_format import MessageToDict
    from prometheus_client import make_asgi_app
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect

    servicer = server.servicer
    limit = servicer.config.max_audio_bytes

    def error(code: grpc.StatusCode, message: str, status: int | None = None) -> JSONResponse:
        status = status or HTTP_STATUS.get(code, 500)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return JSONResponse({"error": {"code": code.name, "message": message}}, status_code=status, headers=headers)

    def too_large(n_bytes: int | None) -> JSONResponse:
        size = f"is {n_bytes:,} bytes" if n_bytes is not None else "is too large"
        return error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                     f"the recording {size}; this server accepts at most {limit / 1e6:.1f} MB ({limit:,} bytes; "
                     f"send at most {servicer.config.max_query_seconds:g} s)", status=413)

    def authorized(request: Request, method: str) -> bool:
        """The token check of gRPC; a refusal is counted under `method` (Identify, TrackAudio)."""
        return server.auth is None or server.auth.allows(request.headers.get("authorization", ""),
                                                         f"HTTP {request.url.path} /{method}",
                                                         request.client.host if request.client else "")

    async def read_body(request: Request, cap: int) -> bytes | None:
        """The body, or None as soon as it passes `cap` bytes (never buffered beyond it)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            return None
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > cap:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def identify(request: Request) -> Response:
        if not authorized(request, "Identify"):
            return error(grpc.StatusCode.UNAUTHENTICATED,
                         "missing or wrong token; send the header 'Authorization: Bearer <token>'")
        form_upload = request.headers.get("content-type", "").startswith("multipart/form-data")
        body = await read_body(request, limit + (FORM_OVERHEAD_BYTES if form_upload else 0))
        if body is None:
            return too_large(None)
        params = dict(request.query_params)
        audio = body
        if form_upload:
            async def once():
                yield body

            try:
                form = await MultiPartParser(Headers(scope=request.scope), once(), max_files=1, max_fields=8,
                                             max_part_size=limit).parse()
            except MultiPartException as e:
                return error(grpc.StatusCode.INVALID_ARGUMENT, f"the form could not be read: {e.message}")
            upload = form.get("audio")
            if upload is None or isinstance(upload, str):
                return error(grpc.StatusCode.INVALID_ARGUMENT,
                             "the form has no file in its 'audio' field; send the recording there (or as the body)")
            audio = await upload.read()
            await form.close()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        if len(audio) > limit:
            return too_large(len(audio))
        try:
            top_k = int(params.get("top_k") or 0)
        except ValueError:
            return error(grpc.StatusCode.INVALID_ARGUMENT, f"top_k must be a whole number, got {params.get('top_k')!r}")
        message = pb.IdentifyRequest(audio=pb.Audio(encoded=audio), top_k=top_k,
                                     include_pitch=_truthy(params.get("include_pitch")))
        context = _HttpContext(REQUEST_SECONDS)

        def call() -> pb.IdentifyResponse | None:
            try:
                return servicer.Identify(message, context)
            except _Aborted:
                return None

        response = await run_in_threadpool(call)
        if response is None:
            return error(context.code or grpc.StatusCode.INTERNAL, context.details)
        return JSONResponse(as_json(response))

    def as_json(response: pb.IdentifyResponse) -> dict:
        return MessageToDict(response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)

    def stream_config(first: Any) -> pb.StreamConfig:
        if not isinstance(first, dict):
            raise ValueError("the first message must be a JSON object with the stream's config")
        encoding = str(first.get("encoding", "s16le")).lower()
        if encoding not in PCM_ENCODINGS:
            raise ValueError(f"encoding must be one of {sorted(PCM_ENCODINGS)}, got {encoding!r}")
        try:
            return pb.StreamConfig(sample_rate_hz=int(first.get("sample_rate_hz", 0)),
                                   channels=int(first.get("channels", 1)), encoding=PCM_ENCODINGS[encoding],
                                   top_k=int(first.get("top_k", 0)),
                                   interim_interval_seconds=float(first.get("interim_interval_seconds", 0.0)),
                                   include_pitch=bool(first.get("include_pitch", False)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"the stream's config has a value of the wrong type: {e}") from e

    async def live(ws: WebSocket) -> None:
        """Live mode: the browser's PCM chunks through the servicer's StreamIdentify."""
        await ws.accept()

        async def fail(code: grpc.StatusCode, message: str) -> None:
            await ws.send_json({"error": {"code": code.name, "message": message}})
            await ws.close(code=1008 if code is grpc.StatusCode.UNAUTHENTICATED else 1000)

        try:
            first = await asyncio.wait_for(ws.receive_json(), timeout=servicer.config.stream_idle_seconds)
            config = stream_config(first)
        except WebSocketDisconnect:
            return
        except asyncio.TimeoutError:
            return await fail(grpc.StatusCode.DEADLINE_EXCEEDED, "no config arrived; send it first")
        except ValueError as e:  # not JSON, or bad values
            return await fail(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        given = f"Bearer {first.get('token', '')}" if first.get("token") else ""
        if server.auth is not None and not server.auth.allows(
                given, "HTTP /v1/stream /StreamIdentify", ws.client.host if ws.client else ""):
            return await fail(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token; send it as 'token' in the config")

        inbox: queue.Queue = queue.Queue()
        context = _StreamContext()
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue = asyncio.Queue()

        def requests():
            yield pb.StreamIdentifyRequest(config=config)
            while (chunk := inbox.get()) is not None:
                yield pb.StreamIdentifyRequest(audio_chunk=chunk)

        def work() -> None:
            try:
                for response in servicer.StreamIdentify(requests(), context):
                    loop.call_soon_threadsafe(outbox.put_nowait, ("result", response))
            except _Aborted:
                loop.call_soon_threadsafe(outbox.put_nowait, ("error", (context.code, context.details)))
            finally:
                loop.call_soon_threadsafe(outbox.put_nowait, ("done", None))

        async def read() -> None:
            """Chunks into the inbox until the browser ends, leaves, or has sent as much as one
            request may carry (the servicer answers at that cap; nothing more is buffered)."""
            received = 0
            try:
                while received <= servicer.config.max_audio_bytes:
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        context.gone.set()
                        break
                    if message.get("bytes"):
                        received += len(message["bytes"])
                        inbox.put(message["bytes"])
                    elif message.get("text") is not None:
                        break  # {"end": true}: answer with what there is
            finally:
                inbox.put(None)

        worker = loop.run_in_executor(None, work)
        reader = asyncio.ensure_future(read())
        try:
            while True:
                kind, item = await outbox.get()
                if kind == "done":
                    break
                if context.gone.is_set():
                    continue
                if kind == "result":
                    await ws.send_json({"result": as_json(item.result), "is_final": bool(item.is_final)})
                else:
                    code, details = item
                    await ws.send_json({"error": {"code": (code or grpc.StatusCode.INTERNAL).name, "message": details}})
        except WebSocketDisconnect:
            context.gone.set()
        finally:
            inbox.put(None)  # the servicer's reader never waits for a chunk that cannot come
            reader.cancel()
            await worker
        if not context.gone.is_set():
            await ws.close()

    async def info(_request: Request) -> Response:
        state = servicer.state
        return JSONResponse({
            "model_version": state.model_version if state else "",
            "index_version": state.index_version if state else "",
            "tracks": int(state.index.metadata.num_tracks) if state else 0,
            "serving": state is not None,
            "token_required": server.auth is not None,
            "min_query_seconds": servicer.config.min_query_seconds,
            "max_query_seconds": servicer.config.max_query_seconds,
            "master_audio": servicer.masters is not None,
        })

    async def track_audio(request: Request) -> Response:
        if not authorized(request, "TrackAudio"):
            return error(grpc.StatusCode.UNAUTHENTICATED,
                         "missing or wrong token; send the header 'Authorization: Bearer <token>'")
        masters = servicer.masters
        track_id = request.path_params["track_id"]
        path = masters.audio_path(track_id) if masters is not None else None
        if path is None:
            why = "this server has no catalogue audio (start it with --catalogue)" if masters is None else \
                f"no master recording for track {track_id!r}"
            return error(grpc.StatusCode.NOT_FOUND, why)
        return FileResponse(path)

    async def healthz(_request: Request) -> Response:
        ok = servicer.state is not None
        return JSONResponse({"status": "SERVING" if ok else "NOT_SERVING"}, status_code=200 if ok else 503)

    async def page(_request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html")

    return Starlette(routes=[
        Route("/", page),
        Route("/v1/identify", identify, methods=["POST"]),
        Route("/v1/info", info),
        WebSocketRoute("/v1/stream", live),
        Route("/v1/tracks/{track_id:path}/audio", track_audio),
        Route("/healthz", healthz),
        Mount("/metrics", make_asgi_app(server.metrics.registry)),
        Mount("/static", StaticFiles(directory=STATIC_DIR)),
    ])


class HttpServer:
    """uvicorn serving `create_app(server)` from a thread of the gRPC server's process."""

    def __init__(self, server: Any, host: str, port: int, *, reuse_port: bool = False):
        """reuse_port: bind with SO_REUSEPORT, sharing the port with the other processes of one
        `earworm serve --processes N` (the kernel spreads the connections over them)."""
        import uvicorn

        config = uvicorn.Config(create_app(server), host=host, port=port, log_level="warning", lifespan="off",
                                access_log=False, limit_concurrency=MAX_CONCURRENT_HTTP, timeout_keep_alive=5)
        self._uvicorn = uvicorn.Server(config)
        self._reuse_port = reuse_port
        self._thread: threading.Thread | None = None
        self.host = host
        self.requested_port = port
        self.port = 0

    def start(self, timeout: float = 10.0) -> int:
        """Start serving; returns the bound port. OSError when the port cannot be bound."""
        sockets = None
        if self._reuse_port:
            from serving.ports import shared_port_socket

            sockets = [shared_port_socket(self.host, self.requested_port)]
        self._thread = threading.Thread(target=self._uvicorn.run, kwargs={"sockets": sockets}, name="earworm-http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the HTTP server did not start on {self.host} (port in use?)")
            time.sleep(0.02)
        self.port = int(self._uvicorn.servers[0].sockets[0].getsockname()[1])
        return self.port

    def stop(self) -> None:
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
