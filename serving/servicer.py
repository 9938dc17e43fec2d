"""The `earworm.v1.Recognizer` gRPC servicer: Identify and StreamIdentify.

Every request ends with a deliberate status code, never UNKNOWN (a query with no melody is an OK
answer: no_match with NO_MATCH_REASON_NO_MELODY):
- INVALID_ARGUMENT: unusable audio (every `data_gen.audio.AudioError`, with its human message),
  bad parameters (top_k, sample rate, encoding, missing audio, stream without config);
- RESOURCE_EXHAUSTED: audio larger than `max_audio_bytes`; more than `max_concurrent_identify`
  recordings or `max_concurrent_streams` streams at once (admission control: refused at once);
- DEADLINE_EXCEEDED: no time left before or after embedding; a stream idle for
  `stream_idle_seconds` or older than `stream_total_seconds`;
- UNAVAILABLE: the model and index are still loading;
- INTERNAL: anything unexpected (logged with its traceback; the client sees a generic message).

The model, index and retriever in use form one immutable `ServingState`; a request reads the
reference once, so `swap_index` can replace it at any moment without a request ever seeing half
of an old and half of a new index.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np

from data_gen import constants as C
from data_gen.audio import MAX_CHANNELS as MAX_AUDIO_CHANNELS
from data_gen.audio import (
    MAX_NATIVE_RATE,
    MIN_NATIVE_RATE,
    AudioError,
    SilentAudioError,
    TooShortAudioError,
    decode_audio,
    pcm_to_audio,
)
from data_gen.windows import cut_query_views, tempo_fraction, tempo_view, view_window_hop, window_starts
from protos.earworm.v1 import recognizer_pb2 as pb
from protos.earworm.v1 import recognizer_pb2_grpc as pb_grpc
from serving.batching import EmbeddingTimeout
from serving.metrics import Metrics
from serving.retrieval_types import NO_MATCH_BELOW_THRESHOLD, NO_MELODY, QueryEmbedding

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recognizer"].full_name  # "earworm.v1.Recognizer"

PCM_ENCODINGS = {
    pb.PCM_ENCODING_UNSPECIFIED: "s16le",
    pb.PCM_ENCODING_S16LE: "s16le",
    pb.PCM_ENCODING_F32LE: "f32le",
}
PCM_BYTES = {"s16le": 2, "f32le": 4}
NO_MATCH_REASONS = {
    "": pb.NO_MATCH_REASON_UNSPECIFIED,
    NO_MATCH_BELOW_THRESHOLD: pb.NO_MATCH_REASON_BELOW_THRESHOLD,
    NO_MELODY: pb.NO_MATCH_REASON_NO_MELODY,
}
MIN_PCM_RATE, MAX_PCM_RATE = MIN_NATIVE_RATE, MAX_NATIVE_RATE
MAX_CHANNELS = MAX_AUDIO_CHANNELS


CANCEL_SETTLE_S = 0.1
"""How long a stream that failed waits for a racing client cancel to show before its error is
reported: gRPC can end the request iterator of a cancelled stream before `is_active()` turns False
(the call would be counted INVALID_ARGUMENT, "closed before any message")."""


@dataclass(frozen=True)
class ServicerConfig:
    """Request limits and streaming behaviour (defaults are the server's defaults)."""

    default_top_k: int = 10
    max_top_k: int = 100
    max_audio_bytes: int = 16 * 1024 * 1024
    """Largest accepted audio payload (one Identify request, or one stream chunk)."""
    min_query_seconds: float = C.MIN_QUERY_SECONDS
    max_query_seconds: float = C.MAX_QUERY_SECONDS
    interim_interval_seconds: float = 2.0
    """Default seconds of streamed audio between interim answers."""
    min_interim_interval_seconds: float = 0.5
    confident_margin: float = 0.1
    """A streamed answer is final early when its top score is at least threshold + this margin
    in two consecutive interim answers naming the same track, after `early_final_seconds`."""
    early_final_seconds: float = 6.0
    """No stream is answered finally before this much audio: on the page's 1 s interims a confident
    pair of guesses at 3-4 s named the wrong demo song in 3 of 5 live runs (`earworm bench-page --live`)."""
    max_concurrent_streams: int = 2
    """StreamIdentify calls served at once; more are refused with RESOURCE_EXHAUSTED at once, so that
    streams (which hold a worker thread for their whole length) never take every thread."""
    max_concurrent_identify: int = 5
    """Identify calls worked on at once; more are refused with RESOURCE_EXHAUSTED at once instead of
    waiting (admission control: under overload a client learns it in milliseconds and can back off).
    With the streams this stays below the server's worker threads, so health always finds one."""
    stream_idle_seconds: float = 10.0
    """A stream that sends nothing for this long is ended (DEADLINE_EXCEEDED)."""
    stream_total_seconds: float = 120.0
    """No stream lasts longer than this, however it trickles its audio (DEADLINE_EXCEEDED)."""


class EmbeddingBackend(Protocol):
    def embed(self, windows: np.ndarray, timeout: float | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class ServingState:
    """What answers requests right now: one retriever over one index, for one model."""

    retriever: Any  # serving.retrieval.Retriever
    index: Any  # serving.index.WindowIndex
    model_version: str
    embedder: Any = None
    """The model whose embedding function the embedding backend runs: it says what the backend takes
    (`query_features`). None: the retriever's embedder."""

    @property
    def features_of(self) -> Any:
        return self.embedder if self.embedder is not None else self.retriever.embedder

    @property
    def index_version(self) -> str:
        return str(self.index.metadata.version)


class IndexSwapError(ValueError):
    """A new index cannot replace the served one (e.g. it was built with another model)."""


class _RpcFailure(Exception):
    """Raised inside a handler to end the request with `code` and a message for the client."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass
class _Outcome:
    """What one request did, for its log line and the counters."""

    audio_seconds: float = 0.0
    top_score: float | None = None
    no_match: bool | None = None
    answers: int = 0
    embed_ms: float = 0.0
    search_ms: float = 0.0
    melody_ms: float = 0.0
    pitch_ms: float = 0.0
    reason: str = ""

    def record(self, result: Any) -> None:
        """Add one answer's time and outcome (`serving.retrieval_types.RetrievalResult`)."""
        t = result.timings_ms
        self.melody_ms += t.get("melody", 0.0)
        self.embed_ms += t.get("embed", 0.0)
        self.search_ms += t.get("search", 0.0) + t.get("aggregate", 0.0) + t.get("rerank", 0.0)
        self.reason = result.reason
        self.top_score = result.matches[0].score if result.matches else None
        self.no_match = bool(result.no_match)


def query_features(embedder: Any, audio: np.ndarray, rates: tuple[float, ...]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the embedding backend takes for a query's windows in each tempo view, with their offsets and
    views: the windows' log power sliced from one front-end pass per view when the model splits its
    front-end (`Embedder.splits_frontend`), else the raw windows (`cut_query_views`)."""
    if getattr(embedder, "splits_frontend", False):
        return embedder.query_log_power(audio, rates)
    return cut_query_views(audio, rates)


def window_features(embedder: Any, windows: np.ndarray) -> np.ndarray:
    """The embedding backend's input for raw windows [n, WINDOW_SAMPLES] (see `query_features`)."""
    return embedder.log_power(windows) if getattr(embedder, "splits_frontend", False) else windows


def _deadline_check(context: grpc.ServicerContext, when: str) -> float | None:
    """Seconds left for this request (None: no deadline); raises DEADLINE_EXCEEDED at zero."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:
        return None
    if remaining <= 0:
        raise _RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, f"the deadline passed {when}")
    return remaining


class RecognizerServicer(pb_grpc.RecognizerServicer):
    """Answers Identify / StreamIdentify once `attach` has handed it a model and an index."""

    def __init__(self, config: ServicerConfig = ServicerConfig(), metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        self._state: ServingState | None = None
        self._embedding: EmbeddingBackend | None = None
        self._swap_lock = threading.Lock()
        self._streams = threading.BoundedSemaphore(max(1, config.max_concurrent_streams))
        self.masters: Any = None
        """serving.pitch_tracks.MasterMelodies of the catalogue (for include_pitch), or None."""
        self._identifies = threading.BoundedSemaphore(max(1, config.max_concurrent_identify))

    # --- lifecycle ---------------------------------------------------------------------------
    def attach(self, state: ServingState, embedding: EmbeddingBackend) -> None:
        """Start answering with `state`, embedding windows through `embedding`."""
        self._check_versions(state.index, state.model_version)
        self._embedding = embedding
        self._state = state

    @property
    def ready(self) -> bool:
        return self._state is not None

    @property
    def state(self) -> ServingState | None:
        return self._state

    @staticmethod
    def _check_versions(index: Any, model_version: str) -> None:
        if index.metadata.model_version != model_version:
            raise IndexSwapError(
                f"index {index.metadata.version} was built with model {index.metadata.model_version!r} "
                f"but the server runs model {model_version!r}; rebuild the index with this model "
                "(earworm index) or serve the model it was built with"
            )

    def swap_index(self, new_index: Any) -> ServingState:
        """Atomically serve `new_index` from now on; in-flight requests finish on the old one.

        Raises IndexSwapError when the index was built with a different model version.
        """
        with self._swap_lock:
            current = self._state
            if current is None:
                raise IndexSwapError("the server has no model loaded yet; nothing to swap")
            self._check_versions(new_index, current.model_version)
            new_state = ServingState(current.retriever.with_index(new_index), new_index,
                                     current.model_version, current.embedder)
            self._state = new_state
        self.metrics.increment("index_swaps")
        log.info("now serving index %s (%d tracks, %d windows), was %s", new_state.index_version,
                 new_index.metadata.num_tracks, new_index.metadata.num_windows, current.index_version)
        return new_state

    # --- request plumbing --------------------------------------------------------------------
    def _serving(self) -> tuple[ServingState, EmbeddingBackend]:
        state, embedding = self._state, self._embedding
        if state is None or embedding is None:
            raise _RpcFailure(grpc.StatusCode.UNAVAILABLE,
                              "the server is still loading its model and index; retry shortly")
        return state, embedding

    def _top_k(self, top_k: int) -> int:
        if top_k < 0 or top_k > self.config.max_top_k:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                              f"top_k must be between 0 (server default) and {self.config.max_top_k}, "
                              f"got {top_k}")
        return top_k or self.config.default_top_k

    def _check_size(self, n_bytes: int, what: str) -> None:
        if n_bytes > self.config.max_audio_bytes:
            limit = self.config.max_audio_bytes
            raise _RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{what} is {n_bytes:,} bytes; this server accepts at most {limit / 1e6:.1f} MB "
                f"({limit:,} bytes; send at most {self.config.max_query_seconds:g} s, e.g. 16 kHz mono)",
            )

    @staticmethod
    def _pcm_format(encoding: int) -> str:
        if encoding not in PCM_ENCODINGS:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                              f"unknown PCM encoding {encoding}; use S16LE or F32LE")
        return PCM_ENCODINGS[encoding]

    @staticmethod
    def _pcm_layout(sample_rate: int, channels: int) -> int:
        if not MIN_PCM_RATE <= sample_rate <= MAX_PCM_RATE:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                              f"PCM sample_rate_hz must be between {MIN_PCM_RATE:,} and {MAX_PCM_RATE:,}, "
                              f"got {sample_rate:,}")
        channels = channels or 1
        if not 0 < channels <= MAX_CHANNELS:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                              f"PCM channels must be between 1 and {MAX_CHANNELS} (0 means 1), got {channels}")
        return channels

    def _decode(self, audio: pb.Audio) -> np.ndarray:
        """Audio message -> mono float32 [time] at SAMPLE_RATE, validated; raises _RpcFailure."""
        kind = audio.WhichOneof("content")
        limits = dict(min_seconds=self.config.min_query_seconds,
                      max_seconds=self.config.max_query_seconds)
        try:
            if kind == "encoded":
                return decode_audio(audio.encoded, **limits)
            if kind == "pcm":
                fmt = self._pcm_format(audio.pcm.encoding)
                channels = self._pcm_layout(audio.pcm.sample_rate_hz, audio.pcm.channels)
                return pcm_to_audio(audio.pcm.data, audio.pcm.sample_rate_hz, pcm_format=fmt,
                                    channels=channels, **limits)
        except AudioError as e:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                          "the request has no audio: set audio.encoded (a WAV, FLAC, Ogg, MP3, M4A or WebM file) "
                          "or audio.pcm (raw samples with their sample rate)")

    def _embed(self, embedding: EmbeddingBackend, windows: np.ndarray,
               context: grpc.ServicerContext) -> np.ndarray:
        remaining = _deadline_check(context, "before the audio was embedded")
        try:
            emb = embedding.embed(windows, timeout=remaining)
        except EmbeddingTimeout as e:
            raise _RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "the deadline passed while the audio waited to be embedded") from e
        _deadline_check(context, "while the audio was embedded")
        return emb

    @staticmethod
    def _response(result: Any, state: ServingState) -> pb.IdentifyResponse:
        check = result.melody
        melody = None if check is None else pb.MelodyQuality(
            voiced_seconds=check.voiced_seconds, voiced_fraction=check.voiced_fraction,
            pitch_range_semitones=check.pitch_range_semitones, distinct_notes=check.distinct_notes,
            phrase_seconds=check.phrase_seconds, explanation=check.why)
        return pb.IdentifyResponse(
            matches=[
                pb.Match(track_id=m.track_id, title=m.title, artist=m.artist, score=float(m.score),
                         offset_seconds=float(m.offset_s), rank=i + 1, tempo_ratio=float(m.tempo_ratio))
                for i, m in enumerate(result.matches)
            ],
            no_match=bool(result.no_match),
            no_match_threshold=float(result.threshold),
            model_version=state.model_version,
            index_version=state.index_version,
            audio_seconds=float(result.audio_seconds),
            no_match_reason=NO_MATCH_REASONS[result.reason],
            melody=melody,
        )

    def _finish(self, method: str, started: float, outcome: _Outcome, code: grpc.StatusCode,
                details: str) -> None:
        """The one log line and the counters of a finished request."""
        ms = (time.perf_counter() - started) * 1000.0
        self.metrics.record(method, code.name, ms, outcome.audio_seconds)
        self.metrics.stage_ms("melody", outcome.melody_ms)
        self.metrics.stage_ms("embed", outcome.embed_ms)
        self.metrics.stage_ms("search", outcome.search_ms)
        self.metrics.stage_ms("pitch", outcome.pitch_ms)
        top = "-" if outcome.top_score is None else f"{outcome.top_score:.3f}"
        extra = "" if outcome.no_match is None else f" no_match={outcome.no_match}"
        if outcome.reason:
            extra += f" reason={outcome.reason}"
            self.metrics.no_match(outcome.reason)
        if method == "StreamIdentify":
            extra += f" answers={outcome.answers}"
        log.info("%s %s %.1f ms (melody check %.1f, embed %.1f, search %.1f) audio=%.1fs top=%s%s%s", method,
                 code.name, ms, outcome.melody_ms, outcome.embed_ms, outcome.search_ms, outcome.audio_seconds, top, extra,
                 f" ({details})" if details else "")

    # --- Identify ----------------------------------------------------------------------------
    def Identify(self, request: pb.IdentifyRequest, context: grpc.ServicerContext) -> pb.IdentifyResponse:
        started = time.perf_counter()
        outcome = _Outcome()
        code, details, response = grpc.StatusCode.OK, "", None
        try:
            response = self._identify(request, context, outcome)
        except _RpcFailure as e:
            code, details = e.code, e.details
        except Exception:  # noqa: BLE001 - the client must never see UNKNOWN
            log.exception("Identify failed unexpectedly")
            code, details = grpc.StatusCode.INTERNAL, "internal server error (logged on the server)"
        self._finish("Identify", started, outcome, code, details)
        if code is not grpc.StatusCode.OK:
            context.abort(code, details)
        return response

    def _identify(self, request: pb.IdentifyRequest, context: grpc.ServicerContext,
                  outcome: _Outcome) -> pb.IdentifyResponse:
        if not self._identifies.acquire(blocking=False):
            raise _RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"the server is busy ({self.config.max_concurrent_identify} recordings in progress); "
                              "retry in a moment")
        try:
            with self.metrics.in_progress("Identify").track_inprogress():
                return self._identify_admitted(request, context, outcome)
        finally:
            self._identifies.release()

    def _identify_admitted(self, request: pb.IdentifyRequest, context: grpc.ServicerContext,
                           outcome: _Outcome) -> pb.IdentifyResponse:
        state, embedding = self._serving()
        audio_msg = request.audio
        kind = audio_msg.WhichOneof("content")
        size = len(audio_msg.encoded) if kind == "encoded" else len(audio_msg.pcm.data) if kind else 0
        self._check_size(size, "the audio")
        top_k = self._top_k(request.top_k)
        audio = self._decode(audio_msg)
        outcome.audio_seconds = audio.shape[0] / C.SAMPLE_RATE
        def embed(a: np.ndarray) -> QueryEmbedding:
            features, offsets, views = query_features(state.features_of, a,
                                                      state.retriever.config.query_tempo_rates)
            return QueryEmbedding(self._embed(embedding, features, context), offsets, views)

        result = state.retriever.identify(audio, top_k=top_k, embed=embed)
        outcome.record(result)
        response = self._response(result, state)
        if request.include_pitch:
            t0 = time.perf_counter()
            self._add_pitch(response, audio, result)
            outcome.pitch_ms = (time.perf_counter() - t0) * 1000.0
        return response

    def _add_pitch(self, response: pb.IdentifyResponse, audio: np.ndarray, result: Any) -> None:
        """The query's pitch track, and each of the first `PITCH_MATCHES` matches' master melody over
        the stretch the query was matched to (when the server has the catalogue)."""
        from serving.pitch_tracks import yin_contour

        response.query_pitch.CopyFrom(_pitch_message(yin_contour(audio)))
        if self.masters is None:
            return
        seconds = audio.shape[0] / C.SAMPLE_RATE
        for match, message in list(zip(result.matches, response.matches))[:PITCH_MATCHES]:
            stretch = self.masters.stretch(match.track_id, match.offset_s, seconds * match.tempo_ratio)
            if stretch is not None:
                message.master_pitch.CopyFrom(_pitch_message(stretch))

    # --- StreamIdentify ----------------------------------------------------------------------
    def StreamIdentify(self, request_iterator: Iterator[pb.StreamIdentifyRequest],
                       context: grpc.ServicerContext) -> Iterator[pb.StreamIdentifyResponse]:
        started = time.perf_counter()
        outcome = _Outcome()
        code, details = grpc.StatusCode.OK, ""
        try:
            yield from self._stream(request_iterator, context, outcome)
        except GeneratorExit:  # the client went away while we were yielding
            self._finish("StreamIdentify", started, outcome, grpc.StatusCode.CANCELLED, "client left")
            raise
        except _RpcFailure as e:
            code, details = e.code, e.details
        except Exception:  # noqa: BLE001 - the client must never see UNKNOWN
            if context.is_active():
                log.exception("StreamIdentify failed unexpectedly")
                code, details = grpc.StatusCode.INTERNAL, "internal server error (logged on the server)"
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            # a client's cancel can end the request stream a moment before the context says so: give it
            # CANCEL_SETTLE_S to show before an early end is blamed on the client's messages
            settle = time.monotonic() + CANCEL_SETTLE_S
            while context.is_active() and time.monotonic() < settle:
                time.sleep(0.01)
        if not context.is_active():  # whatever the reading saw (an error, an early end), the client left
            code, details = grpc.StatusCode.CANCELLED, "the client cancelled the stream or its deadline passed"
        self._finish("StreamIdentify", started, outcome, code, details)
        if code is not grpc.StatusCode.OK and context.is_active():
            context.abort(code, details)

    def _stream(self, requests: Iterator[pb.StreamIdentifyRequest], context: grpc.ServicerContext,
                outcome: _Outcome) -> Iterator[pb.StreamIdentifyResponse]:
        state, embedding = self._serving()  # one index for the whole stream
        if not self._streams.acquire(blocking=False):
            raise _RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"the server is answering {self.config.max_concurrent_streams} streams already; "
                              "retry shortly, or send the recording with Identify")
        gauge = self.metrics.in_progress("StreamIdentify")
        gauge.inc()
        try:
            yield from self._stream_session(_timed(requests, self.config), context, state, embedding, outcome)
        finally:
            gauge.dec()
            self._streams.release()

    def _stream_session(self, requests: Iterator[pb.StreamIdentifyRequest], context: grpc.ServicerContext,
                        state: ServingState, embedding: EmbeddingBackend,
                        outcome: _Outcome) -> Iterator[pb.StreamIdentifyResponse]:
        first = next(requests, None)
        if first is None:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                              "the stream closed before any message; the first message must carry config")
        if not first.HasField("config"):
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                              "the first StreamIdentifyRequest must carry config (sample rate, encoding)")
        cfg = first.config
        session = _StreamSession(self, state, embedding, context, cfg, outcome)
        for message in itertools.chain([first], requests):
            if message is not first and message.HasField("config"):
                raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                                  "config may only be sent in the first StreamIdentifyRequest")
            self._check_size(len(message.audio_chunk), "one audio chunk")
            done = session.add(message.audio_chunk)
            for response in session.answers():
                yield response
                if response.is_final:
                    return
            if done:
                break
        yield session.final()


_END = object()
PITCH_MATCHES = 5
"""Matches that get their master's melody with include_pitch (each may read a master file once)."""


def _pitch_message(contour: Any) -> pb.PitchTrack:
    return pb.PitchTrack(start_seconds=float(contour.start_seconds), hop_seconds=float(contour.hop_seconds),
                         midi=np.round(contour.midi, 2).tolist(), source=contour.source)


def _timed(requests: Iterator[Any], config: ServicerConfig) -> Iterator[Any]:
    """The stream's messages, ended with DEADLINE_EXCEEDED when none comes for
    `stream_idle_seconds` or the stream outlasts `stream_total_seconds`. A reader thread pulls the
    messages (a gRPC request iterator blocks until the client sends) through a small bounded queue;
    it ends with the RPC."""
    import queue

    inbox: queue.Queue = queue.Queue(maxsize=2)
    done = threading.Event()  # the consumer stopped: the reader must not wait on a full inbox forever

    def put(item: Any) -> bool:
        while not done.is_set():
            try:
                inbox.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for message in requests:
                if not put(message):
                    return
        except Exception as e:  # noqa: BLE001 - the RPC ended (cancelled) or the transport failed
            put(e)
            return
        put(_END)

    threading.Thread(target=read, name="earworm-stream-reader", daemon=True).start()
    deadline = time.monotonic() + config.stream_total_seconds
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:  # also when messages keep coming
                raise _RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"the stream lasted {config.stream_total_seconds:g} s, the most a stream may")
            try:
                item = inbox.get(timeout=max(0.0, min(config.stream_idle_seconds, left)))
            except queue.Empty:
                if left <= config.stream_idle_seconds:
                    raise _RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, f"the stream lasted "
                                      f"{config.stream_total_seconds:g} s, the most a stream may") from None
                raise _RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"no audio for {config.stream_idle_seconds:g} s: the stream was ended") from None
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        done.set()


class _StreamSession:
    """The state of one StreamIdentify call: PCM bytes so far, cached window embeddings, answers."""

    def __init__(self, servicer: RecognizerServicer, state: ServingState, embedding: EmbeddingBackend,
                 context: grpc.ServicerContext, cfg: pb.StreamConfig, outcome: _Outcome):
        self.servicer = servicer
        self.config = servicer.config
        self.state = state
        self.embedding = embedding
        self.context = context
        self.outcome = outcome
        self.pcm_format = servicer._pcm_format(cfg.encoding)
        self.channels = servicer._pcm_layout(cfg.sample_rate_hz, cfg.channels)
        self.sample_rate = cfg.sample_rate_hz
        self.top_k = servicer._top_k(cfg.top_k)
        self.include_pitch = cfg.include_pitch
        interval = cfg.interim_interval_seconds
        if interval < 0 or interval != interval:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                              f"interim_interval_seconds must be >= 0 (0: server default), got {interval}")
        self.interval = max(interval or self.config.interim_interval_seconds,
                            self.config.min_interim_interval_seconds)
        self.frame_bytes = PCM_BYTES[self.pcm_format] * self.channels
        seconds_cap = int(self.config.max_query_seconds * self.sample_rate) * self.frame_bytes
        bytes_cap = self.config.max_audio_bytes // self.frame_bytes * self.frame_bytes
        self.max_bytes = min(seconds_cap, bytes_cap)
        """The stream is answered when it holds this much: max_query_seconds of audio, or as many bytes
        as one Identify request may carry, whichever comes first."""
        self.cap_is_too_small = bytes_cap // self.frame_bytes < self.config.min_query_seconds * self.sample_rate
        """At this rate and channel count the byte cap holds less audio than a query needs."""
        self.buffer = bytearray()
        self.next_interim = self.interval
        while self.next_interim < self.config.min_query_seconds:
            self.next_interim += self.interval
        self.pending_interim = False
        self.cache: dict[tuple[int, int], np.ndarray] = {}  # (tempo view, window start) -> embedding [dim]
        gate = state.retriever.gate  # the melody check, fed only the new audio of each answer
        self.melody = None if gate is None else gate.streaming(
            0 if self.sample_rate == C.SAMPLE_RATE else C.SAMPLE_RATE // 2)
        self.confident_streak: list[str] = []  # top track of consecutive confident interims

    @property
    def seconds(self) -> float:
        return len(self.buffer) // self.frame_bytes / self.sample_rate

    def add(self, chunk: bytes) -> bool:
        """Append a chunk; True when the audio cap is reached (the stream is then answered).
        RESOURCE_EXHAUSTED when a rate and channel count so high that the byte cap holds less audio
        than a query needs pass that cap (384 kHz x 16 channels of float32: 0.7 s per 16 MB)."""
        if self.cap_is_too_small and len(self.buffer) + len(chunk) > self.max_bytes:
            self.servicer._check_size(len(self.buffer) + len(chunk), "the stream's audio so far")
        self.buffer.extend(chunk)
        capped = len(self.buffer) >= self.max_bytes
        if capped:
            del self.buffer[self.max_bytes:]
        self.outcome.audio_seconds = self.seconds
        if self.seconds >= self.next_interim and not capped:
            self.pending_interim = True
            while self.next_interim <= self.seconds:
                self.next_interim += self.interval
        return capped

    def _audio(self, final: bool) -> np.ndarray:
        whole = len(self.buffer) - len(self.buffer) % self.frame_bytes
        try:
            return pcm_to_audio(bytes(self.buffer[:whole]), self.sample_rate, pcm_format=self.pcm_format,
                                channels=self.channels, min_seconds=self.config.min_query_seconds,
                                max_seconds=self.config.max_query_seconds + 0.01)
        except TooShortAudioError as e:
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                              f"the stream ended with too little audio: {e}") from e
        except AudioError as e:
            if not final and isinstance(e, SilentAudioError):
                raise  # no interim answer for silence so far; the final answer decides
            raise _RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e

    def _embed(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embeddings of the query windows of `audio` in each tempo view (as `query_features`):
        (emb [n, dim], offsets [n] s, views [n]), re-using windows embedded earlier. With a model that
        splits its front-end the other views are stretched from the spectrogram, as for Identify."""
        rates = self.state.retriever.config.query_tempo_rates
        features_of = self.state.features_of
        stretch = bool(getattr(features_of, "splits_frontend", False))
        # audio resampled to SAMPLE_RATE may still change near its end as more arrives: cache only settled windows
        settle = 0 if self.sample_rate == C.SAMPLE_RATE else C.SAMPLE_RATE // 2
        wanted: list[tuple[int, int]] = []  # (tempo view, window start sample), in query_features order
        todo: dict[tuple[int, int], np.ndarray] = {}  # raw windows to embed
        todo_logp: dict[tuple[int, int], np.ndarray] = {}  # stretched windows' log power to embed
        settled: set[tuple[int, int]] = set()
        offsets, views = [], []
        source = None
        for v, rate in enumerate(rates):
            if stretch and tempo_fraction(rate) != 1:
                source = features_of.stretch_source(audio, rates) if source is None else source
                logp, starts, reads_to = features_of.stretched_view(source, audio.shape[0], rate)
                for i, st in enumerate(starts.tolist()):
                    wanted.append((v, st))
                    if reads_to[i] <= audio.shape[0] - settle:
                        settled.add((v, st))
                    if (v, st) not in self.cache:
                        todo_logp[(v, st)] = logp[i]
            else:
                view = tempo_view(audio, rate)
                starts = window_starts(view.shape[0], view_window_hop(rate))
                view_settle = 0 if settle == 0 and tempo_fraction(rate) == 1 else C.SAMPLE_RATE // 2
                padded = view if view.shape[0] >= C.WINDOW_SAMPLES else np.pad(
                    view, (0, C.WINDOW_SAMPLES - view.shape[0]))
                for st in starts.tolist():
                    wanted.append((v, st))
                    if st + C.WINDOW_SAMPLES <= view.shape[0] - view_settle:
                        settled.add((v, st))
                    if (v, st) not in self.cache:
                        todo[(v, st)] = padded[st : st + C.WINDOW_SAMPLES]
            offsets.append(starts / C.SAMPLE_RATE)
            views.append(np.full(starts.shape[0], v, np.int64))
        fresh: dict[tuple[int, int], np.ndarray] = {}
        if todo or todo_logp:
            parts = []
            if todo:
                parts.append(window_features(features_of, np.stack(list(todo.values())).astype(np.float32)))
            if todo_logp:
                parts.append(np.stack(list(todo_logp.values())))
            emb = self.servicer._embed(self.embedding, np.concatenate(parts), self.context)
            fresh = dict(zip([*todo, *todo_logp], emb))
        out = np.stack([fresh[k] if k in fresh else self.cache[k] for k in wanted])
        self.cache.update({k: e for k, e in fresh.items() if k in settled})
        return out, np.concatenate(offsets).astype(np.float32), np.concatenate(views)

    def _answer(self, final: bool) -> pb.StreamIdentifyResponse:
        audio = self._audio(final)
        # no melody so far is answered as such; a later answer may hear one
        t0 = time.perf_counter()
        melody = self.melody.check(audio) if self.melody is not None else None
        self.outcome.melody_ms += (time.perf_counter() - t0) * 1000.0
        result = self.state.retriever.identify(audio, top_k=self.top_k, embed=lambda a: QueryEmbedding(*self._embed(a)),
                                               melody=melody)
        self.outcome.record(result)
        self.outcome.answers += 1
        response = pb.StreamIdentifyResponse(result=RecognizerServicer._response(result, self.state),
                                             is_final=final)
        if not final and self._confident_twice(result):
            response.is_final = True  # confident and stable: stop listening
        if response.is_final and self.include_pitch:
            t0 = time.perf_counter()
            self.servicer._add_pitch(response.result, audio, result)
            self.outcome.pitch_ms += (time.perf_counter() - t0) * 1000.0
        return response

    def _confident_twice(self, result: Any) -> bool:
        """Whether this interim answer and the one before both name the same track, confidently."""
        top = result.matches[0] if result.matches else None
        if (top is not None and not result.no_match
                and top.score >= result.threshold + self.config.confident_margin):
            if self.confident_streak and self.confident_streak[-1] != top.track_id:
                self.confident_streak = []
            self.confident_streak.append(top.track_id)
        else:
            self.confident_streak = []
        return len(self.confident_streak) >= 2 and self.seconds >= self.config.early_final_seconds

    def answers(self) -> Iterator[pb.StreamIdentifyResponse]:
        """An interim answer when one is due (or none, e.g. while the audio is still silent)."""
        if not self.pending_interim:
            return
        self.pending_interim = False
        try:
            yield self._answer(final=False)
        except SilentAudioError:
            return

    def final(self) -> pb.StreamIdentifyResponse:
        return self._answer(final=True)
