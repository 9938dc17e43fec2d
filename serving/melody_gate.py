"""Is there a melody in this query at all? The check before retrieval.

The encoder maps *any* audio somewhere, and some audio with no melody (a steady tone, a constant
signal, two samples stretched over seconds) lands close to many masters: a 440 Hz sine scored 0.8,
above real hums and the calibrated threshold. So every query is pitch-tracked first (the fast YIN
backend, `data_gen.pitch.yin`, at 8 kHz, every other 10 ms frame: ~4.6 ms per 10 s) and described by a few
numbers a person can read:

- voiced_seconds / voiced_fraction: how much of it is pitched (noise, clicks, coughs, silence: little);
- pitch_range_semitones: the spread of its pitch (5th to 95th percentile of the voiced frames);
- distinct_notes: how many different semitones it holds for at least `min_note_seconds` (a steady
  tone holds one; a hummed tune holds several);
- phrase_seconds: how long its pitched stretches last (speech breaks its pitch into ~0.1 s syllables;
  a hum, whistle or sung line holds it for 0.14 s (a fast reel) to several seconds).

A query with no melody gets an explicit answer ("no melody heard": `RetrievalResult.reason ==
NO_MELODY`, no ranked list) instead of a confident-looking match. The thresholds were chosen on the
real hums of ../shared/data/qbh_demo and zalo_mini, real singing (MIR-1K) and synthetic queries
against degenerate inputs (`earworm gate-check` prints the figures).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.ndimage import median_filter

from data_gen import constants as C
from data_gen.pitch.base import held_notes


@dataclass(frozen=True)
class MelodyGateConfig:
    min_voiced_seconds: float = 1.0
    min_distinct_notes: int = 3
    min_pitch_range_semitones: float = 2.0
    min_phrase_seconds: float = 0.155
    """Speech breaks its pitch into syllables; hums, whistles and singing hold it longer. Measured with
    the gate's YIN (8 kHz, every other frame analysed, `GATE_FRAME_STEP`), 2026-12-04: the espeak-ng
    sentences that must stop 0.08-0.145 s; the real hums and sung clips at least 0.258 s (qbh_demo),
    0.371 s (zalo_mini), 0.280 s (MIR-1K); synthetic-1k's 200 queries at least 0.168 s (fast staccato
    reels). Analysing every frame measures phrases ~15 % shorter (speech up to 0.114 s, synthetic
    reels from 0.141 s), where 0.125 s was the threshold."""
    min_note_seconds: float = 0.1
    """A note counts when the (median-smoothed) pitch stays on one semitone at least this long."""
    smooth_frames: int = 5
    """Median filter over the voiced pitch (10 ms frames) before notes are read."""

    def __post_init__(self) -> None:
        if self.min_voiced_seconds < 0 or self.min_distinct_notes < 0 or self.min_pitch_range_semitones < 0:
            raise ValueError("melody gate thresholds must be >= 0")
        if self.min_note_seconds <= 0 or self.smooth_frames < 1 or self.min_phrase_seconds < 0:
            raise ValueError("min_note_seconds must be > 0 and smooth_frames >= 1")


@dataclass(frozen=True)
class MelodyCheck:
    """What the gate measured on one query, and its verdict."""

    voiced_seconds: float
    voiced_fraction: float
    pitch_range_semitones: float
    distinct_notes: int
    phrase_seconds: float
    """How long its pitched stretches last (mean weighted by length): speech ~0.1 s, a hum 0.3-5 s."""
    has_melody: bool
    why: str
    """Empty when `has_melody`; else what was missing, in words for a person."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length encoding of int [n]: (value of each run, its length in frames)."""
    if values.size == 0:
        return values, values
    starts = np.r_[0, np.flatnonzero(np.diff(values)) + 1]
    return values[starts], np.diff(np.r_[starts, values.size])


def _phrase_seconds(voiced: np.ndarray) -> float:
    """Typical length of the pitched stretches: their mean length weighted by length (seconds)."""
    value, length = _runs(voiced.astype(np.int64))
    pitched = length[value == 1].astype(np.float64)
    return float((pitched**2).sum() / pitched.sum()) * C.PITCH_HOP_SECONDS if pitched.size else 0.0


def describe(midi: np.ndarray, voiced: np.ndarray, config: MelodyGateConfig = MelodyGateConfig()
             ) -> MelodyCheck:
    """A pitch track (fractional MIDI [frames] on the 10 ms grid, voiced bool [frames]) -> MelodyCheck."""
    voiced = np.asarray(voiced, bool)
    n = voiced.size
    midi = np.where(voiced, np.asarray(midi, np.float64), np.nan)
    voiced_s = float(voiced.sum()) * C.PITCH_HOP_SECONDS
    if voiced.sum() >= 2:
        smooth = midi.copy()
        smooth[voiced] = median_filter(midi[voiced], size=config.smooth_frames, mode="nearest")
        lo, hi = np.percentile(smooth[voiced], [5, 95])
        spread = float(hi - lo)
        min_frames = max(1, int(round(config.min_note_seconds / C.PITCH_HOP_SECONDS)))
        distinct = int(np.unique(held_notes(smooth, min_frames)[0]).size)
    else:
        spread, distinct = 0.0, 0
    phrase = _phrase_seconds(voiced)
    missing = []
    if voiced_s < config.min_voiced_seconds:
        missing.append(f"only {voiced_s:.1f} s of it is pitched (at least {config.min_voiced_seconds:g} s is needed)")
    if distinct < config.min_distinct_notes:
        missing.append(f"it holds {distinct} distinct note{'s' if distinct != 1 else ''} "
                       f"(a tune needs at least {config.min_distinct_notes})")
    elif spread < config.min_pitch_range_semitones:
        missing.append(f"its pitch moves by {spread:.1f} semitones (a tune moves by at least "
                       f"{config.min_pitch_range_semitones:g})")
    if not missing and phrase < config.min_phrase_seconds:
        missing.append(f"its pitched sounds last {phrase:.2f} s each, like speech (a sung or hummed "
                       f"tune holds them for at least {config.min_phrase_seconds:g} s)")
    why = ("no melody heard: " + "; ".join(missing)) if missing else ""
    return MelodyCheck(round(voiced_s, 3), round(float(voiced.mean()) if n else 0.0, 4), round(spread, 3),
                       distinct, round(phrase, 3), not missing, why)


GATE_DECIMATE = 2
"""The gate's YIN runs at 8 kHz (`YinConfig.decimate`): half the CPU of 16 kHz. Measured 2026-12-04 on
12 real qbh_demo hums: voicing agrees on 99.9-100 % of the frames, pitch within 0.6-1.0 cents
(median), and `earworm gate-check` lets the same queries through (README)."""


GATE_FRAME_STEP = 2
"""The gate's YIN analyses every other 10 ms frame and holds it over the next (`YinConfig.frame_step`):
half its pitch work (8 -> 5 ms per 10 s query). The gate's figures are about tenths of a second (notes of
at least 0.1 s, phrases of 0.155 s), which 20 ms frames resolve (README, the round of 20:11)."""


class MelodyGate:
    """Pitch-tracks a query and tells whether it holds a melody. Thread-safe (stateless)."""

    def __init__(self, config: MelodyGateConfig = MelodyGateConfig()):
        from data_gen.pitch.yin import YinExtractor

        self.config = config
        self.extractor = YinExtractor(decimate=GATE_DECIMATE, frame_step=GATE_FRAME_STEP)

    def check(self, audio: np.ndarray) -> MelodyCheck:
        """audio float32 [time] mono at SAMPLE_RATE -> MelodyCheck."""
        return self.check_track(self.extractor.extract(np.asarray(audio, np.float32)))

    def check_track(self, track) -> MelodyCheck:
        """The verdict on a pitch track (`data_gen.pitch.PitchTrack` on the 10 ms grid)."""
        return describe(track.f0_midi(), track.voiced, self.config)

    def streaming(self, settle_samples: int = 0) -> "StreamingMelodyCheck":
        return StreamingMelodyCheck(self, settle_samples)


class StreamingMelodyCheck:
    """The check of one growing recording (a stream): pitch frames that can no longer change are
    kept, so each interim answer analyses only the new audio, not the whole buffer again.

    settle_samples: how much of the recording's end may still change when audio is appended (0 for
    audio at SAMPLE_RATE; resampled audio changes near its end)."""

    def __init__(self, gate: MelodyGate, settle_samples: int = 0):
        self.gate = gate
        self.settle_samples = int(settle_samples)
        self._settled = None  # YinFrames of the frames that will not change

    def check(self, audio: np.ndarray) -> MelodyCheck:
        from data_gen.pitch.base import num_pitch_frames
        from data_gen.pitch.yin import YinFrames

        extractor = self.gate.extractor
        kept = self._settled or YinFrames(*(np.zeros(0, np.float32),) * 3)
        n = num_pitch_frames(audio.size)
        kept = kept.head(min(len(kept), n))
        frames = kept.then(extractor.analyse(audio, first_frame=len(kept)))
        half = extractor.config.frame_length // 2
        settle = self.settle_samples + extractor.settle_samples
        settled = (audio.size - settle - half) // C.PITCH_HOP + 1  # window inside settled audio
        if settled > len(kept):
            self._settled = frames.head(min(settled, len(frames)))
        return self.gate.check_track(extractor.track(frames))


__all__ = ["MelodyCheck", "MelodyGate", "MelodyGateConfig", "StreamingMelodyCheck", "describe"]
