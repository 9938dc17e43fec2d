"""A small Python client for the Earworm Recognizer service.

    client = RecognizerClient("localhost:50051")
    result = client.identify_file("hum.wav", top_k=5)
    print("No match" if result.no_match else result.matches[0].title)

Errors come back as `ClientError` with a one-line message meant for a person (the gRPC status
code is kept in `.code`), e.g. "cannot reach the Earworm server at localhost:50051".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from data_gen import constants as C
from protos.earworm.v1 import recognizer_pb2 as pb
from protos.earworm.v1 import recognizer_pb2_grpc as pb_grpc

NO_MATCH_REASONS = {value: "" if value == pb.NO_MATCH_REASON_UNSPECIFIED else
                    pb.NoMatchReason.Name(value).removeprefix("NO_MATCH_REASON_").lower()
                    for value in pb.NoMatchReason.values()}
"""NoMatchReason -> "" (a match), "below_threshold" or "no_melody" (as `serving.retrieval` names them)."""

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT_S = 30.0


class ClientError(RuntimeError):
    """A request failed; `str(error)` is a readable one-line explanation."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ClientMatch:
    rank: int
    track_id: str
    title: str
    artist: str
    score: float
    offset_seconds: float


@dataclass(frozen=True)
class Identification:
    """One answer of the service (the fields of IdentifyResponse, as plain Python)."""

    matches: list[ClientMatch]
    no_match: bool
    no_match_threshold: float
    model_version: str
    index_version: str
    audio_seconds: float
    is_final: bool = True
    no_match_reason: str = ""
    """"" (there is a match), "below_threshold" or "no_melody" (nothing was searched)."""
    melody: dict | None = None
    """What the server heard: voiced_seconds, voiced_fraction, pitch_range_semitones, distinct_notes,
    phrase_seconds, explanation (None when the server does not check)."""

    @property
    def no_melody(self) -> bool:
        return self.no_match_reason == "no_melody"

    @property
    def best(self) -> ClientMatch | None:
        """The top match when the service is confident, else None."""
        return None if self.no_match or not self.matches else self.matches[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_proto(response: pb.IdentifyResponse, is_final: bool = True) -> "Identification":
        return Identification(
            matches=[ClientMatch(m.rank, m.track_id, m.title, m.artist, float(m.score),
                                 float(m.offset_seconds)) for m in response.matches],
            no_match=response.no_match,
            no_match_threshold=float(response.no_match_threshold),
            model_version=response.model_version,
            index_version=response.index_version,
            audio_seconds=float(response.audio_seconds),
            is_final=is_final,
            no_match_reason=NO_MATCH_REASONS.get(response.no_match_reason, ""),
            melody=MessageToDict(response.melody, preserving_proto_field_name=True,
                                 always_print_fields_with_no_presence=True)
            if response.HasField("melody") else None,
        )


def _explain(error: grpc.RpcError, target: str) -> ClientError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.UNAVAILABLE and "loading" in (details or ""):
        msg = f"the Earworm server at {target} is not ready yet: {details}"
    elif code == grpc.StatusCode.UNAVAILABLE:
        msg = f"cannot reach the Earworm server at {target} ({details})"
    elif code == grpc.StatusCode.INVALID_ARGUMENT:
        msg = f"the server refused the recording: {details}"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        msg = f"the server wants a valid token (--token-file or $EARWORM_AUTH_TOKEN): {details}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        msg = f"no answer in time from {target}: {details}"
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        msg = f"the recording is too large: {details}"
    else:
        msg = f"{code.name if code else 'error'}: {details}"
    return ClientError(msg, code)


class RecognizerClient:
    """Blocking client; thread-safe (one channel, shared by every call). Each client holds its own
    connection (gRPC would otherwise share one between channels to the same address): a server of
    several processes (`earworm serve --processes N`) spreads connections, not calls, over them."""

    def __init__(self, target: str = DEFAULT_TARGET, token: str | None = None,
                 tls_ca: str | os.PathLike[str] | bytes | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 tls: bool = False):
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 16 << 20),
                   ("grpc.use_local_subchannel_pool", 1)]
        if tls_ca is not None or tls:
            root = tls_ca if isinstance(tls_ca, bytes) or tls_ca is None else Path(tls_ca).read_bytes()
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._stub = pb_grpc.RecognizerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RecognizerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def identify_request(self, request: pb.IdentifyRequest, timeout: float | None = None) -> Identification:
        """Send a prepared IdentifyRequest."""
        try:
            response = self._stub.Identify(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _explain(e, self.target) from e
        return Identification.from_proto(response)

    def identify_bytes(self, encoded: bytes, top_k: int = 0, timeout: float | None = None) -> Identification:
        """An encoded recording (WAV, FLAC, Ogg, MP3, M4A/AAC, WebM/Opus bytes); the server decodes it."""
        return self.identify_request(pb.IdentifyRequest(audio=pb.Audio(encoded=encoded), top_k=top_k),
                                     timeout)

    def identify_file(self, path: str | os.PathLike[str], top_k: int = 0,
                      timeout: float | None = None) -> Identification:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ClientError(f"cannot read {path}: {e.strerror or e}") from e
        return self.identify_bytes(data, top_k, timeout)

    def identify_audio(self, samples: np.ndarray, sample_rate: int = C.SAMPLE_RATE, top_k: int = 0,
                       timeout: float | None = None) -> Identification:
        """Mono float samples [time] (or [time, channels]) sent as raw float32 PCM."""
        samples = np.asarray(samples, dtype="<f4")
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        pcm = pb.RawPcm(data=samples.tobytes(), sample_rate_hz=sample_rate, channels=channels,
                        encoding=pb.PCM_ENCODING_F32LE)
        return self.identify_request(pb.IdentifyRequest(audio=pb.Audio(pcm=pcm), top_k=top_k), timeout)

    def stream(self, samples: np.ndarray, sample_rate: int = C.SAMPLE_RATE, top_k: int = 0,
               chunk_seconds: float = 0.25, interim_interval_seconds: float = 0.0,
               realtime: bool = False, timeout: float | None = None) -> Iterator[Identification]:
        """Stream mono samples in chunks (as a microphone would); yields interim answers and the
        final one (`is_final`). `realtime` paces the chunks at the speed of the audio."""
        import time

        samples = np.asarray(samples, dtype="<f4")
        chunk = max(1, int(chunk_seconds * sample_rate))

        def requests() -> Iterator[pb.StreamIdentifyRequest]:
            yield pb.StreamIdentifyRequest(config=pb.StreamConfig(
                sample_rate_hz=sample_rate, channels=1, encoding=pb.PCM_ENCODING_F32LE, top_k=top_k,
                interim_interval_seconds=interim_interval_seconds))
            for start in range(0, samples.shape[0], chunk):
                if realtime:
                    time.sleep(chunk_seconds)
                yield pb.StreamIdentifyRequest(audio_chunk=samples[start : start + chunk].tobytes())

        try:
            for response in self._stub.StreamIdentify(requests(), timeout=timeout or self.timeout,
                                                       metadata=self._metadata):
                yield Identification.from_proto(response.result, response.is_final)
        except grpc.RpcError as e:
            raise _explain(e, self.target) from e


def format_offset(seconds: float) -> str:
    """83.4 -> '1:23'."""
    total = max(0, int(round(seconds)))
    return f"{total // 60}:{total % 60:02d}"


def format_table(result: Identification) -> str:
    """The human answer of `earworm identify`: 'No match' spelled out, then the ranked table."""
    lines = []
    if result.no_melody:
        why = (result.melody or {}).get("explanation") or "no melody heard"
        return (f"No melody heard: {why.removeprefix('no melody heard: ')}. Hum, whistle or sing the tune "
                f"(a few seconds of it, several notes).")
    if result.no_match:
        lines.append(f"No match: the best score is below the threshold {result.no_match_threshold:.3f} "
                     "(the song is probably not in the catalogue).")
        if result.matches:
            lines.append("Closest candidates (low confidence):")
    if not result.matches:
        lines.append("No candidates returned.")
        return "\n".join(lines)
    title_w = max(5, *(len(m.title) for m in result.matches))
    artist_w = max(6, *(len(m.artist) for m in result.matches))
    lines.append(f"{'rank':>4}  {'title':<{title_w}}  {'artist':<{artist_w}}  {'score':>6}  {'offset':>6}")
    for m in result.matches:
        lines.append(f"{m.rank:>4}  {m.title:<{title_w}}  {m.artist:<{artist_w}}  {m.score:>6.3f}  "
                     f"{format_offset(m.offset_seconds):>6}")
    lines.append(f"({result.audio_seconds:.1f} s of audio; model {result.model_version}, "
                 f"index {result.index_version})")
    return "\n".join(lines)
