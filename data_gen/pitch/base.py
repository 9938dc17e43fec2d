"""The one pitch-track type and extractor interface every backend (CREPE, SPICE, pYIN) implements.

A `PitchTrack` holds one frame every `PITCH_HOP` samples (10 ms); frame i is centred at
i * PITCH_HOP_SECONDS, so a recording of N samples has `num_pitch_frames(N)` = 1 + N // PITCH_HOP
frames (frames are centred, the signal is padded at both ends). Downstream code (melody features,
query/master alignment) can therefore mix tracks from different backends freely.
"""

from __future__ import annotations

import abc
import dataclasses
import logging

import numpy as np

from data_gen import constants as C

logger = logging.getLogger(__name__)

CENTS_REFERENCE_HZ = 10.0
"""Cents are measured from 10 Hz (the CREPE convention; any fixed reference works for differences)."""


class PitchError(RuntimeError):
    """Base class for pitch-extraction failures."""


class PitchModelUnavailableError(PitchError):
    """The model a backend needs (weights file, SavedModel, hub handle) cannot be found or loaded.

    `str(error)` says what was looked for and how to point the backend at a model.
    """


def num_pitch_frames(num_samples: int) -> int:
    """Frames on the 10 ms grid for a recording of `num_samples` samples (centred frames)."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return 1 + num_samples // C.PITCH_HOP


def frame_times(num_frames: int) -> np.ndarray:
    """Centre time in seconds of each 10 ms frame: float64 [frames]."""
    return np.arange(num_frames, dtype=np.float64) * C.PITCH_HOP_SECONDS


def hz_to_cents(hz: np.ndarray, reference_hz: float = CENTS_REFERENCE_HZ) -> np.ndarray:
    """Hz -> cents above `reference_hz`; non-positive frequencies map to NaN. float64 [n]."""
    hz = np.asarray(hz, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cents = 1200.0 * np.log2(hz / reference_hz)
    return np.where(hz > 0, cents, np.nan)


def cents_to_hz(cents: np.ndarray, reference_hz: float = CENTS_REFERENCE_HZ) -> np.ndarray:
    """Cents above `reference_hz` -> Hz. float64 [n]."""
    return reference_hz * np.power(2.0, np.asarray(cents, dtype=np.float64) / 1200.0)


def midi_to_hz(midi: np.ndarray) -> np.ndarray:
    """MIDI note numbers (fractional allowed) -> Hz; 0 (the 'unvoiced' code) maps to 0 Hz."""
    midi = np.asarray(midi, dtype=np.float64)
    return np.where(midi > 0, 440.0 * np.power(2.0, (midi - 69.0) / 12.0), 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class PitchTrack:
    """Frame-wise pitch of a mono recording on the 10 ms grid (frame i centred at i * 10 ms).

    f0_hz: float32 [frames] — the backend's best pitch estimate for every frame, also for unvoiced
        ones (there it may be meaningless); always > 0 and finite. Mask with `voiced`.
    confidence: float32 [frames] in [0, 1] — how sure the backend is that the frame is pitched.
    voiced: bool [frames] — the backend's voicing decision (usually confidence > a threshold).
    """

    f0_hz: np.ndarray
    confidence: np.ndarray
    voiced: np.ndarray

    def __post_init__(self) -> None:
        f0 = np.ascontiguousarray(self.f0_hz, dtype=np.float32)
        confidence = np.ascontiguousarray(self.confidence, dtype=np.float32)
        voiced = np.ascontiguousarray(self.voiced, dtype=bool)
        if not (f0.ndim == confidence.ndim == voiced.ndim == 1):
            raise ValueError("PitchTrack arrays must be 1-D [frames]")
        if not (f0.shape == confidence.shape == voiced.shape):
            raise ValueError(
                "PitchTrack arrays must have the same length, got "
                f"f0 {f0.shape}, confidence {confidence.shape}, voiced {voiced.shape}"
            )
        if not np.all(np.isfinite(f0)) or np.any(f0 <= 0):
            raise ValueError("PitchTrack.f0_hz must be finite and positive in every frame")
        object.__setattr__(self, "f0_hz", f0)
        object.__setattr__(self, "confidence", confidence)
        object.__setattr__(self, "voiced", voiced)

    def __len__(self) -> int:
        return int(self.f0_hz.shape[0])

    @property
    def times(self) -> np.ndarray:
        """Centre time in seconds of each frame: float64 [frames]."""
        return frame_times(len(self))

    def f0_cents(self) -> np.ndarray:
        """f0 in cents above 10 Hz: float64 [frames]."""
        return hz_to_cents(self.f0_hz)

    def f0_midi(self) -> np.ndarray:
        """f0 as fractional MIDI note numbers, NaN where unvoiced: float64 [frames]."""
        midi = 69.0 + 12.0 * np.log2(self.f0_hz.astype(np.float64) / 440.0)
        return np.where(self.voiced, midi, np.nan)

    def at_times(self, times: np.ndarray) -> PitchTrack:
        """The frames nearest to `times` (seconds; clipped to the track): a new PitchTrack [len(times)]."""
        if len(self) == 0:
            raise ValueError("cannot sample an empty PitchTrack")
        index = np.rint(np.asarray(times, dtype=np.float64) / C.PITCH_HOP_SECONDS).astype(np.int64)
        index = np.clip(index, 0, len(self) - 1)
        return PitchTrack(self.f0_hz[index], self.confidence[index], self.voiced[index])


def held_notes(midi: np.ndarray, min_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The notes of a pitch contour: runs of frames whose pitch rounds to one semitone for at least
    `min_frames` frames. midi float [frames] (NaN = unvoiced) -> (semitone int64 [notes], first frame
    [notes], frame after the last [notes])."""
    midi = np.asarray(midi, dtype=np.float64)
    voiced = np.isfinite(midi)
    notes = np.where(voiced, np.rint(np.where(voiced, midi, 0.0)), -1).astype(np.int64)
    if notes.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    starts = np.r_[0, np.flatnonzero(np.diff(notes)) + 1]
    stops = np.r_[starts[1:], notes.size]
    keep = (stops - starts >= min_frames) & voiced[starts]
    return notes[starts[keep]], starts[keep], stops[keep]


def resample_to_pitch_grid(
    source_times: np.ndarray,
    f0_hz: np.ndarray,
    confidence: np.ndarray,
    num_frames: int,
    voicing_threshold: float,
) -> PitchTrack:
    """Re-grid a track sampled at arbitrary frame times onto the 10 ms grid.

    Confidence is interpolated linearly; f0 linearly in cents where both neighbouring source frames
    are voiced, else taken from the nearest source frame (so no glide is invented across a voicing
    boundary); voiced = interpolated confidence > `voicing_threshold`. Outside the source span the
    edge frames are held. source_times: float [n] increasing; f0_hz, confidence: [n] -> PitchTrack
    [num_frames].
    """
    source_times = np.asarray(source_times, dtype=np.float64)
    f0_hz = np.asarray(f0_hz, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    if source_times.ndim != 1 or source_times.size == 0:
        raise ValueError("resample_to_pitch_grid needs at least one source frame")
    if not (source_times.shape == f0_hz.shape == confidence.shape):
        raise ValueError("source_times, f0_hz and confidence must have the same shape")
    target = frame_times(num_frames)
    conf = np.interp(target, source_times, confidence)
    cents = hz_to_cents(np.maximum(f0_hz, 1e-3))
    right = np.clip(np.searchsorted(source_times, target, side="left"), 0, source_times.size - 1)
    left = np.clip(right - 1, 0, source_times.size - 1)
    nearest = np.where(
        np.abs(source_times[left] - target) <= np.abs(source_times[right] - target), left, right
    )
    out_cents = cents[nearest]
    source_voiced = confidence > voicing_threshold
    both = source_voiced[left] & source_voiced[right] & (left != right)
    if np.any(both):
        span = source_times[right] - source_times[left]
        weight = np.clip((target - source_times[left]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
        linear = cents[left] + weight * (cents[right] - cents[left])
        out_cents = np.where(both, linear, out_cents)
    return PitchTrack(
        f0_hz=cents_to_hz(out_cents).astype(np.float32),
        confidence=np.clip(conf, 0.0, 1.0).astype(np.float32),
        voiced=conf > voicing_threshold,
    )


class PitchExtractor(abc.ABC):
    """Mono float32 audio at SAMPLE_RATE -> PitchTrack on the 10 ms grid.

    Implementations load their model once in `__init__` (so one instance serves many calls) and
    raise `PitchModelUnavailableError` there when it cannot be found.
    """

    name: str = "abstract"

    @abc.abstractmethod
    def extract(self, audio: np.ndarray) -> PitchTrack:
        """audio: float32 [samples] mono at SAMPLE_RATE -> PitchTrack [1 + samples // PITCH_HOP]."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_audio(audio: np.ndarray) -> np.ndarray:
    """Validate the common extractor input: 1-D, finite, non-empty; returns float32 [samples]."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape [samples], got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError("cannot extract pitch from empty audio")
    audio = audio.astype(np.float32, copy=False)
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio contains NaN or infinite samples")
    return audio
