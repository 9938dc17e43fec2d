"""Decoding any common audio format to mono float32 at the project's sample rate.

Every entry point into Earworm (pipelines, training readers, the server) goes through
`decode_audio` / `load_audio` / `pcm_to_audio`, so the same typed errors reach every user:
the server maps them to INVALID_ARGUMENT, the pipelines route them to an errors output.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from data_gen import constants as C


class AudioError(ValueError):
    """Base class: the recording cannot be used. `str(error)` is meant for a person."""


class EmptyAudioError(AudioError):
    """No bytes, or a container holding zero samples."""


class UndecodableAudioError(AudioError):
    """The bytes are not a recording in a supported format (wav, flac, ogg/opus, mp3)."""


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
    if max_seconds is not None and seconds > max_seconds:
        raise TooLongAudioError(
            f"the recording is {seconds:.1f} s long; at most {max_seconds:g} s is accepted"
        )
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
    """Encoded bytes (wav/flac/ogg/opus/mp3) -> mono float32 [time] at `target_rate`."""
    if not data:
        raise EmptyAudioError("the recording is empty (0 bytes)")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise UndecodableAudioError(
            "the recording could not be decoded; send WAV, FLAC, Ogg (Vorbis/Opus) or MP3 audio, "
            f"or raw PCM with its sample rate ({e})"
        ) from e
    samples = _to_mono(np.asarray(samples))
    if samples.size == 0:
        raise EmptyAudioError("the recording decoded to zero audio samples")
    if not np.all(np.isfinite(samples)):
        raise NonFiniteAudioError("the recording contains NaN or infinite sample values")
    samples = resample(samples, int(rate), target_rate)
    return validate_audio(
        samples,
        sample_rate=target_rate,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        reject_silence=reject_silence,
    )


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
    if sample_rate <= 0 or sample_rate > 384_000:
        raise AudioError(f"PCM sample rate must be between 1 and 384000 Hz, got {sample_rate}")
    if channels < 1:
        raise AudioError(f"PCM channel count must be at least 1, got {channels}")
    dtype = PCM_FORMATS[pcm_format]
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise UndecodableAudioError(
            f"raw PCM length {len(data)} bytes is not a whole number of {pcm_format} frames "
            f"of {channels} channel(s)"
        )
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
