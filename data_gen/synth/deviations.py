"""How a person actually performs a tune they remember, and `perform`, which renders it.

Nobody hums a melody the way the score has it: they start somewhere in the song, in their own
key and register, at their own tempo, with timing and intonation errors, a slow pitch drift,
maybe vibrato, a skipped or an extra note; then the room, the background and the phone have
their say. `DeviationConfig` holds the ranges of all of these (frozen, with sensible defaults);
`DeviationConfig.sample(seed)` draws one concrete `Deviations`; `perform` applies them:

  note level  (before the contour): crop window, dropped/added notes, tempo, timing jitter,
              intonation error per note, transposition and register;
  frame level (on the contour):     slow drift, vibrato, whistle octave;
  audio level (after synthesis):    reverb, background noise at an SNR, phone microphone, level.

`strength` scales every *error* (timing, intonation, drift, vibrato depth, note drops/additions)
and the probabilities of reverb, noise and the phone microphone; 0 gives a clean rendition.
Transposition and tempo are style, not error: they follow their ranges only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_gen import constants as C
from data_gen.synth import channel, dsp
from data_gen.synth.contour import Contour, Note, SynthError, contour_from_notes, monophonic, note_segments
from data_gen.synth.dispatch import KINDS, render, sample_voice
from data_gen.synth.whistle import whistle_octaves

REGISTERS_HZ: dict[str, dict[str, tuple[float, float]]] = {
    # Where the median of a performance may lie, per kind and voice register.
    "hum": {"low": (95.0, 210.0), "high": (180.0, 400.0)},
    "sung": {"low": (95.0, 210.0), "high": (180.0, 400.0)},
    "tone": {"any": (130.0, 800.0)},
    "whistle": {"any": (100.0, 2500.0)},  # the whistle synthesizer moves it up by octaves itself
}
FORMANT_SCALE_BY_REGISTER = {"low": (0.92, 1.06), "high": (1.06, 1.25)}
MIN_NOTE_S = 0.06


@dataclass(frozen=True)
class DeviationConfig:
    """Ranges of every deviation; `sample` draws one performance's values."""

    strength: float = 1.0
    # Length and window.
    min_seconds: float = 5.0
    max_seconds: float = 10.0
    crop: bool = True  # start somewhere in the song (False: perform all of it)
    lead_range_s: tuple[float, float] = (0.1, 0.6)  # silence before the first note
    # Style.
    transpose_range: tuple[float, float] = (-12.0, 12.0)  # semitones, continuous (any key)
    fit_register: bool = True  # then move by octaves into the performer's register
    tempo_range: tuple[float, float] = (0.7, 1.4)  # >1 = faster than the original
    gap_range_s: tuple[float, float] = (0.02, 0.08)  # articulation gap between notes
    legato_range: tuple[float, float] = (0.0, 0.7)  # probability that a boundary is sung legato
    glide_range_s: tuple[float, float] = (0.03, 0.1)  # portamento length at legato boundaries
    # Errors (scaled by strength).
    timing_jitter_s: float = 0.035  # max sd of onset jitter
    duration_jitter: float = 0.15  # max sd of log duration change
    intonation_cents: float = 40.0  # max sd of the per-note pitch error
    drift_cents: float = 60.0  # max |slow pitch drift| over the performance
    vibrato_prob: float = 0.4
    vibrato_rate_hz: tuple[float, float] = (4.5, 7.0)
    vibrato_depth_cents: tuple[float, float] = (15.0, 60.0)  # peak deviation
    vibrato_delay_s: tuple[float, float] = (0.1, 0.3)  # vibrato starts this long into a note
    # Nobody holds a hummed note still: a slow random wander of the pitch (~1-4 Hz) inside every
    # note. Measured (`earworm hum-stats`): real qbh_demo hums wobble 13.2 cents (median sd inside
    # held notes) where the synthesizer's fast jitter alone gave 7.5.
    wander_cents: tuple[float, float] = (10.0, 20.0)  # sd, scaled by strength
    wander_smooth_s: float = 0.04  # sd of the Gaussian smoothing of the wander (sets its speed)
    drop_note_prob: float = 0.05  # per note
    add_note_prob: float = 0.05  # per note
    # Channel (probabilities scaled by strength).
    reverb_prob: float = 0.3
    rt60_range_s: tuple[float, float] = (0.2, 0.7)
    drr_range_db: tuple[float, float] = (0.0, 12.0)
    noise_prob: float = 0.8
    noise_kinds: tuple[str, ...] = channel.NOISE_KINDS
    snr_range_db: tuple[float, float] = (5.0, 35.0)
    mic_prob: float = 0.8
    peak_range_db: tuple[float, float] = (-18.0, -1.0)  # final peak level, dBFS

    def __post_init__(self) -> None:
        if self.strength < 0:
            raise SynthError(f"strength must be >= 0, got {self.strength}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise SynthError(f"need 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")
        for name in ("lead_range_s", "transpose_range", "tempo_range", "gap_range_s", "legato_range",
                     "glide_range_s", "vibrato_rate_hz", "vibrato_depth_cents", "vibrato_delay_s", "wander_cents",
                     "rt60_range_s", "drr_range_db", "snr_range_db", "peak_range_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise SynthError(f"{name}: low end {lo} is above high end {hi}")
        if self.tempo_range[0] <= 0:
            raise SynthError(f"tempo_range must be positive, got {self.tempo_range}")
        unknown = set(self.noise_kinds) - set(channel.NOISE_KINDS)
        if unknown:
            raise SynthError(f"unknown noise kind(s) {sorted(unknown)}; known: {channel.NOISE_KINDS}")

    @classmethod
    def exact(cls, **overrides: Any) -> DeviationConfig:
        """A clean rendition: original key and tempo, no errors, no channel, whole song."""
        base = dict(
            strength=0.0, crop=False, lead_range_s=(0.2, 0.2), transpose_range=(0.0, 0.0),
            fit_register=False, tempo_range=(1.0, 1.0), gap_range_s=(0.04, 0.04),
            legato_range=(0.0, 0.0), peak_range_db=(-6.0, -6.0),
        )
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def sample(self, seed: int | np.random.Generator) -> Deviations:
        """Draw one performance's deviations (deterministic for a seed)."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        s = self.strength

        def uni(r: tuple[float, float]) -> float:
            return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])

        def chance(p: float) -> bool:
            return bool(rng.random() < min(1.0, p * s))

        noise = chance(self.noise_prob) and bool(self.noise_kinds)
        reverb = chance(self.reverb_prob)
        vibrato = chance(self.vibrato_prob)
        mic = chance(self.mic_prob)
        return Deviations(
            duration_s=uni((self.min_seconds, self.max_seconds)),
            lead_s=uni(self.lead_range_s),
            transpose_semitones=uni(self.transpose_range),
            register=str(rng.choice(["low", "high"])),
            tempo_factor=float(np.exp(uni((np.log(self.tempo_range[0]), np.log(self.tempo_range[1]))))),
            gap_s=uni(self.gap_range_s),
            legato_prob=uni(self.legato_range),
            glide_s=uni(self.glide_range_s),
            timing_jitter_s=s * uni((0.0, self.timing_jitter_s)),
            duration_jitter=s * uni((0.0, self.duration_jitter)),
            intonation_cents=s * uni((0.0, self.intonation_cents)),
            drift_cents=s * uni((-self.drift_cents, self.drift_cents)),
            vibrato_rate_hz=uni(self.vibrato_rate_hz) if vibrato else 0.0,
            vibrato_depth_cents=s * uni(self.vibrato_depth_cents) if vibrato else 0.0,
            vibrato_delay_s=uni(self.vibrato_delay_s),
            drop_note_prob=min(1.0, s * self.drop_note_prob),
            add_note_prob=min(1.0, s * self.add_note_prob),
            reverb_rt60_s=uni(self.rt60_range_s) if reverb else 0.0,
            reverb_drr_db=uni(self.drr_range_db),
            noise_kind=str(rng.choice(list(self.noise_kinds))) if noise else "",
            snr_db=uni(self.snr_range_db),
            mic=channel.PhoneMic.sample(rng) if mic else None,
            peak_db=uni(self.peak_range_db),
            crop=self.crop,
            fit_register=self.fit_register,
        )


@dataclass(frozen=True)
class Deviations:
    """One performance's concrete deviations (drawn by `DeviationConfig.sample`)."""

    duration_s: float
    lead_s: float
    transpose_semitones: float
    register: str
    tempo_factor: float
    gap_s: float
    legato_prob: float
    glide_s: float
    timing_jitter_s: float
    duration_jitter: float
    intonation_cents: float
    drift_cents: float
    vibrato_rate_hz: float  # 0: no vibrato
    vibrato_depth_cents: float
    vibrato_delay_s: float
    drop_note_prob: float
    add_note_prob: float
    reverb_rt60_s: float  # 0: no reverb
    reverb_drr_db: float
    noise_kind: str  # "": no noise
    snr_db: float
    mic: channel.PhoneMic | None
    peak_db: float
    crop: bool = True
    fit_register: bool = True
    wander_cents: float = 0.0
    wander_smooth_s: float = 0.06

    def as_info(self) -> dict[str, Any]:
        info = dataclasses.asdict(self)
        info["mic"] = dataclasses.asdict(self.mic) if self.mic is not None else None
        return info


@dataclass(frozen=True, eq=False)
class Performance:
    """A rendered query.

    audio:      [samples] float32 mono at SAMPLE_RATE, within [-1, 1].
    contour:    the pitch performed (after every deviation, whistle octave included; before the
                synthesizer's own micro-variation: jitter, a whistle's portamento smoothing).
    notes_used: the performed notes in output seconds (after every note-level deviation).
    info:       every sampled parameter (JSON-serialisable), including `start_s` / `end_s` (the
                window in the source melody's seconds), `tempo_factor`, `source_offset_s` (so that
                source_time ~= source_offset_s + query_time * tempo_factor, up to timing jitter)
                and `total_transpose_semitones` (performed pitch - source pitch, up to
                intonation errors and drift).
    """

    audio: np.ndarray
    contour: Contour
    notes_used: list[Note]
    info: dict[str, Any] = field(default_factory=dict)


# --- note level ----------------------------------------------------------------------------------


def choose_window(notes: Sequence[Note], source_len_s: float, rng: np.random.Generator, tries: int = 8) -> tuple[float, float]:
    """(start_s, end_s) of a window of `source_len_s` that starts on a note onset at a random
    place in the song, preferring windows that are mostly notes rather than rests."""
    first, last = notes[0][0], max(n[1] for n in notes)
    if last - first <= source_len_s:
        return first, first + source_len_s
    onsets = np.array([n[0] for n in notes])
    best, best_cover = first, -1.0
    for _ in range(tries):
        t = rng.uniform(first, last - source_len_s)
        start = float(onsets[np.searchsorted(onsets, t)]) if t <= onsets[-1] else float(onsets[-1])
        end = start + source_len_s
        cover = sum(max(0.0, min(b, end) - max(a, start)) for a, b, _ in notes) / source_len_s
        if cover > best_cover:
            best, best_cover = start, cover
        if cover >= 0.6:
            break
    return best, best + source_len_s


def drop_and_add_notes(notes: list[Note], drop_prob: float, add_prob: float, rng: np.random.Generator) -> tuple[list[Note], int, int]:
    """Forget some notes (never the first, never below two notes) and add some: a long note may
    be split into a repeated note or into the note and a neighbour a step away."""
    dropped = added = 0
    kept: list[Note] = []
    for i, note in enumerate(notes):
        if i > 0 and len(notes) - dropped > 2 and rng.random() < drop_prob:
            dropped += 1
            continue
        kept.append(note)
    out: list[Note] = []
    for onset, offset, pitch in kept:
        if offset - onset >= 0.24 and rng.random() < add_prob:
            mid = onset + (offset - onset) * rng.uniform(0.4, 0.6)
            step = 0.0 if rng.random() < 0.4 else float(rng.choice([-2.0, -1.0, 1.0, 2.0]))
            out += [(onset, mid, pitch), (mid, offset, pitch + step)]
            added += 1
        else:
            out.append((onset, offset, pitch))
    return out, dropped, added


def jitter_timing(notes: list[Note], onset_sd: float, log_duration_sd: float, rng: np.random.Generator) -> list[Note]:
    """Random onset shifts and duration changes, keeping the notes in order and non-overlapping."""
    out: list[Note] = []
    for onset, offset, pitch in notes:
        new_onset = onset + rng.normal(0.0, onset_sd) if onset_sd > 0 else onset
        duration = (offset - onset) * float(np.exp(rng.normal(0.0, log_duration_sd))) if log_duration_sd > 0 else offset - onset
        if out:
            new_onset = max(new_onset, out[-1][0] + MIN_NOTE_S)
        new_onset = max(new_onset, 0.0)
        out.append((new_onset, new_onset + max(duration, MIN_NOTE_S), pitch))
    return monophonic(out)


def register_shift(notes: Sequence[Note], low_hz: float, high_hz: float) -> int:
    """Semitones (a multiple of 12) that move the duration-weighted median pitch into
    [low_hz, high_hz] (0 when it is already there)."""
    pitches = np.array([n[2] for n in notes])
    weights = np.array([n[1] - n[0] for n in notes])
    order = np.argsort(pitches)
    cum = np.cumsum(weights[order])
    median = float(pitches[order][np.searchsorted(cum, cum[-1] / 2.0)])
    low, high = 69 + 12 * np.log2(low_hz / 440.0), 69 + 12 * np.log2(high_hz / 440.0)
    shift = 0
    while median + shift > high:
        shift -= 12
    while median + shift < low:
        shift += 12
    return shift


# --- frame level ---------------------------------------------------------------------------------


def apply_drift(contour: Contour, total_cents: float, rng: np.random.Generator) -> Contour:
    """A slow pitch drift: a linear trend reaching `total_cents` at the end plus a gentle random
    wander (a quarter of its size), on voiced frames."""
    if total_cents == 0 or contour.n_frames < 2:
        return contour
    n = contour.n_frames
    trend = np.linspace(0.0, total_cents, n)
    wander = 0.25 * abs(total_cents) * dsp.smooth_noise(n, rng, 100.0)
    return contour.with_f0(contour.f0_hz * 2.0 ** ((trend + wander) / 1200.0))


def apply_wander(contour: Contour, cents: float, smooth_s: float, rng: np.random.Generator) -> Contour:
    """A slow random wander of the pitch (sd `cents`, smoothed over `smooth_s`): how a held note
    moves in a real hum, unlike the synthesizers' fast jitter."""
    if cents <= 0 or contour.n_frames < 2:
        return contour
    wander = cents * dsp.smooth_noise(contour.n_frames, rng, smooth_s * C.PITCH_FRAME_RATE)
    return contour.with_f0(contour.f0_hz * 2.0 ** (wander / 1200.0))


def apply_vibrato(contour: Contour, rate_hz: float, depth_cents: float, delay_s: float, rng: np.random.Generator) -> Contour:
    """Sinusoidal vibrato (peak `depth_cents`) on every note longer than `delay_s` + 0.1 s,
    fading in after `delay_s`; the rate wobbles a little from note to note."""
    if rate_hz <= 0 or depth_cents <= 0:
        return contour
    cents = np.zeros(contour.n_frames)
    delay = int(round(delay_s * C.PITCH_FRAME_RATE))
    fade = int(0.15 * C.PITCH_FRAME_RATE)
    for s, e in note_segments(contour):
        if e - s <= delay + 10:
            continue
        t = np.arange(e - s - delay) / C.PITCH_FRAME_RATE
        rate = rate_hz * rng.uniform(0.92, 1.08)
        ramp = np.clip(np.arange(e - s - delay) / fade, 0.0, 1.0)
        cents[s + delay : e] = depth_cents * ramp * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    return contour.with_f0(contour.f0_hz * 2.0 ** (cents / 1200.0))


# --- the whole performance -----------------------------------------------------------------------


def perform(notes: Sequence[Note], kind: str, seed: int, config: DeviationConfig | None = None) -> Performance:
    """Perform `notes` (source seconds, e.g. from `notes_from_midi`) as a query of `kind` with
    deviations drawn from `config` (default `DeviationConfig()`); deterministic for a seed."""
    if kind not in KINDS:
        raise SynthError(f"unknown query kind {kind!r}; known: {', '.join(KINDS)}")
    config = config or DeviationConfig()
    source = monophonic(notes)
    if not source:
        raise SynthError("no notes to perform")
    rng = np.random.default_rng(seed)
    d = config.sample(rng)
    # The pitch wander has its own random stream, so that every other draw of a seed stays as it was.
    wander_rng = np.random.default_rng([abs(int(seed)), 1])
    d = dataclasses.replace(d, wander_cents=config.strength * float(wander_rng.uniform(*config.wander_cents)),
                            wander_smooth_s=config.wander_smooth_s)

    # Window in the source.
    if d.crop:
        duration = d.duration_s
        source_len = max(duration - d.lead_s, 0.5) * d.tempo_factor
        start, end = choose_window(source, source_len, rng)
        last = max(n[1] for n in source)
        if end > last:  # the song is shorter than the query: stop soon after its last note
            duration = min(duration, d.lead_s + (last - start) / d.tempo_factor + 0.3)
    else:
        start, end = source[0][0], max(n[1] for n in source)
        duration = d.lead_s + (end - start) / d.tempo_factor + 0.3
    window = [(max(a, start), min(b, end), p) for a, b, p in source if start <= a < end]
    if not window:
        raise SynthError(f"no notes between {start:.2f} s and {end:.2f} s")

    # Note-level deviations.
    performed, dropped, added = drop_and_add_notes(window, d.drop_note_prob, d.add_note_prob, rng)
    performed = [(d.lead_s + (a - start) / d.tempo_factor, d.lead_s + (b - start) / d.tempo_factor, p) for a, b, p in performed]
    performed = jitter_timing(performed, d.timing_jitter_s, d.duration_jitter, rng)
    if d.intonation_cents > 0:
        performed = [(a, b, p + rng.normal(0.0, d.intonation_cents) / 100.0) for a, b, p in performed]
    performed = [(a, b, p + d.transpose_semitones) for a, b, p in performed]
    register = d.register if kind in ("hum", "sung") else "any"
    octave_fit = register_shift(performed, *REGISTERS_HZ[kind][register]) if d.fit_register else 0
    performed = [(a, b, p + octave_fit) for a, b, p in performed]
    end_cut = duration - 0.05
    performed = [(a, min(b, end_cut), p) for a, b, p in performed if a < end_cut - MIN_NOTE_S]
    if not performed:
        raise SynthError("every note fell outside the performance")

    # Contour and frame-level deviations.
    legato = [bool(rng.random() < d.legato_prob) for _ in range(len(performed) - 1)]
    contour = contour_from_notes(performed, gap_s=d.gap_s, glide_s=d.glide_s, legato=legato, end_s=duration)
    contour, audio, voice, whistle_shift = _sing(kind, contour, d, rng, wander_rng)

    info = d.as_info()
    info["duration_target_s"] = info.pop("duration_s")
    info.update(
        kind=kind,
        seed=int(seed),
        start_s=round(float(start), 4),
        end_s=round(float(end), 4),
        # source_time ~= source_offset_s + query_time * tempo_factor (before timing jitter)
        source_offset_s=round(float(start - d.lead_s * d.tempo_factor), 4),
        duration_s=round(audio.shape[0] / C.SAMPLE_RATE, 4),
        n_source_notes=len(window),
        n_notes=len(performed),
        notes_dropped=dropped,
        notes_added=added,
        octave_fit_semitones=octave_fit,
        whistle_octaves=whistle_shift,
        total_transpose_semitones=round(d.transpose_semitones + octave_fit + 12 * whistle_shift, 4),
        voice={"type": type(voice).__name__, **dataclasses.asdict(voice)},
    )
    return Performance(audio=audio, contour=contour, notes_used=performed, info=info)


def _sing(kind: str, contour: Contour, d: Deviations, rng: np.random.Generator,
          wander_rng: np.random.Generator) -> tuple[Contour, np.ndarray, Any, int]:
    """Frame-level deviations, synthesis and channel: (sung contour, audio, voice, whistle octaves)."""
    contour = apply_drift(contour, d.drift_cents, rng)
    contour = apply_vibrato(contour, d.vibrato_rate_hz, d.vibrato_depth_cents, d.vibrato_delay_s, rng)
    contour = apply_wander(contour, d.wander_cents, d.wander_smooth_s, wander_rng)
    whistle_shift = whistle_octaves(contour) if kind == "whistle" else 0
    if whistle_shift:
        contour = contour.transpose(12 * whistle_shift)
    voice = sample_voice(kind, rng)
    if kind in ("hum", "sung"):  # a low voice has a longer vocal tract
        lo, hi = FORMANT_SCALE_BY_REGISTER[d.register]
        voice = dataclasses.replace(voice, formant_scale=float(rng.uniform(lo, hi)))
    audio = apply_channel(render(kind, contour, voice, rng), d, rng)
    return contour, audio, voice, whistle_shift


def apply_channel(audio: np.ndarray, d: Deviations, rng: np.random.Generator) -> np.ndarray:
    """Reverb, background noise, phone microphone and final level of `d` on `audio` [samples];
    returns float32 within [-1, 1]."""
    audio = np.asarray(audio, dtype=np.float64)
    if d.reverb_rt60_s > 0:
        audio = channel.reverberate(audio, d.reverb_rt60_s, d.reverb_drr_db, rng)
    if d.noise_kind:
        audio = channel.add_noise(audio, d.noise_kind, d.snr_db, rng)
    if d.mic is not None:
        audio = channel.phone_mic(audio, d.mic)
    return np.clip(dsp.normalize_peak(audio, 10.0 ** (d.peak_db / 20.0)), -1.0, 1.0)


CHANNEL_FIELDS = ("reverb_rt60_s", "reverb_drr_db", "noise_kind", "snr_db", "mic", "peak_db")


def degrade(audio: np.ndarray, seed: int, config: DeviationConfig | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Only the recording side of a performance (reverb, noise, phone mic, level) on a real
    recording [samples]: returns (float32 audio within [-1, 1], the channel parameters)."""
    rng = np.random.default_rng(seed)
    d = (config or DeviationConfig()).sample(rng)
    info = {k: v for k, v in d.as_info().items() if k in CHANNEL_FIELDS}
    return apply_channel(audio, d, rng), info


def stretch_contour(contour: Contour, tempo_factor: float) -> Contour:
    """The contour performed `tempo_factor` times faster ([frames] -> [frames / tempo_factor]):
    voicing by nearest frame, f0 interpolated in log-frequency, note onsets moved along."""
    if tempo_factor == 1.0:
        return contour
    n = max(1, int(round(contour.n_frames / tempo_factor)))
    pos = np.arange(n) * tempo_factor
    nearest = np.minimum(np.round(pos).astype(np.int64), contour.n_frames - 1)
    voiced = contour.voiced[nearest]
    f0 = np.exp(np.interp(pos, np.arange(contour.n_frames), np.log(contour.filled_f0())))
    onsets = None if contour.onsets is None else np.round(contour.onsets / tempo_factor).astype(np.int64)
    return Contour(np.where(voiced, f0, 0.0), voiced, onsets)


def perform_contour(contour: Contour, kind: str, seed: int, config: DeviationConfig | None = None) -> Performance:
    """Perform a given pitch contour (e.g. one extracted from a real singer, already cut to the
    wanted window) as a query of `kind`: tempo, transposition and register, a per-note
    intonation error, drift, vibrato, synthesis and channel. Timing jitter, note drops/additions
    and cropping need notes and are not applied (their fields read 0 in `info`).
    `info["tempo_factor"]`: source_time = query_time * tempo_factor."""
    if kind not in KINDS:
        raise SynthError(f"unknown query kind {kind!r}; known: {', '.join(KINDS)}")
    if not contour.voiced.any():
        raise SynthError("the contour has no voiced frames")
    rng = np.random.default_rng(seed)
    d = (config or DeviationConfig()).sample(rng)
    d = dataclasses.replace(d, timing_jitter_s=0.0, duration_jitter=0.0, drop_note_prob=0.0,
                            add_note_prob=0.0, crop=False, lead_s=0.0)
    c = stretch_contour(contour, d.tempo_factor)
    cents = np.zeros(c.n_frames)
    if d.intonation_cents > 0:
        for s, e in note_segments(c):
            cents[s:e] = rng.normal(0.0, d.intonation_cents)
    c = c.with_f0(c.f0_hz * 2.0 ** ((cents + 100.0 * d.transpose_semitones) / 1200.0))
    register = d.register if kind in ("hum", "sung") else "any"
    octave_fit = 0
    if d.fit_register:
        median_midi = float(np.median(c.midi()[c.voiced]))
        octave_fit = register_shift([(0.0, 1.0, median_midi)], *REGISTERS_HZ[kind][register])
        c = c.transpose(octave_fit)
    # a real pitch contour keeps its own wobble: d.wander_cents is 0, apply_wander draws nothing
    c, audio, voice, whistle_shift = _sing(kind, c, d, rng, rng)
    info = d.as_info()
    info["duration_target_s"] = info.pop("duration_s")
    info.update(
        kind=kind,
        seed=int(seed),
        start_s=0.0,
        end_s=round(contour.duration_s, 4),
        source_offset_s=0.0,
        duration_s=round(audio.shape[0] / C.SAMPLE_RATE, 4),
        octave_fit_semitones=octave_fit,
        whistle_octaves=whistle_shift,
        total_transpose_semitones=round(d.transpose_semitones + octave_fit + 12 * whistle_shift, 4),
        voice={"type": type(voice).__name__, **dataclasses.asdict(voice)},
    )
    return Performance(audio=audio, contour=c, notes_used=[], info=info)
