"""Pitch-tracker accuracy on real singing (MIR-1K) and the melody-extraction metrics behind it.

Metrics (the usual MIREX melody measures, 50-cent tolerance), computed from pooled frame counts:
- raw pitch accuracy (RPA): of the reference-voiced frames, the fraction whose estimated f0 is
  within 50 cents of the reference (the estimate's own voicing decision is ignored);
- raw chroma accuracy (RCA): the same with octave errors forgiven (difference folded mod 1200 c);
- voicing recall: of the reference-voiced frames, the fraction the tracker calls voiced;
- voicing false alarm: of the reference-unvoiced frames, the fraction the tracker calls voiced;
- overall accuracy: of all frames, those that are unvoiced in both, or voiced in both with the
  pitch within 50 cents.

MIR-1K labels (`pitch/<clip>.pv`) hold one MIDI value per 20 ms frame (0 = unvoiced), label frame j
centred at 0.02 * j + 0.02 s; the 10 ms track is sampled at those times (nearest frame, which is
exact: label j sits on track frame 2j + 2).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_gen import constants as C
from data_gen.pitch.base import PitchExtractor, PitchTrack, hz_to_cents, midi_to_hz

logger = logging.getLogger(__name__)

CENTS_TOLERANCE = 50.0
MIR1K_LABEL_HOP_SECONDS = 0.02
MIR1K_LABEL_OFFSET_SECONDS = 0.02


# --- Metrics ------------------------------------------------------------------------------------


def _pitch_errors_cents(ref_hz: np.ndarray, est_hz: np.ndarray) -> np.ndarray:
    """|est - ref| in cents where both are positive, +inf elsewhere. float64 [frames]."""
    diff = np.abs(hz_to_cents(est_hz) - hz_to_cents(ref_hz))
    return np.where(np.isfinite(diff), diff, np.inf)


def _chroma_errors_cents(ref_hz: np.ndarray, est_hz: np.ndarray) -> np.ndarray:
    """Pitch error folded to one octave (0..600 cents), +inf where undefined. float64 [frames]."""
    diff = _pitch_errors_cents(ref_hz, est_hz)
    with np.errstate(invalid="ignore"):
        folded = np.mod(diff, 1200.0)
    return np.where(np.isfinite(diff), np.minimum(folded, 1200.0 - folded), np.inf)


def _check(*arrays: np.ndarray) -> None:
    shapes = {np.shape(a) for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"metric inputs must be 1-D arrays of one length, got shapes {sorted(shapes)}")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


@dataclasses.dataclass(frozen=True)
class FrameCounts:
    """Frame tallies from which every metric follows; add them up across clips (pooled scores)."""

    frames: int = 0
    ref_voiced: int = 0
    pitch_correct: int = 0  # ref voiced, f0 within tolerance (estimated voicing ignored)
    chroma_correct: int = 0  # ref voiced, f0 within tolerance modulo octaves
    voiced_hits: int = 0  # ref voiced and est voiced
    false_alarms: int = 0  # ref unvoiced and est voiced
    overall_correct: int = 0  # both unvoiced, or both voiced with f0 within tolerance

    def __add__(self, other: FrameCounts) -> FrameCounts:
        return FrameCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )

    @property
    def ref_unvoiced(self) -> int:
        return self.frames - self.ref_voiced

    def scores(self) -> PitchScores:
        return PitchScores(
            raw_pitch_accuracy=_ratio(self.pitch_correct, self.ref_voiced),
            raw_chroma_accuracy=_ratio(self.chroma_correct, self.ref_voiced),
            voicing_recall=_ratio(self.voiced_hits, self.ref_voiced),
            voicing_false_alarm=_ratio(self.false_alarms, self.ref_unvoiced),
            overall_accuracy=_ratio(self.overall_correct, self.frames),
        )


@dataclasses.dataclass(frozen=True)
class PitchScores:
    """The five melody metrics in [0, 1] (NaN when their denominator is empty)."""

    raw_pitch_accuracy: float
    raw_chroma_accuracy: float
    voicing_recall: float
    voicing_false_alarm: float
    overall_accuracy: float


def frame_counts(
    ref_hz: np.ndarray,
    ref_voiced: np.ndarray,
    est_hz: np.ndarray,
    est_voiced: np.ndarray,
    tolerance_cents: float = CENTS_TOLERANCE,
) -> FrameCounts:
    """Tally one clip. All inputs [frames], aligned; ref_hz/est_hz may be anything where unvoiced."""
    _check(ref_hz, ref_voiced, est_hz, est_voiced)
    ref_voiced = np.asarray(ref_voiced, dtype=bool)
    est_voiced = np.asarray(est_voiced, dtype=bool)
    pitch_ok = ref_voiced & (_pitch_errors_cents(ref_hz, est_hz) <= tolerance_cents)
    chroma_ok = ref_voiced & (_chroma_errors_cents(ref_hz, est_hz) <= tolerance_cents)
    return FrameCounts(
        frames=int(ref_voiced.size),
        ref_voiced=int(ref_voiced.sum()),
        pitch_correct=int(pitch_ok.sum()),
        chroma_correct=int(chroma_ok.sum()),
        voiced_hits=int((ref_voiced & est_voiced).sum()),
        false_alarms=int((~ref_voiced & est_voiced).sum()),
        overall_correct=int(((~ref_voiced & ~est_voiced) | (pitch_ok & est_voiced)).sum()),
    )


def raw_pitch_accuracy(
    ref_hz: np.ndarray, ref_voiced: np.ndarray, est_hz: np.ndarray, tolerance_cents: float = CENTS_TOLERANCE
) -> float:
    """Fraction of reference-voiced frames whose estimate is within `tolerance_cents`."""
    est_voiced = np.ones(np.shape(est_hz), dtype=bool)
    return frame_counts(ref_hz, ref_voiced, est_hz, est_voiced, tolerance_cents).scores().raw_pitch_accuracy


def raw_chroma_accuracy(
    ref_hz: np.ndarray, ref_voiced: np.ndarray, est_hz: np.ndarray, tolerance_cents: float = CENTS_TOLERANCE
) -> float:
    """Raw pitch accuracy with octave errors forgiven."""
    est_voiced = np.ones(np.shape(est_hz), dtype=bool)
    return frame_counts(ref_hz, ref_voiced, est_hz, est_voiced, tolerance_cents).scores().raw_chroma_accuracy


def voicing_recall(ref_voiced: np.ndarray, est_voiced: np.ndarray) -> float:
    """Fraction of reference-voiced frames the estimate calls voiced."""
    _check(ref_voiced, est_voiced)
    ref, est = np.asarray(ref_voiced, bool), np.asarray(est_voiced, bool)
    return _ratio(int((ref & est).sum()), int(ref.sum()))


def voicing_false_alarm(ref_voiced: np.ndarray, est_voiced: np.ndarray) -> float:
    """Fraction of reference-unvoiced frames the estimate calls voiced."""
    _check(ref_voiced, est_voiced)
    ref, est = np.asarray(ref_voiced, bool), np.asarray(est_voiced, bool)
    return _ratio(int((~ref & est).sum()), int((~ref).sum()))


def overall_accuracy(
    ref_hz: np.ndarray,
    ref_voiced: np.ndarray,
    est_hz: np.ndarray,
    est_voiced: np.ndarray,
    tolerance_cents: float = CENTS_TOLERANCE,
) -> float:
    """Fraction of frames with the right voicing and, where voiced, the right pitch."""
    return frame_counts(ref_hz, ref_voiced, est_hz, est_voiced, tolerance_cents).scores().overall_accuracy


# --- MIR-1K -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mir1kClip:
    clip_id: str
    voice_path: Path
    pitch_path: Path


def list_mir1k_clips(data_dir: str | Path, limit: int | None = None) -> list[Mir1kClip]:
    """The clips of a MIR-1K folder (manifest.csv order, else sorted label files).

    With `limit`, an evenly spaced subset of that many clips (so every singer is represented).
    Raises FileNotFoundError when the folder has no clips.
    """
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as f:
            ids = [row["clip_id"] for row in csv.DictReader(f)]
    else:
        ids = sorted(p.stem for p in (data_dir / "pitch").glob("*.pv"))
    clips = [
        Mir1kClip(i, data_dir / "audio" / f"{i}.voice.ogg", data_dir / "pitch" / f"{i}.pv") for i in ids
    ]
    clips = [c for c in clips if c.voice_path.is_file() and c.pitch_path.is_file()]
    if not clips:
        raise FileNotFoundError(
            f"no MIR-1K clips under {data_dir} (expected audio/<clip>.voice.ogg and pitch/<clip>.pv)"
        )
    if limit is not None and 0 < limit < len(clips):
        picks = np.unique(np.linspace(0, len(clips) - 1, limit).round().astype(int))
        clips = [clips[i] for i in picks]
    return clips


def read_mir1k_labels(path: str | Path) -> np.ndarray:
    """A MIR-1K .pv file -> MIDI semitones per 20 ms label frame (0 = unvoiced): float64 [labels]."""
    values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    if values.ndim != 1:
        raise ValueError(f"{path}: expected one pitch value per line")
    return values


def mir1k_label_times(num_labels: int) -> np.ndarray:
    """Centre time in seconds of each MIR-1K label frame: 0.02 * j + 0.02. float64 [labels]."""
    return MIR1K_LABEL_OFFSET_SECONDS + MIR1K_LABEL_HOP_SECONDS * np.arange(num_labels, dtype=np.float64)


def score_against_labels(track: PitchTrack, midi_labels: np.ndarray) -> FrameCounts:
    """Compare a 10 ms track with MIR-1K labels at the label times."""
    estimate = track.at_times(mir1k_label_times(len(midi_labels)))
    return frame_counts(midi_to_hz(midi_labels), midi_labels > 0, estimate.f0_hz, estimate.voiced)


# --- Benchmark ----------------------------------------------------------------------------------


@dataclasses.dataclass
class BackendResult:
    """One backend's pooled result; `reason` is set (and counts empty) when it was unavailable."""

    name: str
    description: str = ""
    reason: str | None = None
    counts: FrameCounts = dataclasses.field(default_factory=FrameCounts)
    clips: int = 0
    audio_seconds: float = 0.0
    processing_seconds: float = 0.0

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def speed(self) -> float:
        """Seconds of audio processed per second of extraction time."""
        return self.audio_seconds / self.processing_seconds if self.processing_seconds > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.name, "description": self.description, "available": self.available}
        if not self.available:
            out["reason"] = self.reason
            return out
        out.update(dataclasses.asdict(self.counts.scores()))
        out.update(
            clips=self.clips,
            audio_seconds=round(self.audio_seconds, 3),
            processing_seconds=round(self.processing_seconds, 3),
            audio_seconds_per_second=round(self.speed, 3),
            frame_counts=dataclasses.asdict(self.counts),
        )
        return out


def run_benchmark(
    extractors: dict[str, PitchExtractor | str],
    clips: Sequence[Mir1kClip],
    *,
    descriptions: dict[str, str] | None = None,
    progress: bool = True,
) -> list[BackendResult]:
    """Run each available extractor over every clip's voice channel and score it.

    extractors: backend name -> a ready extractor, or a string = why it is unavailable.
    Timing covers `extract()` only (not decoding the Ogg files or building the model).
    """
    from data_gen.audio import load_audio

    descriptions = descriptions or {}
    results = {
        name: BackendResult(
            name=name,
            description=descriptions.get(name, ""),
            reason=value if isinstance(value, str) else None,
        )
        for name, value in extractors.items()
    }
    ready = {n: e for n, e in extractors.items() if not isinstance(e, str)}
    iterator: Iterable[Mir1kClip] = clips
    if progress and ready:
        from tqdm import tqdm

        iterator = tqdm(clips, desc=f"pitch bench ({', '.join(ready)})", unit="clip")
    for clip in iterator if ready else ():
        audio = load_audio(clip.voice_path, reject_silence=False)
        labels = read_mir1k_labels(clip.pitch_path)
        seconds = len(audio) / C.SAMPLE_RATE
        for name, extractor in ready.items():
            start = time.perf_counter()
            track = extractor.extract(audio)
            elapsed = time.perf_counter() - start
            result = results[name]
            result.counts = result.counts + score_against_labels(track, labels)
            result.clips += 1
            result.audio_seconds += seconds
            result.processing_seconds += elapsed
    return list(results.values())


def format_table(results: Sequence[BackendResult]) -> str:
    """A fixed-width text table of the results (one row per backend; unavailable ones say why)."""
    header = ("backend", "RPA", "RCA", "v-recall", "v-false-alarm", "overall", "audio s/s", "clips")
    rows = [header]
    for r in results:
        if r.available:
            s = r.counts.scores()
            rows.append(
                (
                    r.name,
                    *(f"{v:.4f}" for v in dataclasses.astuple(s)),
                    f"{r.speed:.1f}",
                    str(r.clips),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    widths[0] = max([widths[0], *(len(r.name) for r in results)])
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines += [f"{r.name:<{widths[0]}}  unavailable ({r.reason})" for r in results if not r.available]
    return "\n".join(lines)
