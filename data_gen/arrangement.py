"""Arranging a monophonic melody as a polyphonic song: style, instruments, key, tempo, chords,
bass line and drums, all drawn from one seed.

`arrange(melody, seed)` returns an `Arrangement`: General MIDI parts whose notes are timed in
beats (quarter notes) on the master's timeline. `data_gen.render` turns it into audio. The lead
part plays the melody (transposed, repeated to reach the minimum length, cut at a note boundary
before the maximum length); the other parts follow per-bar chords chosen to fit the melody:
for each bar (or half bar), the diatonic triad of the Krumhansl-Kessler key estimate that best
covers the melody notes sounding there, weighted by duration and metric position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from data_gen.melodies import Melody, stable_hash, time_signature_beats

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


# --- Instruments and styles ----------------------------------------------------------------------
DRUM_KITS = {0: "Standard kit", 8: "Room kit", 16: "Power kit", 24: "Electronic kit",
             25: "TR-808 kit", 32: "Jazz kit", 40: "Brush kit", 48: "Orchestra kit"}

LEAD_RANGES: dict[int, tuple[int, int]] = {
    # GM program -> comfortable range for the median melody pitch (MIDI)
    0: (64, 77), 1: (64, 77), 2: (64, 77), 4: (62, 76), 5: (62, 76), 11: (64, 79),
    16: (62, 74), 18: (62, 74), 19: (60, 72), 20: (62, 74), 21: (62, 76), 22: (62, 76),
    24: (60, 72), 26: (60, 72), 27: (60, 74), 29: (60, 74), 30: (60, 74), 40: (67, 81),
    41: (60, 72), 42: (50, 62), 52: (57, 70), 53: (57, 70), 54: (60, 72), 56: (62, 76),
    57: (50, 62), 59: (62, 76), 60: (55, 67), 61: (60, 72), 64: (67, 79), 65: (60, 74),
    66: (53, 67), 68: (67, 79), 71: (60, 74), 73: (72, 84), 74: (72, 84), 75: (67, 81),
    78: (74, 86), 79: (67, 81), 80: (62, 76), 81: (62, 76), 83: (64, 78), 84: (60, 74),
    85: (60, 74), 87: (55, 67), 105: (60, 72), 110: (67, 81),
}


@dataclass(frozen=True)
class Style:
    """A kind of arrangement: instrument pools per role and the patterns they play."""

    name: str
    leads: tuple[int, ...]
    chords: tuple[tuple[int, str], ...]  # (program, chord pattern)
    basses: tuple[tuple[int, str], ...] = ()  # (program, bass pattern)
    bass_prob: float = 1.0
    pads: tuple[int, ...] = ()
    pad_prob: float = 0.0
    arps: tuple[int, ...] = ()
    arp_prob: float = 0.0
    kits: tuple[int, ...] = ()
    drum_patterns: tuple[str, ...] = ()
    drum_prob: float = 1.0
    timpani_prob: float = 0.0
    sevenths: bool = False
    swing_range: tuple[float, float] = (0.0, 0.0)  # delay of off-beat subdivisions (beats)
    bpm_factor: float = 1.0
    chord_center: int = 60
    reverb_range: tuple[float, float] = (0.3, 0.7)  # room size
    weight: float = 1.0


STYLES: dict[str, Style] = {s.name: s for s in (
    Style("pop_band", leads=(53, 54, 85, 80, 65, 27, 29, 4, 22, 73),
          chords=((0, "strum"), (4, "block"), (25, "strum"), (27, "strum"), (0, "arpeggio"), (16, "pad")),
          basses=((33, "root_fifth"), (34, "eighths"), (33, "eighths")),
          pads=(48, 89, 50), pad_prob=0.4, kits=(0, 8, 16), drum_patterns=("pop",), weight=1.5),
    Style("rock", leads=(30, 29, 81, 18, 53),
          chords=((29, "power"), (30, "power"), (18, "block")),
          basses=((34, "eighths"), (33, "eighths")), pads=(18,), pad_prob=0.2,
          kits=(16, 0), drum_patterns=("rock",), bpm_factor=1.08, reverb_range=(0.2, 0.5)),
    Style("folk_acoustic", leads=(73, 110, 40, 21, 22, 74, 75, 78, 105, 79),
          chords=((24, "arpeggio"), (25, "strum"), (46, "arpeggio"), (105, "arpeggio"),
                  (21, "offbeat"), (25, "arpeggio")),
          basses=((32, "root_fifth"),), bass_prob=0.6, kits=(0,), drum_patterns=("light",),
          drum_prob=0.4, reverb_range=(0.3, 0.6), weight=1.3),
    Style("piano_ballad", leads=(0, 0, 1, 2, 4, 73, 40, 71, 53, 42, 68),
          chords=((0, "arpeggio"), (1, "arpeggio"), (0, "block"), (4, "arpeggio")),
          basses=((35, "root"), (32, "root")), bass_prob=0.3, pads=(48, 49, 89), pad_prob=0.5,
          kits=(40,), drum_patterns=("brush",), drum_prob=0.25, bpm_factor=0.85,
          reverb_range=(0.5, 0.9)),
    Style("strings", leads=(40, 73, 68, 71, 60, 42, 41),
          chords=((48, "pad"), (49, "pad"), (44, "block"), (48, "block")),
          basses=((43, "root"), (45, "root_fifth")), arps=(46, 45), arp_prob=0.5,
          drum_prob=0.0, timpani_prob=0.3, bpm_factor=0.9, chord_center=58,
          reverb_range=(0.6, 0.95)),
    Style("electronic", leads=(80, 81, 84, 87, 85, 83),
          chords=((89, "pad"), (88, "pad"), (90, "offbeat"), (91, "pad"), (95, "pad"), (50, "block")),
          basses=((38, "eighths"), (39, "offbeat"), (38, "root_fifth")), arps=(81, 80), arp_prob=0.5,
          kits=(24, 25), drum_patterns=("four_floor",), bpm_factor=1.1, reverb_range=(0.4, 0.8)),
    Style("jazz_trio", leads=(66, 65, 56, 59, 11, 71, 0, 26),
          chords=((0, "comp"), (4, "comp"), (26, "comp")), basses=((32, "walking"),),
          kits=(32, 40), drum_patterns=("swing",), sevenths=True, swing_range=(0.08, 0.16),
          chord_center=58, reverb_range=(0.3, 0.6)),
    Style("brass_band", leads=(56, 60, 61, 56),
          chords=((57, "offbeat"), (60, "offbeat"), (61, "offbeat")), basses=((58, "root_fifth"),),
          kits=(48, 0), drum_patterns=("march",), drum_prob=0.8, chord_center=57,
          reverb_range=(0.4, 0.8)),
    Style("organ_hymn", leads=(19, 52, 53, 20),
          chords=((19, "pad"), (52, "pad"), (20, "block")), basses=((19, "root"),),
          drum_prob=0.0, bpm_factor=0.85, chord_center=57, reverb_range=(0.7, 0.95), weight=0.6),
    Style("bossa", leads=(73, 65, 24, 66, 11, 53),
          chords=((24, "bossa"), (0, "comp")), basses=((32, "root_fifth"),),
          pads=(48, 89), pad_prob=0.3, kits=(0, 40), drum_patterns=("bossa",), sevenths=True,
          reverb_range=(0.3, 0.6), weight=0.7),
)}

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


def _comp_rhythms(style: str, meter: Meter) -> tuple[tuple[tuple[float, float], ...], ...]:
    bl, bar = meter.beat_len, meter.bar_len
    if style == "bossa" and meter.beats == 4 and meter.sub == 2:
        return (((0.0, 1.0), (1.5, 1.0), (3.0, 1.0)), ((0.0, 0.5), (1.5, 0.5), (2.5, 0.5), (3.5, 0.5)))
    if meter.beats == 4:
        return (((0.0, 1.0), (1.5 * bl, 0.5 * bl)), ((0.5 * bl, 1.0 * bl), (2.5 * bl, 1.0 * bl)),
                ((0.0, 2.0 * bl), (2.0 * bl, 2.0 * bl)), ((1.0 * bl, 0.5 * bl), (2.5 * bl, 1.0 * bl)))
    return (((0.0, bar * 0.6),), ((0.0, bl), (bl, bl)) if meter.beats >= 2 else ((0.0, bar * 0.6),))


# --- The arrangement -----------------------------------------------------------------------------
def _choice(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def choose_style(rng: np.random.Generator) -> Style:
    styles = list(STYLES.values())
    w = np.array([s.weight for s in styles])
    return styles[int(rng.choice(len(styles), p=w / w.sum()))]


def _level_to_db(rng: np.random.Generator, margin: float, offset: float, config: ArrangementConfig) -> float:
    return -margin + offset + float(rng.uniform(-config.part_level_jitter_db, config.part_level_jitter_db))


def arrange(
    melody: Melody, seed: int, *, style: str | None = None, config: ArrangementConfig = CONFIG
) -> Arrangement:
    """Draw a complete arrangement of `melody` from `seed` (same inputs -> same arrangement)."""
    if not melody.notes:
        raise ValueError(f"{melody.melody_id}: the melody has no notes")
    rng = np.random.default_rng(seed)
    st = STYLES[style] if style else choose_style(rng)
    meter = Meter.from_time_signature(melody.time_signature)
    bar = meter.bar_len

    # Tempo.
    lo_bpm, hi_bpm = config.bpm_range
    bpm = melody.bpm * st.bpm_factor * float(rng.uniform(*config.tempo_factor_range))
    bpm = float(round(min(max(bpm, lo_bpm), hi_bpm)))
    spb = 60.0 / bpm

    # Key and register.
    pitches = [n.pitch for n in melody.notes]
    durations = [n.duration for n in melody.notes]
    tonic0, mode = estimate_key(pitches, durations)
    shift = int(rng.integers(config.key_shift_range[0], config.key_shift_range[1] + 1))
    lead_program = int(_choice(rng, st.leads))
    lo, hi = LEAD_RANGES.get(lead_program, (60, 74))
    median = float(np.median(pitches)) + shift
    shift += 12 * int(round(((lo + hi) / 2 - median) / 12))
    tonic = (tonic0 + shift) % 12
    lead_median = float(np.median(pitches)) + shift
    center = int(min(st.chord_center, lead_median - 9))  # accompaniment mostly under the tune
    center = max(center, 48)

    # Timeline: intro bars, pickup, copies of the tune.
    n_intro = int(rng.choice(3, p=np.array(config.intro_bar_probs) / sum(config.intro_bar_probs)))
    pickup = melody.pickup_beats
    if n_intro:
        melody_offset = n_intro * bar - pickup
        acc_start = 0.0
    else:
        melody_offset = 0.0
        acc_start = pickup  # the anacrusis sounds alone, the band comes in on the downbeat
    grid0 = melody_offset + pickup  # master beat of the first melody downbeat
    length = max(melody.length_beats, melody.notes[-1].end)  # a Melody built without a length
    period = math.ceil(length / bar - 1e-6) * bar
    period = max(period, bar)
    articulation = float(rng.uniform(*config.lead_articulation_range))

    def lead_notes_for(copies: int) -> list[tuple[float, float, int]]:
        out = []
        for c in range(copies):
            base = melody_offset + c * period
            for n in melody.notes:
                out.append((base + n.start, base + n.start + n.duration, n.pitch + shift))
        return out

    def natural_end(notes: list[tuple[float, float, int]]) -> float:
        last_on = notes[-1][0]
        k = math.floor((last_on - grid0) / bar + 1e-9)
        return max(grid0 + (k + 1) * bar, notes[-1][1])

    copies = 1
    while (natural_end(lead_notes_for(copies)) * spb + config.tail_seconds) < config.min_seconds and copies < 64:
        copies += 1
    notated = lead_notes_for(copies)
    end_beats = natural_end(notated)
    cut = False
    limit = (config.max_seconds - config.tail_seconds) / spb
    if end_beats > limit:
        cut = True
        # Cut at a note onset (every note before it has ended), preferring a downbeat.
        boundaries = [s for i, (s, _, _) in enumerate(notated) if i > 0 and s <= limit + 1e-9]
        boundaries += [notated[-1][1]] if notated[-1][1] <= limit else []
        on_grid = [b for b in boundaries if abs(((b - grid0) / bar) - round((b - grid0) / bar)) < 1e-6]
        window = 6.0 / spb
        good = [b for b in on_grid if b >= limit - window]
        end_beats = max(good) if good else (max(boundaries) if boundaries else limit)
        notated = [x for x in notated if x[0] < end_beats - 1e-9]

    # Lead part: notated onsets, articulated durations, accents on downbeats.
    lead_vel = int(rng.integers(88, 112))
    lead_events = []
    for i, (s, e, p) in enumerate(notated):
        nxt = notated[i + 1][0] if i + 1 < len(notated) else e
        dur = (min(e, nxt) - s)
        played = max(min(dur * articulation, dur - 0.02 / spb), min(dur, 0.05 / spb))
        pos = (s - grid0) / meter.beat_len
        accent = 8 if abs(pos - round(pos)) < 1e-6 and round(pos) % meter.beats == 0 else 0
        v = int(min(127, max(30, lead_vel + accent + int(rng.integers(-6, 7)))))
        lead_events.append(NoteEvent(int(p), s, s + played, v))

    # Chords on the bar grid of the accompaniment.
    bar_starts: list[float] = []
    b = acc_start if n_intro == 0 else 0.0
    while b < end_beats - 1e-9:
        bar_starts.append(b)
        b += bar
    chords = harmonise(
        notated, bar_starts, meter, tonic, mode, allow_half_bars=True, config=config
    )
    intro_end = grid0 if n_intro else acc_start
    tonic_q = "maj" if mode == "major" else "min"
    chords = [
        ChordSpan(c.start, c.end, tonic, tonic_q) if c.start < intro_end - 1e-9 else c for c in chords
    ]
    if n_intro == 2 and len(chords) > 1:  # I - V into the tune
        chords = [
            ChordSpan(c.start, c.end, (tonic + 7) % 12, "maj")
            if bar - 1e-9 <= c.start < 2 * bar - 1e-9 else c
            for c in chords
        ]
    if st.sevenths:
        chords = _with_sevenths(chords, tonic, mode)
    chords = [ChordSpan(c.start, min(c.end, end_beats), c.root, c.quality) for c in chords if c.start < end_beats]

    # Parts.
    margin = float(rng.uniform(*config.lead_margin_db_range))
    swing = float(rng.uniform(*st.swing_range)) if st.swing_range[1] > 0 else 0.0
    parts: list[Part] = [Part("lead", lead_program, False, tuple(lead_events), 0.0,
                              pan=64, reverb_send=int(rng.integers(30, 90)),
                              chorus_send=int(rng.integers(0, 30)))]

    # Patterns are played per "pattern bar": long bars (4/2, 6/4, 3/2...) are split in halves
    # or thirds so that grooves written for up to four beats fill them.
    pmeter = pattern_meter(meter)
    pbar = pmeter.bar_len
    per = int(round(bar / pbar))
    pattern_starts = [b + k * pbar for b in bar_starts for k in range(per)]
    final_bar = bar_starts[-1] if bar_starts else math.inf
    ending = not cut  # a natural ending: the band holds the last chord

    def make_ctx(velocity: int, c: int, rhythm: tuple[float, ...] = ()) -> _Ctx:
        return _Ctx(rng=rng, meter=pmeter, chords=chords, center=c, velocity=velocity,
                    swing=swing, spb=spb, rhythm=rhythm, comp_rhythms=_comp_rhythms(st.name, pmeter))

    def per_bar(fn: Callable[[float, int], list[NoteEvent]]) -> tuple[NoteEvent, ...]:
        events: list[NoteEvent] = []
        for i, bs in enumerate(pattern_starts):
            events.extend(fn(bs, i))
        return _clean_notes(events, end_beats)

    def in_final_bar(bs: float) -> bool:
        return ending and bs >= final_bar - 1e-9

    def pan() -> int:
        return int(rng.integers(24, 105))

    # The accompaniment uses another instrument than the lead (except the ballad's pianist).
    chord_options = [c for c in st.chords if c[0] != lead_program] or list(st.chords)
    chord_program, chord_kind = _choice(rng, chord_options)
    if st.name == "piano_ballad" and lead_program in (0, 1, 2, 4) and rng.random() < 0.7:
        chord_program = lead_program  # the pianist plays both hands
    ctx = make_ctx(int(rng.integers(58, 80)), center, _pick_rhythm(rng, pmeter))

    def chord_bar(bs: float, _i: int) -> list[NoteEvent]:
        kind = "pad" if in_final_bar(bs) else chord_kind
        return _chord_pattern(kind, ctx, bs)

    parts.append(Part("chords", int(chord_program), False, per_bar(chord_bar),
                      _level_to_db(rng, margin, 0.0, config), pan(), int(rng.integers(30, 90)),
                      int(rng.integers(0, 50))))

    if st.basses and rng.random() < st.bass_prob:
        bass_program, bass_kind = _choice(rng, st.basses)
        bctx = make_ctx(int(rng.integers(75, 100)), center)

        def bass_bar(bs: float, i: int) -> list[NoteEvent]:
            nxt = bctx.chord_at(bs + pbar).root if i + 1 < len(pattern_starts) else None
            kind = "root" if in_final_bar(bs) else bass_kind
            return _bass_pattern(kind, bctx, bs, nxt)

        parts.append(Part("bass", int(bass_program), False, per_bar(bass_bar),
                          _level_to_db(rng, margin, 1.0, config), 64, int(rng.integers(10, 40))))

    if st.pads and rng.random() < st.pad_prob:
        pctx = make_ctx(int(rng.integers(50, 70)), center + 5)
        parts.append(Part("pad", int(_choice(rng, [p for p in st.pads if p != lead_program] or st.pads)), False,
                          per_bar(lambda bs, i: _chord_pattern("pad", pctx, bs)),
                          _level_to_db(rng, margin, -5.0, config), pan(), int(rng.integers(50, 110)),
                          int(rng.integers(20, 80))))

    if st.arps and rng.random() < st.arp_prob:
        actx = make_ctx(int(rng.integers(50, 72)), min(center + 7, 72))
        parts.append(Part("arp", int(_choice(rng, [p for p in st.arps if p != lead_program] or st.arps)), False,
                          per_bar(lambda bs, i: _chord_pattern("arpeggio", actx, bs)),
                          _level_to_db(rng, margin, -4.0, config), pan(), int(rng.integers(40, 100))))

    if st.timpani_prob and rng.random() < st.timpani_prob:
        tctx = make_ctx(int(rng.integers(70, 95)), center)

        def timpani_bar(bs: float, i: int) -> list[NoteEvent]:
            if bs < grid0 - 1e-9 or round((bs - grid0) / pbar) % 4 != 0:
                return []
            p = 40 + (tctx.chord_at(bs).root - 40) % 12
            return [NoteEvent(p, bs, bs + pmeter.beat_len, tctx.vel(), tctx.jitter())]

        parts.append(Part("timpani", 47, False, per_bar(timpani_bar),
                          _level_to_db(rng, margin, -2.0, config), 64, 60))

    if st.kits and st.drum_patterns and rng.random() < st.drum_prob:
        kit = int(_choice(rng, st.kits))
        pattern = str(_choice(rng, st.drum_patterns))
        dctx = make_ctx(0, center)
        fills = rng.random() < 0.6
        drums_in_intro = rng.random() < 0.5

        def drum_bar(bs: float, i: int) -> list[NoteEvent]:
            rel = int(round((bs - grid0) / pbar))
            if bs < grid0 - 1e-9 and not drums_in_intro:
                return []
            if in_final_bar(bs):
                if bs > final_bar + 1e-9:
                    return []
                return [NoteEvent(KICK, bs, bs + 0.2, dctx.vel(100), 0.0),
                        NoteEvent(CRASH, bs, bs + 2.0, dctx.vel(100), 0.0)]
            crash = rel >= 0 and rel % 8 == 0 and pattern not in ("light", "brush", "swing", "bossa")
            fill = fills and rel >= 0 and rel % 4 == 3
            return _drum_pattern(pattern, dctx, bs, fill, crash)

        parts.append(Part("drums", kit, True, per_bar(drum_bar),
                          _level_to_db(rng, margin, -1.0, config), 64, int(rng.integers(10, 50))))

    reverb = {
        "roomsize": round(float(rng.uniform(*st.reverb_range)), 3),
        "damping": round(float(rng.uniform(0.1, 0.6)), 3),
        "width": round(float(rng.uniform(0.5, 1.0)), 3),
        "level": round(float(rng.uniform(0.3, 0.9)), 3),
    }
    return Arrangement(
        melody_id=melody.melody_id,
        style=st.name,
        bpm=bpm,
        key_shift=shift,
        key_tonic=tonic,
        key_mode=mode,
        time_signature=melody.time_signature,
        intro_beats=grid0 if n_intro else 0.0,
        melody_offset_beats=melody_offset,
        period_beats=period,
        copies=copies,
        cut=cut,
        end_beats=end_beats,
        chords=tuple(chords),
        parts=tuple(parts),
        reverb=reverb,
        lead_margin_db=round(margin, 2),
    )


# --- Names ---------------------------------------------------------------------------------------
_ADJ = ("Velvet", "Electric", "Silver", "Midnight", "Golden", "Crimson", "Wandering", "Paper",
        "Hollow", "Neon", "Quiet", "Wild", "Copper", "Lunar", "Restless", "Amber", "Northern")
_NOUNS = ("Foxes", "Harbours", "Lanterns", "Sparrows", "Rivers", "Engines", "Pilots", "Ghosts",
          "Orchards", "Tides", "Comets", "Wolves", "Mirrors", "Anchors", "Echoes", "Ravens")
_FIRST = ("Ada", "Ben", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Iris", "Jonas",
          "Kasia", "Leo", "Mara", "Nico", "Olga", "Pablo", "Rosa", "Sami", "Tilda", "Viktor")
_LAST = ("Arden", "Bellamy", "Castell", "Dunmore", "Eklund", "Farrow", "Galloway", "Hartley",
         "Ivers", "Jansen", "Kovac", "Lindqvist", "Moreau", "Novak", "Oakes", "Pereira", "Quill",
         "Rowan", "Sato", "Thorne", "Valdez", "Whitlock")
_PLACES = ("Kingsford", "Ashby", "Brackwater", "Dunmore", "Elmstead", "Foxhall", "Glenarm",
           "Hollins", "Ivybridge", "Larkhill", "Millbrook", "Northwick", "Redcliffe", "Stonehaven")


def band_name(style: str, key: str) -> str:
    """A deterministic made-up artist name fitting `style`, drawn from a hash of `key`."""
    rng = np.random.default_rng(stable_hash(f"artist:{style}:{key}"))

    def pick(items: Sequence[str]) -> str:
        return items[int(rng.integers(len(items)))]

    person = f"{pick(_FIRST)} {pick(_LAST)}"
    templates = {
        "pop_band": (f"The {pick(_ADJ)} {pick(_NOUNS)}", f"{pick(_ADJ)} {pick(_NOUNS)}"),
        "rock": (f"{pick(_ADJ)} {pick(_NOUNS)}", f"The {pick(_NOUNS)}"),
        "folk_acoustic": (f"{person} & the {pick(_PLACES)} Ramblers", f"The {pick(_PLACES)} Fiddlers"),
        "piano_ballad": (person,),
        "strings": (f"The {pick(_PLACES)} String Ensemble", f"{pick(_LAST)} Chamber Orchestra"),
        "electronic": (f"{pick(_ADJ)}{pick(_NOUNS)[:-1]}", f"DJ {pick(_FIRST)} {pick(_ADJ)}"),
        "jazz_trio": (f"{person} Trio",),
        "brass_band": (f"{pick(_PLACES)} Silver Band", f"{pick(_PLACES)} Colliery Brass Band"),
        "organ_hymn": (f"St. {pick(_FIRST)}'s Chapel Choir", f"{pick(_PLACES)} Cathedral Singers"),
        "bossa": (f"{person} Quarteto", f"{pick(_FIRST)} {pick(_LAST)} & Bossa Azul"),
    }.get(style, (person,))
    return pick(templates)
