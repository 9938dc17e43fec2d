"""Pitch contours at the project's pitch frame rate, and how to build one from a list of notes.

A `Contour` is what every synthesizer in this package renders: one f0 value and one voicing flag
per 10 ms frame (`data_gen.constants.PITCH_HOP`). Frame `i` is centred on sample `i * PITCH_HOP`
(the same convention as `librosa.pyin(..., hop_length=PITCH_HOP, center=True)`), so a contour of
`n` frames renders to `n * PITCH_HOP` samples.

Notes are `(onset_s, offset_s, midi_pitch)` tuples; the pitch may be fractional (intonation errors
are expressed as fractions of a semitone).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_gen import constants as C

Note = tuple[float, float, float]
"""(onset_s, offset_s, midi_pitch)."""


class SynthError(ValueError):
    """The input cannot be synthesized: no notes, an empty contour, an unknown kind, a bad file."""


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray:
    return 440.0 * np.power(2.0, (np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def hz_to_midi(hz: np.ndarray | float) -> np.ndarray:
    return 69.0 + 12.0 * np.log2(np.asarray(hz, dtype=np.float64) / 440.0)


@dataclass(frozen=True, eq=False)
class Contour:
    """f0 and voicing per 10 ms frame.

    f0_hz:  [frames] float32, Hz. Meaningful only where `voiced`; unvoiced frames may hold 0, NaN
            (stored as 0) or any value (synthesizers interpolate across them to keep the phase
            continuous).
    voiced: [frames] bool.
    onsets: optional [notes] int64 frame indices where a new note starts (also inside legato
            runs, where voicing alone cannot tell notes apart); `None` when unknown, in which
            case `note_segments` infers notes from voicing and pitch jumps.
    """

    f0_hz: np.ndarray
    voiced: np.ndarray
    onsets: np.ndarray | None = None

    def __post_init__(self) -> None:
        f0 = np.ascontiguousarray(self.f0_hz, dtype=np.float32).reshape(-1)
        voiced = np.ascontiguousarray(self.voiced, dtype=bool).reshape(-1)
        if f0.shape != voiced.shape:
            raise SynthError(f"f0_hz has {f0.shape[0]} frames but voiced has {voiced.shape[0]}")
        if not np.all(np.isfinite(f0[voiced])):
            raise SynthError("f0_hz contains NaN or infinite values in voiced frames")
        if np.any(f0[voiced] <= 0):
            raise SynthError("voiced frames must have a positive f0")
        if not np.all(np.isfinite(f0)):  # pitch trackers report NaN where unvoiced
            f0 = np.where(np.isfinite(f0), f0, 0.0).astype(np.float32)
        object.__setattr__(self, "f0_hz", f0)
        object.__setattr__(self, "voiced", voiced)
        if self.onsets is not None:
            onsets = np.unique(np.asarray(self.onsets, dtype=np.int64).reshape(-1))
            onsets = onsets[(onsets >= 0) & (onsets < f0.shape[0])]
            object.__setattr__(self, "onsets", onsets)

    @property
    def n_frames(self) -> int:
        return int(self.f0_hz.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_frames / C.PITCH_FRAME_RATE

    @property
    def n_samples(self) -> int:
        """Length of the waveform a synthesizer renders from this contour."""
        return self.n_frames * C.PITCH_HOP

    def times(self) -> np.ndarray:
        """[frames] float64 seconds: the centre of each frame."""
        return np.arange(self.n_frames, dtype=np.float64) / C.PITCH_FRAME_RATE

    def midi(self) -> np.ndarray:
        """[frames] float64 MIDI pitch, NaN where unvoiced."""
        out = np.full(self.n_frames, np.nan)
        out[self.voiced] = hz_to_midi(self.f0_hz[self.voiced])
        return out

    def filled_f0(self) -> np.ndarray:
        """[frames] float64 f0 with unvoiced frames interpolated in log-frequency from their voiced
        neighbours (held flat before the first / after the last voiced frame). An all-unvoiced
        contour gets a constant 100 Hz."""
        if not self.voiced.any():
            return np.full(self.n_frames, 100.0)
        idx = np.flatnonzero(self.voiced)
        logf = np.interp(np.arange(self.n_frames), idx, np.log(self.f0_hz[idx].astype(np.float64)))
        return np.exp(logf)

    def transpose(self, semitones: float) -> Contour:
        """The same contour shifted by `semitones` (voiced frames only)."""
        f0 = self.f0_hz.astype(np.float64)
        f0[self.voiced] *= 2.0 ** (semitones / 12.0)
        return Contour(f0, self.voiced, self.onsets)

    def with_f0(self, f0_hz: np.ndarray) -> Contour:
        """Same voicing and onsets, new f0 values ([frames])."""
        return Contour(f0_hz, self.voiced, self.onsets)

    def median_hz(self) -> float:
        if not self.voiced.any():
            raise SynthError("the contour has no voiced frames")
        return float(np.median(self.f0_hz[self.voiced]))


def note_segments(contour: Contour, jump_semitones: float = 0.7) -> list[tuple[int, int]]:
    """[(start_frame, end_frame_exclusive)] for every note: voiced runs, split at `contour.onsets`
    when known, else at frame-to-frame pitch jumps larger than `jump_semitones`."""
    v = contour.voiced
    if not v.any():
        return []
    edges = np.diff(np.concatenate([[0], v.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if contour.onsets is not None:
        splits = set(int(i) for i in contour.onsets)
    else:
        midi = contour.midi()
        jumps = np.abs(np.diff(midi)) > jump_semitones
        splits = set((np.flatnonzero(jumps) + 1).tolist())
    segments: list[tuple[int, int]] = []
    for s, e in zip(starts, ends):
        cuts = sorted(i for i in splits if s < i < e)
        bounds = [int(s), *cuts, int(e)]
        segments.extend((a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)
    return segments


def monophonic(notes: Sequence[Note]) -> list[Note]:
    """Sorted, non-overlapping notes: a note is cut where the next one starts; of notes starting
    together the highest is kept (the melody line); empty or invalid notes are dropped."""
    clean = [
        (float(a), float(b), float(p))
        for a, b, p in notes
        if np.isfinite(a) and np.isfinite(b) and np.isfinite(p) and b > a
    ]
    clean.sort(key=lambda n: (n[0], -n[2]))
    out: list[Note] = []
    for onset, offset, pitch in clean:
        if out and abs(out[-1][0] - onset) < 1e-6:
            continue  # same onset, lower pitch: not the melody
        if out and out[-1][1] > onset:
            prev = out[-1]
            out[-1] = (prev[0], onset, prev[2])
        out.append((onset, offset, pitch))
    return [n for n in out if n[1] - n[0] > 1e-3]


def notes_from_midi(path: str | os.PathLike[str]) -> list[Note]:
    """Instrument 0's notes of a melody MIDI file as monophonic (onset_s, offset_s, midi_pitch)."""
    import pretty_midi  # local: slow to import

    path = Path(path)
    try:
        pm = pretty_midi.PrettyMIDI(str(path))
    except (OSError, ValueError, EOFError, KeyError, IndexError) as e:
        raise SynthError(f"cannot read melody MIDI {path}: {e}") from e
    if not pm.instruments:
        raise SynthError(f"melody MIDI {path} has no instruments")
    notes = monophonic([(n.start, n.end, n.pitch) for n in pm.instruments[0].notes])
    if not notes:
        raise SynthError(f"melody MIDI {path} has no notes in instrument 0")
    return notes


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 -> 1 raised-cosine ramp for x in [0, 1]."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def contour_from_notes(
    notes: Sequence[Note],
    *,
    gap_s: float = 0.04,
    glide_s: float = 0.0,
    legato: Sequence[bool] | None = None,
    max_legato_rest_s: float = 0.15,
    min_voiced_s: float = 0.04,
    end_s: float | None = None,
) -> Contour:
    """Render notes to a frame contour (time 0 = frame 0).

    gap_s:   articulation gap: a note stops sounding `gap_s` before the next one starts (never
             shortening it below `min_voiced_s`).
    glide_s: portamento length; a legato boundary is voiced throughout and the pitch glides
             (raised cosine in the semitone domain) over `glide_s` centred on the next onset.
    legato:  per boundary (len(notes) - 1) whether it is sung legato; default: every boundary
             whose rest is shorter than `max_legato_rest_s` is legato iff `glide_s > 0`.
    end_s:   contour length in seconds (default: the last offset plus 0.2 s).
    """
    notes = monophonic(notes)
    if not notes:
        raise SynthError("no notes to build a contour from")
    rate = C.PITCH_FRAME_RATE
    end = end_s if end_s is not None else notes[-1][1] + 0.2
    n_frames = max(1, int(round(end * rate)))
    midi = np.zeros(n_frames)
    voiced = np.zeros(n_frames, dtype=bool)
    onsets: list[int] = []
    n = len(notes)
    if legato is None:
        legato = [glide_s > 0] * (n - 1)
    if len(legato) != n - 1:
        raise SynthError(f"legato needs {n - 1} flags (one per boundary), got {len(legato)}")

    glides: list[tuple[float, float, float, float]] = []  # (centre_s, half_s, from, to)
    for i, (onset, offset, pitch) in enumerate(notes):
        a = max(0, int(round(onset * rate)))
        if a >= n_frames:
            break
        nxt = notes[i + 1] if i + 1 < n else None
        joined = nxt is not None and legato[i] and nxt[0] - offset <= max_legato_rest_s
        if joined:
            b = int(round(nxt[0] * rate))
            if glide_s > 0:
                half = min(glide_s / 2, (nxt[0] - onset) / 2, (nxt[1] - nxt[0]) / 2)
                glides.append((nxt[0], half, pitch, nxt[2]))
        else:
            stop = offset
            if nxt is not None:
                keep = min(min_voiced_s, (nxt[0] - onset) / 2)
                stop = min(offset, max(nxt[0] - gap_s, onset + keep))
            b = max(a + 1, int(round(stop * rate)))
        b = min(b, n_frames)
        if b <= a:
            continue
        onsets.append(a)
        midi[a:b] = pitch
        voiced[a:b] = True
    for centre, half, p0, p1 in glides:
        g0 = max(0, int(round((centre - half) * rate)))
        g1 = min(n_frames, int(round((centre + half) * rate)))
        if g1 - g0 >= 2:
            x = (np.arange(g0, g1) - g0 + 0.5) / (g1 - g0)
            midi[g0:g1] = p0 + (p1 - p0) * _smoothstep(x)
            voiced[g0:g1] = True
    f0 = np.where(voiced, midi_to_hz(midi), 0.0)
    return Contour(f0.astype(np.float32), voiced, np.asarray(onsets, dtype=np.int64))
