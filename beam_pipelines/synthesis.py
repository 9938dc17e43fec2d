"""The pipeline's thin bridge to `data_gen.synth`: one call per DoFn step, built only from the
synth package's public pieces (DeviationConfig.sample, apply_drift, register_shift,
whistle_octaves, sample_voice + render, channel.reverberate / add_noise / phone_mic, perform).

- `synthesize_query(kind, pitch, seed, deviations)`: an extracted PitchTrack (a real singer's
  contour, with its own intonation, timing and vibrato) -> a hum / whistle / tone query. The
  deviations drawn from `DeviationConfig` that make sense on a real contour are applied: tempo
  (the contour is resampled in time), transposition (+ octave fit into the performer's register),
  slow pitch drift, then reverb, background noise, phone microphone and level. Note-level errors
  (timing jitter, intonation, dropped notes) are the singer's own and are not added again.
- `degrade_real(audio, seed, deviations)`: the real performance as a query with the recording
  deviations only (reverb, noise, phone microphone, level).
- `render_performance(midi, kind, seed, deviations)`: a sung / hummed performance of a catalogue
  melody MIDI via `data_gen.synth.perform` (every deviation, note-level included), plus the map
  from its timeline to the master's (the MIDI is timed like the master).

Each returns how its timeline maps onto the one it came from (`pairs.TimeMap`) and its
transposition in semitones, which the pipeline records in every example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beam_pipelines.pairs import TimeMap
from data_gen import constants as C


@dataclass(eq=False)
class SynthQuery:
    """audio float32 [samples]; voiced bool [frames] on the query's 10 ms grid; time_map: query
    time -> source-performance time; transpose: semitones relative to the source performance."""

    audio: np.ndarray
    voiced: np.ndarray
    time_map: TimeMap
    transpose: float
    info: dict


@dataclass(eq=False)
class RenderedPerformance:
    audio: np.ndarray  # float32 [samples]
    kind: str
    time_map: TimeMap  # performance time -> master time
    transpose: float  # performance pitch - master pitch (semitones)
    info: dict
    contour: object = None  # data_gen.synth Contour: the pitch the synthesizer performed

    def known_pitch(self):
        """The performance's own pitch as a PitchTrack on its 10 ms grid (`known_pitch_track`)."""
        return known_pitch_track(self.contour, self.audio.shape[0])


def known_pitch_track(contour, n_samples: int):
    """A synthesized performance's pitch as a data_gen.pitch.PitchTrack [1 + n_samples // PITCH_HOP]:
    the contour the synthesizer was given (every human-like deviation included: intonation, drift,
    vibrato, wander; not its few cents of per-voice jitter), confidence 1 where voiced. What a
    perfect pitch tracker would report, without running one (`earworm datagen --rendered-pitch
    known`); frames past the contour's end are unvoiced."""
    from data_gen.pitch import PitchTrack, num_pitch_frames

    n = num_pitch_frames(n_samples)
    f0 = np.asarray(contour.filled_f0(), np.float64)[:n]
    voiced = np.asarray(contour.voiced, bool)[:n]
    if f0.shape[0] < n:
        pad = n - f0.shape[0]
        f0 = np.concatenate([f0, np.full(pad, f0[-1] if f0.size else 100.0)])
        voiced = np.concatenate([voiced, np.zeros(pad, bool)])
    return PitchTrack(f0.astype(np.float32), voiced.astype(np.float32), voiced)


MIN_RUN_FRAMES = 5
"""Voiced runs shorter than this (50 ms) in an extracted track are tracker blips, not notes."""


def contour_of(pitch) -> object:
    """PitchTrack -> data_gen.synth Contour on the same 10 ms grid (blips removed)."""
    from data_gen.synth import Contour

    voiced = np.asarray(pitch.voiced, bool).copy()
    edges = np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]]))
    for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if e - s < MIN_RUN_FRAMES:
            voiced[s:e] = False
    return Contour(np.asarray(pitch.f0_hz, np.float32), voiced)


MIN_NOTE_FRAMES = 4
"""Note boundaries closer than this (40 ms) to another boundary are not note changes but
glides/tracker wobble; `with_onsets` drops them (the synthesizers' envelopes need >= 2 frames)."""


def with_onsets(contour, jump_semitones: float = 0.7):
    """The contour with explicit note onsets: voiced-run starts plus pitch jumps larger than
    `jump_semitones`, keeping only boundaries >= MIN_NOTE_FRAMES apart (and from run ends)."""
    from data_gen.synth import Contour

    v = contour.voiced
    edges = np.diff(np.concatenate([[0], v.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    midi = contour.midi()
    jumps = np.flatnonzero(np.abs(np.diff(midi)) > jump_semitones) + 1
    onsets: list[int] = []
    for s, e in zip(starts, ends):
        onsets.append(int(s))
        last = int(s)
        for j in jumps[(jumps > s) & (jumps < e)]:
            if j - last >= MIN_NOTE_FRAMES and e - j >= MIN_NOTE_FRAMES:
                onsets.append(int(j))
                last = int(j)
    return Contour(contour.f0_hz, contour.voiced, np.asarray(onsets, np.int64))


def stretch_contour(contour, tempo_factor: float):
    """The contour performed `tempo_factor` times faster (>1: shorter). Query frame j samples
    the source at frame j * tempo_factor (f0 interpolated in log-frequency, voicing nearest)."""
    from data_gen.synth import Contour

    if abs(tempo_factor - 1.0) < 1e-9:
        return contour
    n = max(1, int(round(contour.n_frames / tempo_factor)))
    pos = np.arange(n) * tempo_factor
    src = np.arange(contour.n_frames)
    log_f0 = np.interp(pos, src, np.log(contour.filled_f0()))
    voiced = contour.voiced[np.clip(np.rint(pos).astype(np.int64), 0, contour.n_frames - 1)]
    return Contour(np.exp(log_f0).astype(np.float32), voiced)


def _register_fit(contour, kind: str, register: str) -> int:
    """Octaves (in semitones) that move the contour's median into the performer's register."""
    from data_gen.synth.contour import note_segments
    from data_gen.synth.deviations import REGISTERS_HZ, register_shift

    segments = note_segments(contour)
    if not segments:
        return 0
    midi = contour.midi()
    notes = [(s / C.PITCH_FRAME_RATE, e / C.PITCH_FRAME_RATE, float(np.nanmedian(midi[s:e])))
             for s, e in segments]
    bounds = REGISTERS_HZ[kind].get(register) or next(iter(REGISTERS_HZ[kind].values()))
    return register_shift(notes, *bounds)


def _channel(audio: np.ndarray, d, rng: np.random.Generator) -> np.ndarray:
    """Room, background noise, phone microphone and final level, exactly as `perform` applies them."""
    from data_gen.synth.deviations import apply_channel

    return apply_channel(audio, d, rng).astype(np.float32)


def synthesize_query(kind: str, pitch, seed: int, deviations) -> SynthQuery:
    """kind: hum | whistle | tone (| sung); pitch: data_gen.pitch.PitchTrack of the source
    performance; deviations: a data_gen.synth.DeviationConfig, or None for a clean rendition."""
    from data_gen.synth import SynthError, render, sample_voice, synthesize
    from data_gen.synth.deviations import apply_drift
    from data_gen.synth.whistle import whistle_octaves

    contour = with_onsets(contour_of(pitch))
    if not contour.voiced.any():
        raise SynthError("the pitch track has no voiced run of at least 50 ms")
    if deviations is None:
        shift = whistle_octaves(contour) * 12 if kind == "whistle" else 0
        audio = synthesize(kind, contour.transpose(shift) if shift else contour, seed)
        return SynthQuery(np.asarray(audio, np.float32), contour.voiced, TimeMap(), float(shift),
                          {"kind": kind, "seed": seed, "deviations": False})
    rng = np.random.default_rng(seed)
    d = deviations.sample(rng)
    contour = stretch_contour(contour, d.tempo_factor)
    shift = float(d.transpose_semitones)
    contour = contour.transpose(shift)
    if d.fit_register:
        register = d.register if kind in ("hum", "sung") else "any"
        octave = _register_fit(contour, kind, register)
        contour = contour.transpose(octave)
        shift += octave
    contour = apply_drift(contour, d.drift_cents, rng)
    if kind == "whistle":
        octave = 12 * whistle_octaves(contour)
        contour = contour.transpose(octave) if octave else contour
        shift += octave
    voice = sample_voice(kind, rng)
    contour = with_onsets(contour)
    audio = _channel(render(kind, contour, voice, rng), d, rng)
    info = {"kind": kind, "seed": seed, "tempo_factor": d.tempo_factor, "transpose": shift,
            "drift_cents": d.drift_cents, "noise": d.noise_kind, "snr_db": d.snr_db,
            "reverb_rt60_s": d.reverb_rt60_s, "phone_mic": d.mic is not None}
    return SynthQuery(audio, contour.voiced, TimeMap(0.0, d.tempo_factor), shift, info)


def degrade_real(audio: np.ndarray, seed: int, deviations) -> np.ndarray:
    """A real recording with the recording-side deviations (None: unchanged)."""
    if deviations is None:
        return audio
    rng = np.random.default_rng(seed)
    return _channel(audio, deviations.sample(rng), rng)


def render_performance(midi: str, kind: str, seed: int, deviations) -> RenderedPerformance:
    """A `kind` performance of the melody MIDI (timed like the master). The performance's time t
    maps to master time start_s + (t - lead_s) * tempo_factor (exact up to the timing jitter)."""
    from data_gen.synth import DeviationConfig, notes_from_midi, perform

    notes = notes_from_midi(midi)
    config = deviations if deviations is not None else DeviationConfig.exact()
    perf = perform(notes, kind, seed, config)
    info = perf.info
    tf = float(info["tempo_factor"])
    tmap = TimeMap(float(info["start_s"]) - float(info["lead_s"]) * tf, tf)
    return RenderedPerformance(perf.audio, kind, tmap, float(info["total_transpose_semitones"]), info,
                               perf.contour)
