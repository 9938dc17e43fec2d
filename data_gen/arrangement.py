"""Arranging a monophonic melody as a polyphonic song: style, instruments, key, tempo, chords,
bass line and drums, all drawn from one seed.

`arrange(melody, seed)` returns an `Arrangement`: General MIDI parts whose notes are timed in
beats (quarter notes) on the master's timeline. `data_gen.render` turns it into audio. The lead
part plays the melody (transposed, repeated to reach the minimum length, cut at a note boundary
before the maximum length); the other parts follow per-bar chords chosen to fit the melody:
for each bar (or half bar), the diatonic triad of the Krumhansl-Kessler key estimate that best
covers the melody notes sounding there, weighted by duration and metric position. The styles
(instrument pools and the patterns each role plays) are in `data_gen.arrangement_styles`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from data_gen.arrangement_styles import DRUM_KITS, LEAD_RANGES, STYLES, Style, choose_style, comp_rhythms
from data_gen.melodies import Melody, time_signature_beats

# --- Configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrangementConfig:
    """Ranges the randomisation draws from (one place for every default)."""

    min_seconds: float = 20.0  # repeat the tune until the master is at least this long
    max_seconds: float = 40.0  # cut at a note boundary so the master is at most this long
    tail_seconds: float = 1.5  # release and reverb after the last note
    key_shift_range: tuple[int, int] = (-5, 6)  # semitones, inclusive
    tempo_factor_range: tuple[float, float] = (0.88, 1.15)
    bpm_range: tuple[float, float] = (55.0, 190.0)
    intro_bar_probs: tuple[float, float, float] = (0.35, 0.45, 0.20)  # 0, 1 or 2 intro bars
    lead_margin_db_range: tuple[float, float] = (1.0, 10.0)  # lead above the accompaniment
    part_level_jitter_db: float = 2.5
    lead_articulation_range: tuple[float, float] = (0.82, 0.98)  # played/notated duration
    timing_jitter_seconds: float = 0.006  # humanised accompaniment onsets (std)
    velocity_jitter: int = 7
    half_bar_chord_gain: float = 0.30  # score gain needed to change chord mid-bar


CONFIG = ArrangementConfig()

# --- Music primitives ----------------------------------------------------------------------------
NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
QUALITIES: dict[str, tuple[int, ...]] = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "dim": (0, 3, 6),
    "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "m7": (0, 3, 7, 10),
    "5": (0, 7),
}
# (degree in semitones above the tonic, quality, prior) — diatonic triads plus the modal
# chords folk tunes need (bVII in major for mixolydian tunes, IV major in minor for dorian).
_MAJOR_CHORDS = ((0, "maj", 0.30), (5, "maj", 0.22), (7, "maj", 0.25), (9, "min", 0.12),
                 (2, "min", 0.08), (4, "min", 0.02), (10, "maj", 0.0))
_MINOR_CHORDS = ((0, "min", 0.30), (5, "min", 0.20), (7, "maj", 0.22), (8, "maj", 0.12),
                 (3, "maj", 0.12), (10, "maj", 0.12), (7, "min", 0.02), (5, "maj", 0.0))
_SEVENTHS = {"maj": "maj7", "min": "m7"}
# Krumhansl-Kessler key profiles (probe-tone ratings), tonic first.
_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def estimate_key(pitches: Sequence[int], weights: Sequence[float] | None = None) -> tuple[int, str]:
    """Krumhansl-Schmuckler key finding: (tonic pitch class, "major"|"minor").

    Correlates the duration-weighted pitch-class histogram with the 24 rotated profiles.
    """
    hist = np.zeros(12)
    w = np.ones(len(pitches)) if weights is None else np.asarray(weights, dtype=float)
    for p, wi in zip(pitches, w):
        hist[int(p) % 12] += wi
    if not hist.any():
        return 0, "major"
    best = (-2.0, 0, "major")
    for mode, profile in (("major", _KK_MAJOR), ("minor", _KK_MINOR)):
        for tonic in range(12):
            r = float(np.corrcoef(hist, np.roll(profile, tonic))[0, 1])
            if r > best[0] + 1e-12:
                best = (r, tonic, mode)
    return best[1], best[2]


@dataclass(frozen=True)
class Meter:
    """How a time signature is felt: `beats` pulses of `beat_len` quarter notes, each split in
    `sub` subdivisions (2 in simple metres, 3 in compound ones such as 6/8)."""

    beats: int
    beat_len: float
    sub: int

    @property
    def bar_len(self) -> float:
        return self.beats * self.beat_len

    @property
    def sub_len(self) -> float:
        return self.beat_len / self.sub

    @property
    def strong_beats(self) -> tuple[int, ...]:
        return (0, self.beats // 2) if self.beats >= 4 and self.beats % 2 == 0 else (0,)

    @property
    def backbeats(self) -> tuple[int, ...]:
        if self.beats == 3:
            return (1, 2)
        return tuple(b for b in range(self.beats) if b % 2 == 1)

    @staticmethod
    def from_time_signature(ts: str) -> Meter:
        num, den = (int(x) for x in ts.split("/"))
        if den == 8 and num % 3 == 0:
            meter = Meter(num // 3, 1.5, 3)
        elif den <= 4:
            meter = Meter(max(1, round(num * 4 / den)), 1.0, 2)
        else:
            meter = Meter(num, 4.0 / den, 2)
        assert abs(meter.bar_len - time_signature_beats(ts)) < 1e-6, ts
        return meter


@dataclass(frozen=True)
class ChordSpan:
    start: float  # beats on the master timeline
    end: float
    root: int  # pitch class
    quality: str

    @property
    def pcs(self) -> tuple[int, ...]:
        return tuple((self.root + i) % 12 for i in QUALITIES[self.quality])

    @property
    def name(self) -> str:
        suffix = {"maj": "", "min": "m", "dim": "dim", "5": "5"}.get(self.quality, self.quality)
        return NOTE_NAMES[self.root] + suffix


@dataclass(frozen=True)
class NoteEvent:
    pitch: int
    start: float  # beats on the master timeline
    end: float
    velocity: int
    jitter_s: float = 0.0  # humanised onset offset in seconds (audio and full MIDI alike)


@dataclass(frozen=True)
class Part:
    """One General MIDI instrument of the arrangement."""

    role: str  # "lead", "chords", "bass", "pad", "arp", "drums", "timpani"
    program: int  # GM program (0-127); for drums the kit number (bank 128)
    is_drum: bool
    notes: tuple[NoteEvent, ...]
    level_db: float  # mix level relative to the lead (0 dB)
    pan: int = 64
    reverb_send: int = 40
    chorus_send: int = 0

    @property
    def instrument_name(self) -> str:
        if self.is_drum:
            return DRUM_KITS.get(self.program, f"Drum kit {self.program}")
        import pretty_midi

        return pretty_midi.program_to_instrument_name(self.program)


@dataclass(frozen=True)
class Arrangement:
    melody_id: str
    style: str
    bpm: float
    key_shift: int  # semitones added to every melody pitch in the lead (octave moves included)
    key_tonic: int  # pitch class of the estimated key after the shift
    key_mode: str
    time_signature: str
    intro_beats: float  # accompaniment before the first melody downbeat (0 when none)
    melody_offset_beats: float  # master beat where melody beat 0 of the first copy sits
    period_beats: float  # distance between two copies of the tune
    copies: int
    cut: bool  # True: the tune was cut short (fade-out ending)
    end_beats: float  # last sounding beat of the music (before the release tail)
    chords: tuple[ChordSpan, ...]
    parts: tuple[Part, ...]
    reverb: dict[str, float] = field(default_factory=dict)
    lead_margin_db: float = 0.0

    @property
    def seconds_per_beat(self) -> float:
        return 60.0 / self.bpm

    @property
    def lead(self) -> Part:
        return next(p for p in self.parts if p.role == "lead")

    @property
    def key_name(self) -> str:
        return f"{NOTE_NAMES[self.key_tonic]} {self.key_mode}"


# GM percussion keys
KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT = 36, 37, 38, 39, 42, 44, 46
CRASH, RIDE, TAMBOURINE, MARACAS, LOW_TOM, HIGH_TOM = 49, 51, 54, 70, 45, 50


# --- Chords --------------------------------------------------------------------------------------
def _chord_candidates(tonic: int, mode: str) -> list[tuple[int, str, float]]:
    table = _MAJOR_CHORDS if mode == "major" else _MINOR_CHORDS
    return [((tonic + deg) % 12, q, prior) for deg, q, prior in table]


def _segment_score(
    notes: Sequence[tuple[float, float, int]], seg_start: float, seg_end: float,
    root: int, quality: str, prior: float, meter: Meter,
) -> float | None:
    """How well a chord fits the melody notes sounding in [seg_start, seg_end)."""
    pcs = {(root + i) % 12 for i in QUALITIES[quality]}
    total = fit = 0.0
    for start, end, pitch in notes:
        overlap = min(end, seg_end) - max(start, seg_start)
        if overlap <= 1e-9:
            continue
        metric = 1.0
        if start >= seg_start - 1e-9:
            pos = (start - seg_start) / meter.beat_len
            if abs(pos - round(pos)) < 1e-6:
                metric = 2.0 if round(pos) in meter.strong_beats else 1.5
        w = overlap * metric
        total += w
        fit += w if pitch % 12 in pcs else -0.5 * w
    if total <= 0:
        return None
    return fit / total + 0.5 * prior


def harmonise(
    melody_notes: Sequence[tuple[float, float, int]],
    bar_starts: Sequence[float],
    meter: Meter,
    tonic: int,
    mode: str,
    *,
    allow_half_bars: bool = True,
    config: ArrangementConfig = CONFIG,
) -> list[ChordSpan]:
    """One chord per bar (two when the melody clearly changes harmony mid-bar).

    `melody_notes` are (start, end, pitch) in beats; bars without melody keep the previous
    chord (the tonic at the start); the last bar leans towards the tonic.
    """
    cands = _chord_candidates(tonic, mode)
    tonic_chord = cands[0]
    spans: list[ChordSpan] = []
    prev = tonic_chord
    for i, b in enumerate(bar_starts):
        end = b + meter.bar_len
        last = i == len(bar_starts) - 1

        def best(s: float, e: float) -> tuple[tuple[int, str, float], float | None]:
            scored = []
            for c in cands:
                sc = _segment_score(melody_notes, s, e, c[0], c[1], c[2], meter)
                if sc is not None and last and c is tonic_chord:
                    sc += 0.3
                scored.append((sc, c))
            if scored[0][0] is None:
                return prev, None
            sc, c = max(scored, key=lambda x: x[0])  # first max wins: deterministic
            return c, sc

        chord, score = best(b, end)
        split = None
        if allow_half_bars and meter.beats >= 4 and meter.beats % 2 == 0 and score is not None:
            mid = b + meter.bar_len / 2
            c1, s1 = best(b, mid)
            c2, s2 = best(mid, end)
            if s1 is not None and s2 is not None and c1 != c2 and (s1 + s2) / 2 - score > config.half_bar_chord_gain:
                split = (mid, c1, c2)
        if split:
            mid, c1, c2 = split
            spans.append(ChordSpan(b, mid, c1[0], c1[1]))
            spans.append(ChordSpan(mid, end, c2[0], c2[1]))
            prev = c2
        else:
            spans.append(ChordSpan(b, end, chord[0], chord[1]))
            prev = chord
    return spans


def _with_sevenths(spans: Sequence[ChordSpan], tonic: int, mode: str) -> list[ChordSpan]:
    out = []
    for s in spans:
        q = s.quality
        if (s.root - tonic) % 12 == 7 and q == "maj":
            q = "7"  # dominant seventh
        else:
            q = _SEVENTHS.get(q, q)
        out.append(ChordSpan(s.start, s.end, s.root, q))
    return out


def voice_chord(pcs: Sequence[int], center: int, prev: Sequence[int] | None = None) -> list[int]:
    """Close-position voicing near `center`, choosing the inversion closest to `prev`."""
    best: tuple[float, list[int]] | None = None
    n = len(pcs)
    for inv in range(n):
        order = [pcs[(inv + k) % n] for k in range(n)]
        for low in range(center - 7, center + 6):
            if low % 12 != order[0]:
                continue
            notes = [low]
            for pc in order[1:]:
                nxt = notes[-1] + 1
                while nxt % 12 != pc:
                    nxt += 1
                notes.append(nxt)
            if prev and len(prev) == len(notes):
                cost = float(sum(abs(a - b) for a, b in zip(sorted(prev), notes)))
            else:
                cost = abs(float(np.mean(notes)) - center)
            cost += 0.01 * abs(float(np.mean(notes)) - center)  # tie-break towards the centre
            if best is None or cost < best[0]:
                best = (cost, notes)
    assert best is not None
    return best[1]


def _bass_pitch(pc: int, low: int = 33) -> int:
    return low + (pc - low) % 12


# --- Pattern generation --------------------------------------------------------------------------
@dataclass
class _Ctx:
    """Everything a pattern function needs for one bar."""

    rng: np.random.Generator
    meter: Meter
    chords: Sequence[ChordSpan]
    center: int
    velocity: int
    swing: float
    spb: float  # seconds per beat
    rhythm: tuple[float, ...] = ()  # per-song rhythm (offsets in the bar)
    prev_voicing: list[int] | None = None
    comp_rhythms: tuple[tuple[tuple[float, float], ...], ...] = ()

    def chord_at(self, t: float) -> ChordSpan:
        for c in self.chords:
            if c.start - 1e-9 <= t < c.end - 1e-9:
                return c
        return self.chords[-1] if t >= self.chords[-1].start else self.chords[0]

    def vel(self, base: int | None = None, accent: int = 0) -> int:
        v = (base if base is not None else self.velocity) + accent
        v += int(self.rng.integers(-CONFIG.velocity_jitter, CONFIG.velocity_jitter + 1))
        return int(min(127, max(20, v)))

    def jitter(self) -> float:
        return float(self.rng.normal(0.0, CONFIG.timing_jitter_seconds))

    def swung(self, offset_in_bar: float) -> float:
        """Delay the off-beat subdivision of each beat by the swing amount."""
        if self.swing <= 0:
            return offset_in_bar
        pos = offset_in_bar / self.meter.beat_len
        frac = pos - math.floor(pos + 1e-9)
        if abs(frac - 0.5) < 1e-6:
            return offset_in_bar + self.swing * self.meter.beat_len
        return offset_in_bar

    def is_chord_start(self, t: float) -> bool:
        return any(abs(c.start - t) < 1e-6 for c in self.chords)

    def chord_changes_in(self, start: float, end: float) -> list[float]:
        return sorted({c.start for c in self.chords if start + 1e-9 < c.start < end - 1e-9})


def _sustain_segments(ctx: _Ctx, bar: float, end: float) -> list[tuple[float, float]]:
    cuts = [bar, *ctx.chord_changes_in(bar, end), end]
    return list(zip(cuts[:-1], cuts[1:]))


def _voicing(ctx: _Ctx, chord: ChordSpan) -> list[int]:
    v = voice_chord(chord.pcs, ctx.center, ctx.prev_voicing)
    ctx.prev_voicing = v
    return v


def _chord_pattern(kind: str, ctx: _Ctx, bar: float) -> list[NoteEvent]:
    m, out = ctx.meter, []
    end = bar + m.bar_len
    if kind == "pad":
        for s, e in _sustain_segments(ctx, bar, end):
            for p in _voicing(ctx, ctx.chord_at(s)):
                out.append(NoteEvent(p, s, e, ctx.vel(), ctx.jitter()))
    elif kind == "block":
        for beat in range(m.beats):
            t = bar + beat * m.beat_len
            acc = 10 if beat in m.strong_beats else 0
            for p in _voicing(ctx, ctx.chord_at(t)):
                out.append(NoteEvent(p, t, t + 0.9 * m.beat_len, ctx.vel(accent=acc), ctx.jitter()))
    elif kind in ("strum", "power"):
        strum_step = 0.012 / ctx.spb if kind == "strum" else 0.004 / ctx.spb
        for k, off in enumerate(ctx.rhythm):
            t = bar + ctx.swung(off)
            nxt = ctx.rhythm[k + 1] if k + 1 < len(ctx.rhythm) else m.bar_len
            dur = max(m.sub_len, (nxt - off)) * (0.95 if kind == "strum" else 0.6)
            chord = ctx.chord_at(t)
            if kind == "power":
                root = ctx.center - 12 + (chord.root - (ctx.center - 12)) % 12
                notes = [root, root + 7, root + 12]
            else:
                notes = _voicing(ctx, chord)
            down = abs((off / m.beat_len) - round(off / m.beat_len)) < 1e-6
            order = notes if down else notes[::-1]
            acc = 12 if off == 0 else (4 if down else -8)
            for i, p in enumerate(order):
                out.append(NoteEvent(p, t + i * strum_step, t + dur, ctx.vel(accent=acc), ctx.jitter()))
    elif kind == "arpeggio":
        for s, e in _sustain_segments(ctx, bar, end):
            chord = ctx.chord_at(s)
            v = _voicing(ctx, chord)
            bass = ctx.center - 12 + (chord.root - (ctx.center - 12)) % 12
            up = [bass, *v, v[0] + 12]
            seq = up + up[-2:0:-1]  # up and back down, without repeating the ends
            steps = int(round((e - s) / m.sub_len))
            for i in range(steps):
                t = s + i * m.sub_len
                p = seq[i % len(seq)]
                acc = 8 if i == 0 else 0
                out.append(NoteEvent(p, bar + ctx.swung(t - bar), e, ctx.vel(accent=acc), ctx.jitter()))
    elif kind == "offbeat":
        for beat in range(m.beats):
            for sub in range(m.sub):
                # simple metres: the weak beats ("pah" of oom-pah); compound: 2nd and 3rd eighths
                is_off = (sub > 0) if m.sub == 3 else (sub == 0 and beat not in m.strong_beats)
                if not is_off:
                    continue
                t = bar + beat * m.beat_len + sub * m.sub_len
                for p in _voicing(ctx, ctx.chord_at(t)):
                    out.append(NoteEvent(p, t, t + 0.7 * m.sub_len * (2 if m.sub == 2 else 1),
                                         ctx.vel(), ctx.jitter()))
    elif kind in ("comp", "bossa"):
        rhythm = ctx.comp_rhythms[int(ctx.rng.integers(len(ctx.comp_rhythms)))]
        for off, dur in rhythm:
            if off >= m.bar_len - 1e-9:
                continue
            t = bar + ctx.swung(off)
            for p in _voicing(ctx, ctx.chord_at(t)):
                out.append(NoteEvent(p, t, t + dur, ctx.vel(accent=4 if off == 0 else 0), ctx.jitter()))
    else:
        raise ValueError(f"unknown chord pattern {kind!r}")
    return out


def _bass_pattern(kind: str, ctx: _Ctx, bar: float, next_root: int | None) -> list[NoteEvent]:
    m, out = ctx.meter, []
    end = bar + m.bar_len
    if kind == "root":
        for s, e in _sustain_segments(ctx, bar, end):
            out.append(NoteEvent(_bass_pitch(ctx.chord_at(s).root), s, e - 0.05, ctx.vel(accent=5), ctx.jitter()))
    elif kind == "root_fifth":
        for beat in range(m.beats):
            t = bar + beat * m.beat_len
            chord = ctx.chord_at(t)
            root = _bass_pitch(chord.root)
            if beat == 0 or ctx.is_chord_start(t):
                out.append(NoteEvent(root, t, t + 0.9 * m.beat_len, ctx.vel(accent=8), ctx.jitter()))
            elif beat in m.strong_beats or (m.beats in (2, 3) and beat == m.beats - 1):
                fifth = root + 7 if root + 7 <= 47 else root - 5
                out.append(NoteEvent(fifth, t, t + 0.9 * m.beat_len, ctx.vel(), ctx.jitter()))
    elif kind in ("eighths", "offbeat"):
        n = int(round(m.bar_len / m.sub_len))
        for i in range(n):
            if kind == "offbeat" and i % m.sub == 0:
                continue
            t = bar + ctx.swung(i * m.sub_len)
            root = _bass_pitch(ctx.chord_at(t).root)
            p = root + 12 if (kind == "eighths" and i % 4 == 3 and ctx.rng.random() < 0.3) else root
            out.append(NoteEvent(p, t, t + 0.8 * m.sub_len, ctx.vel(accent=6 if i == 0 else 0), ctx.jitter()))
    elif kind == "walking":
        prev = None
        for beat in range(m.beats):
            t = bar + beat * m.beat_len
            chord = ctx.chord_at(t)
            root = _bass_pitch(chord.root, 31)
            if beat == 0 or ctx.is_chord_start(t):
                p = root
            elif beat == m.beats - 1 and next_root is not None:
                target = _bass_pitch(next_root, 31)
                p = target + (1 if ctx.rng.random() < 0.5 else -1)  # chromatic approach
            else:
                tones = [_bass_pitch(pc, 31) for pc in chord.pcs] + [root + 12]
                tones = [x for x in tones if x != prev]
                p = tones[int(ctx.rng.integers(len(tones)))]
            out.append(NoteEvent(p, t, t + 0.95 * m.beat_len, ctx.vel(accent=6 if beat == 0 else 0), ctx.jitter()))
            prev = p
    else:
        raise ValueError(f"unknown bass pattern {kind!r}")
    return out


def _drum_pattern(kind: str, ctx: _Ctx, bar: float, fill: bool, crash: bool) -> list[NoteEvent]:
    """One bar of drums, with a crash on its downbeat and/or a fill on its last beat."""
    m, out = ctx.meter, []
    subs = int(round(m.bar_len / m.sub_len))

    def hit(key: int, off: float, vel: int, length: float = 0.1) -> None:
        t = bar + ctx.swung(off)
        out.append(NoteEvent(key, t, t + length, ctx.vel(vel), ctx.jitter()))

    if crash:
        hit(CRASH, 0.0, 95, 1.0)
    if kind in ("pop", "rock"):
        hit(KICK, 0.0, 100)
        for b in m.strong_beats[1:]:
            hit(KICK, b * m.beat_len, 92)
        if kind == "rock" and m.beats >= 4:
            hit(KICK, (m.beats // 2 + 0.5) * m.beat_len, 85)
        for b in m.backbeats:
            hit(SNARE, b * m.beat_len, 95 if kind == "rock" else 88)
        hat = OPEN_HAT if (kind == "rock" and ctx.rng.random() < 0.15) else CLOSED_HAT
        for i in range(subs):
            hit(hat if i else CLOSED_HAT, i * m.sub_len, 70 if i % m.sub == 0 else 52)
    elif kind == "four_floor":
        for b in range(m.beats):
            hit(KICK, b * m.beat_len, 105)
        for b in m.backbeats:
            hit(CLAP, b * m.beat_len, 90)
        for i in range(subs):
            if i % m.sub:
                hit(OPEN_HAT if m.sub == 2 else CLOSED_HAT, i * m.sub_len, 65)
            else:
                hit(CLOSED_HAT, i * m.sub_len, 45)
    elif kind == "swing":
        for b in range(m.beats):
            hit(RIDE, b * m.beat_len, 75 if b % 2 else 65)
            if b % 2 == 1:
                hit(RIDE, b * m.beat_len + 0.5 * m.beat_len, 55)
                hit(PEDAL_HAT, b * m.beat_len, 60)
        hit(KICK, 0.0, 45)
        if ctx.rng.random() < 0.3:
            hit(SNARE, (int(ctx.rng.integers(m.beats)) + 0.5) * m.beat_len, 50)
    elif kind == "brush":
        for b in range(m.beats):
            hit(SNARE, b * m.beat_len, 45 if b in m.backbeats else 35, 0.5)
        hit(KICK, 0.0, 55)
    elif kind == "march":
        for b in m.strong_beats if m.beats >= 4 else (0,):
            hit(KICK, b * m.beat_len, 95)
        for i in range(subs):
            acc = 90 if i % m.sub == 0 else 60
            hit(SNARE, i * m.sub_len, acc)
    elif kind == "light":
        for b in m.backbeats:
            hit(TAMBOURINE, b * m.beat_len, 70)
        for i in range(subs):
            hit(MARACAS, i * m.sub_len, 55 if i % m.sub == 0 else 40)
    elif kind == "bossa":
        hit(KICK, 0.0, 80)
        if m.beats >= 4:
            for off in (1.5, 2.0, 3.5):
                hit(KICK, off * m.beat_len / 1.0, 70)
            for off in (0.0, 1.5, 3.0):
                hit(SIDE_STICK, off, 80)
        else:
            hit(SIDE_STICK, m.beat_len, 80)
        for i in range(subs):
            hit(CLOSED_HAT, i * m.sub_len, 55 if i % m.sub == 0 else 40)
    else:
        raise ValueError(f"unknown drum pattern {kind!r}")
    if fill and kind in ("pop", "rock", "march", "four_floor"):
        last_beat = (m.beats - 1) * m.beat_len
        out = [e for e in out if e.start < bar + last_beat - 1e-9 or e.pitch == CRASH]
        steps = m.sub * 2
        for i in range(steps):
            key = SNARE if kind == "march" or i < steps // 2 else (HIGH_TOM if i < 3 * steps // 4 else LOW_TOM)
            hit(key, last_beat + i * m.beat_len / steps, 70 + 3 * i)
    return out


def _clean_notes(events: Sequence[NoteEvent], end_beats: float) -> tuple[NoteEvent, ...]:
    """Sort, drop notes after the end, and cut a note where the same key is struck again
    (one MIDI channel cannot hold two notes of the same key)."""
    kept = sorted((e for e in events if e.start < end_beats - 1e-9), key=lambda e: (e.start, e.pitch))
    out: list[NoteEvent] = []
    last_by_pitch: dict[int, int] = {}
    for e in kept:
        e = NoteEvent(e.pitch, e.start, min(e.end, end_beats), e.velocity, e.jitter_s)
        j = last_by_pitch.get(e.pitch)
        if j is not None and out[j].end > e.start:
            prev = out[j]
            if e.start - prev.start < 1e-6:  # the same key twice at once: keep the louder
                if e.velocity > prev.velocity:
                    out[j] = NoteEvent(e.pitch, prev.start, max(prev.end, e.end), e.velocity, prev.jitter_s)
                continue
            out[j] = NoteEvent(prev.pitch, prev.start, e.start, prev.velocity, prev.jitter_s)
        last_by_pitch[e.pitch] = len(out)
        out.append(e)
    return tuple(out)


def pattern_meter(meter: Meter) -> Meter:
    """The metre grooves are played in: bars of more than four beats split in halves/thirds."""
    m = meter
    while m.beats > 4:
        if m.beats % 2 == 0:
            m = Meter(m.beats // 2, m.beat_len, m.sub)
        elif m.beats % 3 == 0:
            m = Meter(m.beats // 3, m.beat_len, m.sub)
        else:
            break
    return m


def _pick_rhythm(rng: np.random.Generator, meter: Meter) -> tuple[float, ...]:
    """A strumming rhythm for the whole song: every beat, plus some off-beat subdivisions."""
    offs = []
    for beat in range(meter.beats):
        for sub in range(meter.sub):
            if sub == 0 or rng.random() < 0.45:
                offs.append(beat * meter.beat_len + sub * meter.sub_len)
    return tuple(offs)


# --- The arrangement -----------------------------------------------------------------------------
# Every random choice comes from the one generator of `arrange`, in a fixed order: style, tempo,
# lead instrument and key, intro, the lead's performance, the mix margin and swing, then part by part
# (whether it plays, its instrument and notes, then its mix settings), the reverb last. Reordering
# any draw changes every arrangement of the catalogue.

# Mix balance: each accompaniment part sits the lead margin under the lead, plus this offset (dB).
_LEVEL_OFFSETS_DB = {"chords": 0.0, "bass": 1.0, "pad": -5.0, "arp": -4.0, "timpani": -2.0, "drums": -1.0}


def _choice(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _draw_tempo(melody: Melody, st: Style, rng: np.random.Generator, config: ArrangementConfig) -> float:
    """The melody's tempo scaled by the style and a random factor, rounded, within `bpm_range`."""
    lo_bpm, hi_bpm = config.bpm_range
    bpm = melody.bpm * st.bpm_factor * float(rng.uniform(*config.tempo_factor_range))
    return float(round(min(max(bpm, lo_bpm), hi_bpm)))


@dataclass(frozen=True)
class _LeadKey:
    """The lead instrument, the key it plays the tune in and the register left to the band."""

    program: int
    shift: int  # semitones added to every melody pitch (octave moves included)
    tonic: int  # pitch class of the estimated key after the shift
    mode: str
    center: int  # MIDI pitch the accompaniment is voiced around: mostly under the tune


def _draw_lead_key(melody: Melody, st: Style, rng: np.random.Generator, config: ArrangementConfig) -> _LeadKey:
    """A random transposition, then the lead instrument: whole octaves move the tune into its range."""
    pitches = [n.pitch for n in melody.notes]
    durations = [n.duration for n in melody.notes]
    tonic0, mode = estimate_key(pitches, durations)
    shift = int(rng.integers(config.key_shift_range[0], config.key_shift_range[1] + 1))
    program = int(_choice(rng, st.leads))
    lo, hi = LEAD_RANGES.get(program, (60, 74))
    median = float(np.median(pitches)) + shift
    shift += 12 * int(round(((lo + hi) / 2 - median) / 12))
    lead_median = float(np.median(pitches)) + shift
    center = int(min(st.chord_center, lead_median - 9))
    return _LeadKey(program, shift, (tonic0 + shift) % 12, mode, max(center, 48))


@dataclass(frozen=True)
class _Form:
    """Where the tune sits on the master's timeline (in beats)."""

    intro_bars: int  # accompaniment bars before the first melody downbeat: 0, 1 or 2
    melody_offset: float  # master beat of melody beat 0 in the first copy
    band_start: float  # where the accompaniment comes in
    grid0: float  # master beat of the first melody downbeat
    period: float  # distance between two copies of the tune (whole bars)

    @property
    def intro_end(self) -> float:
        return self.grid0 if self.intro_bars else self.band_start


def _draw_form(melody: Melody, meter: Meter, rng: np.random.Generator, config: ArrangementConfig) -> _Form:
    """0-2 intro bars ending where the pickup starts; without an intro, the anacrusis sounds alone
    and the band comes in on the downbeat."""
    bar = meter.bar_len
    n_intro = int(rng.choice(3, p=np.array(config.intro_bar_probs) / sum(config.intro_bar_probs)))
    pickup = melody.pickup_beats
    if n_intro:
        melody_offset = n_intro * bar - pickup
        band_start = 0.0
    else:
        melody_offset = 0.0
        band_start = pickup
    length = max(melody.length_beats, melody.notes[-1].end)  # a Melody built without a length
    period = max(math.ceil(length / bar - 1e-6) * bar, bar)
    return _Form(n_intro, melody_offset, band_start, melody_offset + pickup, period)


@dataclass(frozen=True)
class _LeadLine:
    """The notated tune on the master's timeline: `copies` copies, the last one possibly cut."""

    notes: list[tuple[float, float, int]]  # (start, end, pitch) in beats, transposed
    copies: int
    end_beats: float  # last sounding beat of the music
    cut: bool


def _tune_copies(melody: Melody, form: _Form, shift: int, copies: int) -> list[tuple[float, float, int]]:
    out = []
    for c in range(copies):
        base = form.melody_offset + c * form.period
        for n in melody.notes:
            out.append((base + n.start, base + n.start + n.duration, n.pitch + shift))
    return out


def _natural_end(notes: Sequence[tuple[float, float, int]], grid0: float, bar: float) -> float:
    """The end of the bar of the last onset (or of the last note, if it rings longer)."""
    last_on = notes[-1][0]
    k = math.floor((last_on - grid0) / bar + 1e-9)
    return max(grid0 + (k + 1) * bar, notes[-1][1])


def _cut_point(notes: Sequence[tuple[float, float, int]], limit: float, grid0: float, bar: float,
               spb: float) -> float:
    """Where a tune too long for the master stops: a note onset (every note before it has ended)
    no later than `limit`, preferably a downbeat within the last 6 seconds."""
    boundaries = [s for i, (s, _, _) in enumerate(notes) if i > 0 and s <= limit + 1e-9]
    boundaries += [notes[-1][1]] if notes[-1][1] <= limit else []
    on_grid = [b for b in boundaries if abs(((b - grid0) / bar) - round((b - grid0) / bar)) < 1e-6]
    window = 6.0 / spb
    good = [b for b in on_grid if b >= limit - window]
    return max(good) if good else (max(boundaries) if boundaries else limit)


def _lead_line(melody: Melody, form: _Form, shift: int, bar: float, spb: float,
               config: ArrangementConfig) -> _LeadLine:
    """Repeat the tune until the master lasts `min_seconds`; cut it so it lasts at most `max_seconds`."""
    copies = 1
    while (_natural_end(_tune_copies(melody, form, shift, copies), form.grid0, bar) * spb
           + config.tail_seconds) < config.min_seconds and copies < 64:
        copies += 1
    notes = _tune_copies(melody, form, shift, copies)
    end_beats = _natural_end(notes, form.grid0, bar)
    limit = (config.max_seconds - config.tail_seconds) / spb
    if end_beats <= limit:
        return _LeadLine(notes, copies, end_beats, cut=False)
    end_beats = _cut_point(notes, limit, form.grid0, bar, spb)
    return _LeadLine([x for x in notes if x[0] < end_beats - 1e-9], copies, end_beats, cut=True)


def _perform_lead(notes: Sequence[tuple[float, float, int]], grid0: float, meter: Meter, spb: float,
                  rng: np.random.Generator, config: ArrangementConfig) -> tuple[NoteEvent, ...]:
    """The lead's playing: notated onsets, articulated durations, accents on downbeats."""
    articulation = float(rng.uniform(*config.lead_articulation_range))
    lead_vel = int(rng.integers(88, 112))
    events = []
    for i, (s, e, p) in enumerate(notes):
        nxt = notes[i + 1][0] if i + 1 < len(notes) else e
        dur = (min(e, nxt) - s)
        played = max(min(dur * articulation, dur - 0.02 / spb), min(dur, 0.05 / spb))
        pos = (s - grid0) / meter.beat_len
        accent = 8 if abs(pos - round(pos)) < 1e-6 and round(pos) % meter.beats == 0 else 0
        v = int(min(127, max(30, lead_vel + accent + int(rng.integers(-6, 7)))))
        events.append(NoteEvent(int(p), s, s + played, v))
    return tuple(events)


def _band_bar_starts(form: _Form, bar: float, end_beats: float) -> list[float]:
    """The accompaniment's bar grid, from the band's entry to the end of the music."""
    starts: list[float] = []
    b = form.band_start
    while b < end_beats - 1e-9:
        starts.append(b)
        b += bar
    return starts


def _with_intro_chords(chords: Sequence[ChordSpan], form: _Form, bar: float, tonic: int,
                       mode: str) -> list[ChordSpan]:
    """The tonic under the intro; after two intro bars, I - V leading into the tune."""
    tonic_q = "maj" if mode == "major" else "min"
    out = [ChordSpan(c.start, c.end, tonic, tonic_q) if c.start < form.intro_end - 1e-9 else c for c in chords]
    if form.intro_bars == 2 and len(out) > 1:
        out = [
            ChordSpan(c.start, c.end, (tonic + 7) % 12, "maj")
            if bar - 1e-9 <= c.start < 2 * bar - 1e-9 else c
            for c in out
        ]
    return out


def _chord_progression(lead: _LeadLine, bar_starts: Sequence[float], meter: Meter, key: _LeadKey,
                       form: _Form, st: Style, config: ArrangementConfig) -> list[ChordSpan]:
    """Chords fitted to the tune on the band's bar grid (`harmonise`), the intro's chords, sevenths
    in the styles that want them, nothing past the end of the music."""
    chords = harmonise(lead.notes, bar_starts, meter, key.tonic, key.mode, allow_half_bars=True, config=config)
    chords = _with_intro_chords(chords, form, meter.bar_len, key.tonic, key.mode)
    if st.sevenths:
        chords = _with_sevenths(chords, key.tonic, key.mode)
    end = lead.end_beats
    return [ChordSpan(c.start, min(c.end, end), c.root, c.quality) for c in chords if c.start < end]


def _pattern_starts(bar_starts: Sequence[float], bar: float, pmeter: Meter) -> list[float]:
    """The bar grid in pattern bars (`pattern_meter`): long bars split in halves or thirds."""
    pbar = pmeter.bar_len
    per = int(round(bar / pbar))
    return [b + k * pbar for b in bar_starts for k in range(per)]


@dataclass(frozen=True)
class _Band:
    """What the accompaniment parts share: the pattern grid and chords, the feel, the mix margin."""

    rng: np.random.Generator
    style: str
    meter: Meter  # the metre patterns are played in (`pattern_meter`)
    pattern_starts: list[float]
    final_bar: float  # start of the last (full) bar
    ending: bool  # a natural ending (the tune was not cut): the band holds the last chord
    end_beats: float
    grid0: float  # the tune's first downbeat
    chords: list[ChordSpan]
    center: int
    lead_program: int  # the accompaniment prefers other instruments
    swing: float
    spb: float
    margin_db: float  # the lead above the accompaniment
    config: ArrangementConfig

    def ctx(self, velocity: int, center: int, rhythm: tuple[float, ...] = ()) -> _Ctx:
        return _Ctx(rng=self.rng, meter=self.meter, chords=self.chords, center=center, velocity=velocity,
                    swing=self.swing, spb=self.spb, rhythm=rhythm,
                    comp_rhythms=comp_rhythms(self.style, self.meter))

    def per_bar(self, bar_notes: Callable[[float, int], list[NoteEvent]]) -> tuple[NoteEvent, ...]:
        """A part's notes: `bar_notes(start, index)` for every pattern bar, cleaned up."""
        events: list[NoteEvent] = []
        for i, bs in enumerate(self.pattern_starts):
            events.extend(bar_notes(bs, i))
        return _clean_notes(events, self.end_beats)

    def in_final_bar(self, bs: float) -> bool:
        return self.ending and bs >= self.final_bar - 1e-9

    def pan(self) -> int:
        return int(self.rng.integers(24, 105))

    def level_db(self, role: str) -> float:
        """The lead margin below the lead, the role's offset (`_LEVEL_OFFSETS_DB`), a random jitter."""
        jitter = self.config.part_level_jitter_db
        return -self.margin_db + _LEVEL_OFFSETS_DB[role] + float(self.rng.uniform(-jitter, jitter))


def _chord_part(band: _Band, st: Style) -> Part:
    """The style's chord pattern on another instrument than the lead (the ballad's pianist may play
    both hands), held as a pad in the final bar."""
    rng = band.rng
    options = [c for c in st.chords if c[0] != band.lead_program] or list(st.chords)
    program, kind = _choice(rng, options)
    if st.name == "piano_ballad" and band.lead_program in (0, 1, 2, 4) and rng.random() < 0.7:
        program = band.lead_program
    ctx = band.ctx(int(rng.integers(58, 80)), band.center, _pick_rhythm(rng, band.meter))
    notes = band.per_bar(lambda bs, _i: _chord_pattern("pad" if band.in_final_bar(bs) else kind, ctx, bs))
    return Part("chords", int(program), False, notes, band.level_db("chords"), band.pan(),
                int(rng.integers(30, 90)), int(rng.integers(0, 50)))


def _bass_bar(band: _Band, ctx: _Ctx, kind: str, bs: float, i: int) -> list[NoteEvent]:
    """One pattern bar of bass (a walking line heads for the next bar's root); the root in the final bar."""
    next_root = ctx.chord_at(bs + band.meter.bar_len).root if i + 1 < len(band.pattern_starts) else None
    return _bass_pattern("root" if band.in_final_bar(bs) else kind, ctx, bs, next_root)


def _bass_part(band: _Band, st: Style) -> Part | None:
    """A bass line in one of the style's bass patterns (with probability `bass_prob`)."""
    rng = band.rng
    if not (st.basses and rng.random() < st.bass_prob):
        return None
    program, kind = _choice(rng, st.basses)
    ctx = band.ctx(int(rng.integers(75, 100)), band.center)
    notes = band.per_bar(lambda bs, i: _bass_bar(band, ctx, kind, bs, i))
    return Part("bass", int(program), False, notes, band.level_db("bass"), 64, int(rng.integers(10, 40)))


def _pad_part(band: _Band, st: Style) -> Part | None:
    """Sustained chords above the chord part (with probability `pad_prob`)."""
    rng = band.rng
    if not (st.pads and rng.random() < st.pad_prob):
        return None
    ctx = band.ctx(int(rng.integers(50, 70)), band.center + 5)
    program = int(_choice(rng, [p for p in st.pads if p != band.lead_program] or st.pads))
    notes = band.per_bar(lambda bs, _i: _chord_pattern("pad", ctx, bs))
    return Part("pad", program, False, notes, band.level_db("pad"), band.pan(), int(rng.integers(50, 110)),
                int(rng.integers(20, 80)))


def _arp_part(band: _Band, st: Style) -> Part | None:
    """Arpeggiated chords in a higher register (with probability `arp_prob`)."""
    rng = band.rng
    if not (st.arps and rng.random() < st.arp_prob):
        return None
    ctx = band.ctx(int(rng.integers(50, 72)), min(band.center + 7, 72))
    program = int(_choice(rng, [p for p in st.arps if p != band.lead_program] or st.arps))
    notes = band.per_bar(lambda bs, _i: _chord_pattern("arpeggio", ctx, bs))
    return Part("arp", program, False, notes, band.level_db("arp"), band.pan(), int(rng.integers(40, 100)))


def _timpani_bar(band: _Band, ctx: _Ctx, bs: float) -> list[NoteEvent]:
    """A stroke on the chord root every fourth pattern bar from the tune's first downbeat."""
    if bs < band.grid0 - 1e-9 or round((bs - band.grid0) / band.meter.bar_len) % 4 != 0:
        return []
    p = 40 + (ctx.chord_at(bs).root - 40) % 12
    return [NoteEvent(p, bs, bs + band.meter.beat_len, ctx.vel(), ctx.jitter())]


def _timpani_part(band: _Band, st: Style) -> Part | None:
    """Timpani marking the phrases (with probability `timpani_prob`)."""
    rng = band.rng
    if not (st.timpani_prob and rng.random() < st.timpani_prob):
        return None
    ctx = band.ctx(int(rng.integers(70, 95)), band.center)
    notes = band.per_bar(lambda bs, _i: _timpani_bar(band, ctx, bs))
    return Part("timpani", 47, False, notes, band.level_db("timpani"), 64, 60)


def _drum_bar(band: _Band, ctx: _Ctx, pattern: str, bs: float, *, fills: bool, in_intro: bool) -> list[NoteEvent]:
    """One pattern bar of drums: a crash every 8 bars of the tune, a fill ending every 4th; on a
    natural ending, one kick and crash on the final downbeat."""
    rel = int(round((bs - band.grid0) / band.meter.bar_len))
    if bs < band.grid0 - 1e-9 and not in_intro:
        return []
    if band.in_final_bar(bs):
        if bs > band.final_bar + 1e-9:
            return []
        return [NoteEvent(KICK, bs, bs + 0.2, ctx.vel(100), 0.0),
                NoteEvent(CRASH, bs, bs + 2.0, ctx.vel(100), 0.0)]
    crash = rel >= 0 and rel % 8 == 0 and pattern not in ("light", "brush", "swing", "bossa")
    fill = fills and rel >= 0 and rel % 4 == 3
    return _drum_pattern(pattern, ctx, bs, fill, crash)


def _drum_part(band: _Band, st: Style) -> Part | None:
    """A kit playing one of the style's grooves (with probability `drum_prob`), with or without fills,
    in the intro or not."""
    rng = band.rng
    if not (st.kits and st.drum_patterns and rng.random() < st.drum_prob):
        return None
    kit = int(_choice(rng, st.kits))
    pattern = str(_choice(rng, st.drum_patterns))
    ctx = band.ctx(0, band.center)
    fills = rng.random() < 0.6
    in_intro = rng.random() < 0.5
    notes = band.per_bar(lambda bs, _i: _drum_bar(band, ctx, pattern, bs, fills=fills, in_intro=in_intro))
    return Part("drums", kit, True, notes, band.level_db("drums"), 64, int(rng.integers(10, 50)))


def _draw_reverb(rng: np.random.Generator, st: Style) -> dict[str, float]:
    """The room (FluidSynth reverb settings); its size depends on the style."""
    return {
        "roomsize": round(float(rng.uniform(*st.reverb_range)), 3),
        "damping": round(float(rng.uniform(0.1, 0.6)), 3),
        "width": round(float(rng.uniform(0.5, 1.0)), 3),
        "level": round(float(rng.uniform(0.3, 0.9)), 3),
    }


def arrange(
    melody: Melody, seed: int, *, style: str | None = None, config: ArrangementConfig = CONFIG
) -> Arrangement:
    """Draw a complete arrangement of `melody` from `seed` (same inputs -> same arrangement)."""
    if not melody.notes:
        raise ValueError(f"{melody.melody_id}: the melody has no notes")
    rng = np.random.default_rng(seed)
    st = STYLES[style] if style else choose_style(rng)
    meter = Meter.from_time_signature(melody.time_signature)
    bpm = _draw_tempo(melody, st, rng, config)
    spb = 60.0 / bpm
    key = _draw_lead_key(melody, st, rng, config)
    form = _draw_form(melody, meter, rng, config)
    lead = _lead_line(melody, form, key.shift, meter.bar_len, spb, config)
    lead_notes = _perform_lead(lead.notes, form.grid0, meter, spb, rng, config)
    bar_starts = _band_bar_starts(form, meter.bar_len, lead.end_beats)
    chords = _chord_progression(lead, bar_starts, meter, key, form, st, config)

    margin = float(rng.uniform(*config.lead_margin_db_range))
    swing = float(rng.uniform(*st.swing_range)) if st.swing_range[1] > 0 else 0.0
    parts = [Part("lead", key.program, False, lead_notes, 0.0, pan=64, reverb_send=int(rng.integers(30, 90)),
                  chorus_send=int(rng.integers(0, 30)))]
    pmeter = pattern_meter(meter)
    band = _Band(
        rng=rng, style=st.name, meter=pmeter, pattern_starts=_pattern_starts(bar_starts, meter.bar_len, pmeter),
        final_bar=bar_starts[-1] if bar_starts else math.inf, ending=not lead.cut, end_beats=lead.end_beats,
        grid0=form.grid0, chords=chords, center=key.center, lead_program=key.program, swing=swing, spb=spb,
        margin_db=margin, config=config,
    )
    parts.append(_chord_part(band, st))
    for optional_part in (_bass_part, _pad_part, _arp_part, _timpani_part, _drum_part):
        part = optional_part(band, st)
        if part is not None:
            parts.append(part)
    return Arrangement(
        melody_id=melody.melody_id,
        style=st.name,
        bpm=bpm,
        key_shift=key.shift,
        key_tonic=key.tonic,
        key_mode=key.mode,
        time_signature=melody.time_signature,
        intro_beats=form.grid0 if form.intro_bars else 0.0,
        melody_offset_beats=form.melody_offset,
        period_beats=form.period,
        copies=lead.copies,
        cut=lead.cut,
        end_beats=lead.end_beats,
        chords=tuple(chords),
        parts=tuple(parts),
        reverb=_draw_reverb(rng, st),
        lead_margin_db=round(margin, 2),
    )
