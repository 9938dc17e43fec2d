"""Decoding any common audio format to mono float32 at the project's sample rate.

Every entry point into Earworm (pipelines, training readers, the server) goes through
`decode_audio` / `load_audio` / `pcm_to_audio`, so the same typed errors reach every user:
the server maps them to INVALID_ARGUMENT, the pipelines route them to an errors output.

Two decoders, one result:

- libsndfile (`soundfile`) first: the fast path for WAV, FLAC and Ogg Vorbis/Opus.
- FFmpeg through PyAV (`av`) for MP3 (recognised by its ID3 tag or frame header; libsndfile's
  mpg123 prints complaints about damaged frames on stderr) and whenever libsndfile cannot read the
  bytes: MP3 streams cut mid-frame (what real catalogues and recorders send; every media player
  plays them), M4A/AAC (phone voice
  memos), WebM/Opus (browser MediaRecorder), and the other containers in `FFMPEG_DEMUXERS`.
  The stream is demuxed packet by packet and a packet that does not decode (a frame cut by the
  start or the end of the stream) is skipped and counted, as the ffmpeg command-line tool does.
  Only the demuxers in `FFMPEG_DEMUXERS` may open a request's bytes (no playlists, no
  network or file references: the bytes are untrusted).

Both paths decode at the recording's own sample rate, average the channels to mono (the same
plain mean on both paths) and then resample once with libsoxr (`resample`, quality HQ) to the
target rate. Memory stays bounded by `max_seconds`: a recording longer than that is refused
before it is resampled (libsndfile: from the frame count in its header, before reading; FFmpeg: as
soon as the decoded audio passes `max_seconds`; raw PCM: from the byte count and the claimed rate),
so a claimed sample rate of 1 Hz cannot make resampling allocate gigabytes.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from data_gen import constants as C

log = logging.getLogger(__name__)

FORMATS_WE_READ = "WAV, FLAC, Ogg Vorbis/Opus, MP3, M4A/AAC, WebM/Opus"
"""The formats named in error messages (FFmpeg reads a few more: see `FFMPEG_DEMUXERS`)."""

FFMPEG_DEMUXERS = (
    "mp3", "mov", "matroska", "webm", "ogg", "wav", "w64", "flac", "aac", "aiff", "caf", "amr", "asf",
)
"""FFmpeg demuxers allowed to open a recording: audio files and the containers phones and
browsers record into (mov = MP4/M4A/3GP, matroska = MKV/WebM, asf = WMA). Nothing that can
reference other files or URLs (HLS, concat, ...)."""

MIN_NATIVE_RATE = 4_000
"""Lowest sample rate a recording (file, stream or raw PCM) may claim. Narrow-band telephone audio
is 8 kHz and a hum's fundamental and first harmonics need a few kHz; below 4 kHz there is no melody
to hear, and a tiny claimed rate would make a few bytes resample into gigabytes."""
MAX_NATIVE_RATE = 384_000
"""Highest sample rate a recording (file, stream or raw PCM) may claim: the highest that studio
converters use; a higher one is damage or an attack (memory grows with the claimed rate)."""
MAX_CHANNELS = 16
"""Most channels a recording may have (memory grows with them before the mix to mono)."""
READ_BLOCK_FRAMES = 1 << 16
"""libsndfile reads this many frames at a time and mixes each block to mono at once, so a file's
channel count never multiplies the memory a request holds."""

NOT_AUDIO_MESSAGE = (
    "the recording could not be decoded: it is not audio in a format we read "
    f"({FORMATS_WE_READ}) — send one of those, or raw PCM with its sample rate"
)


class AudioError(ValueError):
    """Base class: the recording cannot be used. `str(error)` is meant for a person."""


class EmptyAudioError(AudioError):
    """No bytes, or a container holding zero samples."""


class UndecodableAudioError(AudioError):
    """The bytes are not a recording in a supported format (WAV, FLAC, Ogg Vorbis/Opus, MP3 --
    also cut mid-frame --, M4A/AAC, WebM/Opus, and the other containers of `FFMPEG_DEMUXERS`),
    hold no audio track, or none of their audio decodes."""


class TooShortAudioError(AudioError):
    """Fewer seconds than the caller needs."""


class TooLongAudioError(AudioError):
    """More seconds than the caller accepts."""


class SilentAudioError(AudioError):
    """Decoded fine, but holds (near-)digital silence."""


class NonFiniteAudioError(AudioError):
    """Samples contain NaN or infinity."""


def _to_mono(samples: np.ndarray) -> np.ndarray:
    """[time] or [time, channels] -> [time] float32."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, source_rate: int, target_rate: int = C.SAMPLE_RATE) -> np.ndarray:
    """High-quality resampling (libsoxr). [time] float32 -> [time'] float32."""
    if source_rate <= 0:
        raise AudioError(f"sample rate must be positive, got {source_rate}")
    if source_rate == target_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, source_rate, target_rate, quality="HQ").astype(np.float32)


def _refuse_if_too_long(seconds: float, max_seconds: float | None, *, at_least: bool = False) -> None:
    """Raise `TooLongAudioError` when `seconds` exceeds `max_seconds` (`at_least`: decoding was
    stopped there, so the recording is longer still)."""
    if max_seconds is not None and seconds > max_seconds:
        length = f"longer than {max_seconds:g} s" if at_least else f"{seconds:.1f} s long"
        raise TooLongAudioError(f"the recording is {length}; at most {max_seconds:g} s is accepted")


def validate_audio(
    samples: np.ndarray,
    *,
    sample_rate: int = C.SAMPLE_RATE,
    min_seconds: float | None = None,
    max_seconds: float | None = None,
    reject_silence: bool = True,
) -> np.ndarray:
    """Check decoded samples; returns them unchanged or raises a typed `AudioError`."""
    if samples.size == 0:
        raise EmptyAudioError("the recording contains no audio samples")
    if not np.all(np.isfinite(samples)):
        raise NonFiniteAudioError("the recording contains NaN or infinite sample values")
    seconds = samples.shape[0] / sample_rate
    if min_seconds is not None and seconds < min_seconds:
        raise TooShortAudioError(
            f"the recording is {seconds:.2f} s long; at least {min_seconds:g} s is needed"
        )
    _refuse_if_too_long(seconds, max_seconds)
    if reject_silence:
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        if rms < C.SILENCE_RMS:
            raise SilentAudioError(
                f"the recording is silent (RMS level {20 * np.log10(rms + 1e-12):.0f} dBFS)"
            )
    return samples


def decode_audio(
    data: bytes,
    *,
    target_rate: int = C.SAMPLE_RATE,
    min_seconds: float | None = None,
    max_seconds: float | None = None,
    reject_silence: bool = True,
) -> np.ndarray:
    """Encoded bytes -> mono float32 [time] at `target_rate`.

    WAV, FLAC and Ogg Vorbis/Opus (libsndfile), else MP3 (also cut mid-frame), M4A/AAC, WebM/Opus
    and the rest of `FFMPEG_DEMUXERS` (FFmpeg via PyAV). See the module docstring."""
    if not data:
        raise EmptyAudioError("the recording is empty (0 bytes)")
    decoded = None if _looks_like_mp3(data) else _decode_with_soundfile(data, max_seconds)
    if decoded is None:
        decoded = _decode_with_ffmpeg(data, max_seconds)
    samples, rate = decoded
    if samples.size == 0:
        raise EmptyAudioError("the recording decoded to zero audio samples")
    if not np.all(np.isfinite(samples)):
        raise NonFiniteAudioError("the recording contains NaN or infinite sample values")
    _refuse_if_too_long(samples.shape[0] / rate, max_seconds)
    samples = resample(samples, rate, target_rate)
    return validate_audio(
        samples,
        sample_rate=target_rate,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        reject_silence=reject_silence,
    )


def _looks_like_mp3(data: bytes) -> bool:
    """An ID3 tag or an MPEG audio frame header at the start: FFmpeg reads it directly (libsndfile's
    mpg123 prints its complaints about damaged frames on stderr and refuses streams cut mid-frame)."""
    return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE6) in (0xE2, 0xE4, 0xE6))


_SOUNDFILE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError)


def _decode_with_soundfile(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int] | None:
    """libsndfile: (mono float32 at the native rate, rate), or None when it cannot read the
    bytes (FFmpeg gets them next).

    The header's length is never trusted (an Ogg granule position or a FLAC total_samples may claim
    anything, 0 meaning unknown): the audio is read block by block, each block counted as libsndfile
    returns it, and reading stops with `TooLongAudioError` once past `max_seconds`."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels = int(f.samplerate), int(f.channels)
            if rate <= 0:
                return None
            if not MIN_NATIVE_RATE <= rate <= MAX_NATIVE_RATE or not 0 < channels <= MAX_CHANNELS:
                samples = None  # refused below, outside this `except ValueError`
            else:  # block by block, each mixed to mono at once (memory: one mono copy)
                samples, frames = [], 0
                limit = None if max_seconds is None else int(max_seconds * rate)
                while limit is None or frames <= limit:
                    block = f.read(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
                    if block.shape[0] == 0:
                        break
                    samples.append(block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0])
                    frames += block.shape[0]
    except _SOUNDFILE_ERRORS as e:
        log.debug("libsndfile cannot read the recording (%s); trying FFmpeg", e)
        return None
    if samples is None:
        _refuse_layout(rate, channels)
    _refuse_if_too_long(frames / rate, max_seconds, at_least=True)
    return np.ascontiguousarray(np.concatenate(samples) if samples else np.zeros(0), dtype=np.float32), rate


def _refuse_layout(rate: int, channels: int) -> None:
    """UndecodableAudioError for a sample rate or channel count no recording has."""
    if not MIN_NATIVE_RATE <= rate <= MAX_NATIVE_RATE:
        raise UndecodableAudioError(f"the recording claims {rate:,} samples per second; the sample rate must be "
                                    f"between {MIN_NATIVE_RATE:,} and {MAX_NATIVE_RATE:,} Hz")
    if not 0 < channels <= MAX_CHANNELS:
        raise UndecodableAudioError(f"the recording claims {channels} channels; at most {MAX_CHANNELS} "
                                    "are accepted")


def _decode_with_ffmpeg(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """FFmpeg (PyAV): (mono float32 at the native rate, rate) of the first audio track.

    Demuxes packet by packet; a packet that does not decode (a frame cut by the start or end of
    the stream, or damaged) is skipped and counted. Decoding stops with `TooLongAudioError` as
    soon as the decoded audio passes `max_seconds`."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r",
                            options={"format_whitelist": ",".join(FFMPEG_DEMUXERS)})
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        log.debug("FFmpeg cannot open the recording either (%s)", e)
        raise UndecodableAudioError(NOT_AUDIO_MESSAGE) from None
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams} - {"audio"})
            what = f" (it holds only {' and '.join(kinds)})" if kinds else ""
            raise UndecodableAudioError(
                f"the recording could not be decoded: the file has no sound track{what} — send a "
                f"recording of the hum, whistle or song ({FORMATS_WE_READ}), or raw PCM with its "
                "sample rate"
            )
        return _decode_ffmpeg_stream(container, container.streams.audio[0], max_seconds)


class _MonoCollector:
    """Decoded FFmpeg frames -> mono float32 chunks at the stream's first sample rate.

    PyAV's converter only changes the sample format to float32 planar (and the rate of a stream
    that changes rate midway); the channels are averaged here, as on the libsndfile path, and
    resampling to the target rate happens once, with soxr, in `decode_audio`. Refuses the
    recording as soon as the collected audio passes `max_seconds`."""

    def __init__(self, max_seconds: float | None):
        self.max_seconds = max_seconds
        self.chunks: list[np.ndarray] = []
        self.rate = 0
        self.frames = 0
        self._converter = None
        self._input = None

    def add(self, frame) -> None:
        import av

        if frame.samples == 0:
            return
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._input:  # the first frame, or the stream changed format midway
            self.flush()
            if not self.rate:
                self.rate = int(frame.sample_rate)
                if self.rate <= 0:
                    raise UndecodableAudioError(NOT_AUDIO_MESSAGE)
            _refuse_layout(self.rate, len(frame.layout.channels))
            self._converter = av.AudioResampler(format="fltp", layout=frame.layout, rate=self.rate)
            self._input = key
        self._take(self._converter.resample(frame))

    def flush(self) -> None:
        if self._converter is not None:
            self._take(self._converter.resample(None))
            self._converter = self._input = None

    def _take(self, frames) -> None:
        for out in frames:
            planes = out.to_ndarray()  # [channels, n] float32
            self.chunks.append(planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0])
            self.frames += planes.shape[1]
            _refuse_if_too_long(self.frames / self.rate, self.max_seconds, at_least=True)

    def samples(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0, np.float32)
        return np.ascontiguousarray(np.concatenate(self.chunks), dtype=np.float32)


def _decode_ffmpeg_stream(container, stream, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import av

    pcm = _MonoCollector(max_seconds)
    skipped = 0
    try:
        for packet in container.demux(stream):  # ends with an empty packet that flushes the decoder
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as e:
                skipped += 1
                log.debug("skipped an undecodable audio packet at pts %s (%s)", packet.pts, e)
                continue
            for frame in frames:
                pcm.add(frame)
        pcm.flush()
    except av.error.FFmpegError as e:  # the demuxer or decoder gave up midway
        if not pcm.frames:
            log.debug("FFmpeg failed before any audio was decoded (%s)", e)
            raise UndecodableAudioError(NOT_AUDIO_MESSAGE) from None
        log.warning("the recording is damaged after %.1f s of audio; keeping what decoded (%s)",
                    pcm.frames / pcm.rate, e)
    if skipped:
        # One or two: a stream cut mid-frame at its start or end (normal); more: real damage.
        level = logging.WARNING if skipped > 2 else logging.DEBUG
        log.log(level, "skipped %d undecodable audio packet(s) of the recording", skipped)
    if not pcm.frames and skipped:
        raise UndecodableAudioError(
            "the recording could not be decoded: none of its audio is readable (the file is damaged)"
        )
    return pcm.samples(), pcm.rate or C.SAMPLE_RATE


def load_audio(path: str | os.PathLike[str], **kwargs: object) -> np.ndarray:
    """Read a file from disk and `decode_audio` it (same keyword arguments)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"audio file not found: {path}") from e
    try:
        return decode_audio(data, **kwargs)  # type: ignore[arg-type]
    except AudioError as e:
        raise type(e)(f"{path}: {e}") from e


PCM_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


def pcm_to_audio(
    data: bytes,
    sample_rate: int,
    *,
    pcm_format: str = "s16le",
    channels: int = 1,
    target_rate: int = C.SAMPLE_RATE,
    min_seconds: float | None = None,
    max_seconds: float | None = None,
    reject_silence: bool = True,
) -> np.ndarray:
    """Raw interleaved PCM bytes -> mono float32 [time] at `target_rate`."""
    if not data:
        raise EmptyAudioError("the recording is empty (0 bytes)")
    if pcm_format not in PCM_FORMATS:
        raise AudioError(f"unknown PCM format {pcm_format!r}; use one of {sorted(PCM_FORMATS)}")
    if not MIN_NATIVE_RATE <= sample_rate <= MAX_NATIVE_RATE:
        raise AudioError(f"the PCM sample rate must be between {MIN_NATIVE_RATE:,} and {MAX_NATIVE_RATE:,} Hz, "
                         f"got {sample_rate:,}")
    if channels < 1:
        raise AudioError(f"PCM channel count must be at least 1, got {channels}")
    dtype = PCM_FORMATS[pcm_format]
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise UndecodableAudioError(
            f"raw PCM length {len(data)} bytes is not a whole number of {pcm_format} frames "
            f"of {channels} channel(s)"
        )
    # Refused before anything is converted or resampled: 100 kB of s16 mono claimed at 1 Hz
    # would otherwise resample to 800 M samples (3.2 GB) at 16 kHz.
    _refuse_if_too_long(len(data) // frame_bytes / sample_rate, max_seconds)
    samples = np.frombuffer(data, dtype=dtype).reshape(-1, channels)
    if dtype.kind == "i":
        samples = samples.astype(np.float32) / 32768.0
    samples = _to_mono(samples)
    if not np.all(np.isfinite(samples)):
        raise NonFiniteAudioError("the recording contains NaN or infinite sample values")
    samples = resample(samples, sample_rate, target_rate)
    return validate_audio(
        samples,
        sample_rate=target_rate,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        reject_silence=reject_silence,
    )


def write_audio(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int = C.SAMPLE_RATE) -> None:
    """Write mono float32 samples; the format follows the extension (.wav, .flac, .ogg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 1.0:
        samples = samples / peak
    subtype = "VORBIS" if path.suffix.lower() == ".ogg" else None
    sf.write(str(path), samples, sample_rate, subtype=subtype)


def encode_audio(samples: np.ndarray, sample_rate: int = C.SAMPLE_RATE, fmt: str = "WAV") -> bytes:
    """Mono float32 -> encoded bytes (WAV 16-bit by default; FLAC/OGG accepted)."""
    buf = io.BytesIO()
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS"}[fmt.upper()]
    sf.write(buf, np.clip(samples, -1.0, 1.0), sample_rate, format=fmt.upper(), subtype=subtype)
    return buf.getvalue()
