"""MIR-1K melodies played by an instrument: lead tracks rendered from the ground-truth pitch labels.

MIR-1K gives each clip's singing voice, its accompaniment and the voice's pitch (`pitch/<clip>.pv`,
MIDI semitones per 20 ms frame, 0 = unvoiced). A training master made of voice + accompaniment
contains the query itself; a real studio master of a hummed song carries the melody on the singer's
voice *recorded separately*, or on an instrument. `render_mir1k_leads` writes, per clip, a
General-MIDI instrument (FluidSynth) playing the notes segmented from the pitch labels, sample-aligned
with the clip and level-matched to its accompaniment, so that `lead + accompaniment` is a master
that holds the melody but not the query's voice (`earworm datagen --mir1k --mir1k-leads DIR`).

The `mir1k-cross` benchmark builds its (test-split, time-stretched) masters from the same functions.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_gen import constants as C

log = logging.getLogger(__name__)

PV_HOP_S = 0.02
PV_FIRST_CENTRE_S = 0.02
LEADS_CSV = "leads.csv"
LEAD_SUFFIX = ".lead.ogg"
TRAINING_LEAD_PROGRAMS = (0, 4, 11, 16, 22, 24, 26, 40, 41, 48, 52, 56, 57, 60, 65, 66, 68, 71, 73,
                          74, 80, 81, 85)
"""GM programs drawn for training leads: pianos, vibes, organ, harmonica, guitars, strings, choir
aahs, brass, reeds, flutes, synth leads."""


class LeadError(ValueError):
    """A MIR-1K folder or pitch-label file is missing or malformed."""


@dataclass(frozen=True)
class NoteSegmentation:
    hysteresis: float = 0.75
    """Semitones the pitch must leave the current note by to start a new one (vibrato stays one note)."""
    min_note_s: float = 0.08


@dataclass(frozen=True)
class LeadConfig:
    seed: int = 0
    programs: tuple[int, ...] = TRAINING_LEAD_PROGRAMS
    lead_db_min: float = -4.0
    lead_db_max: float = 2.0
    """Lead level relative to the clip's accompaniment (RMS), drawn per clip."""
    segmentation: NoteSegmentation = NoteSegmentation()
    soundfont: str | None = None
    """GM soundfont; None: data_gen.render.find_soundfont() ($EARWORM_SOUNDFONT, the system one)."""


def read_pitch_labels(path: Path) -> np.ndarray:
    """pitch/<clip>.pv -> float64 [frames] MIDI semitones (0 = unvoiced)."""
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except (OSError, ValueError) as e:
        raise LeadError(f"{path}: cannot read pitch labels ({e})") from e
    if values.ndim != 1:
        raise LeadError(f"{path}: expected one value per line")
    return values


def notes_from_pitch_labels(semitones: np.ndarray, seg: NoteSegmentation = NoteSegmentation()
                            ) -> list[tuple[float, float, int]]:
    """Frame-wise MIDI pitch (20 ms hop, 0 = unvoiced) -> notes [(start_s, end_s, pitch)].

    A note continues while the pitch stays within `seg.hysteresis` semitones of it (so vibrato and
    glides do not shatter it); its pitch is the rounded median of its frames; notes shorter than
    `seg.min_note_s` are dropped.
    """
    notes: list[tuple[float, float, int]] = []
    start = None
    frames: list[float] = []

    def close(end_index: int) -> None:
        if start is None or not frames:
            return
        t0 = PV_FIRST_CENTRE_S + start * PV_HOP_S - PV_HOP_S / 2
        t1 = PV_FIRST_CENTRE_S + end_index * PV_HOP_S + PV_HOP_S / 2
        if t1 - t0 >= seg.min_note_s:
            notes.append((max(0.0, t0), t1, int(np.rint(np.median(frames)))))

    current = None
    for i, v in enumerate(np.asarray(semitones, np.float64)):
        if v <= 0:
            close(i - 1)
            start, frames, current = None, [], None
            continue
        if current is None or abs(v - current) > seg.hysteresis:
            close(i - 1)
            start, frames = i, []
            current = v
        frames.append(v)
        current = float(np.median(frames))
    close(len(semitones) - 1)
    return notes


def render_lead(notes: Sequence[tuple[float, float, int]], program: int, seconds: float,
                soundfont: str | None = None) -> np.ndarray:
    """Notes -> float32 [seconds * SAMPLE_RATE] of a GM instrument (FluidSynth)."""
    import pretty_midi

    from data_gen.render import find_soundfont

    n = int(round(seconds * C.SAMPLE_RATE))
    if not notes:
        return np.zeros(n, np.float32)
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=int(program), name="lead")
    for t0, t1, p in notes:
        inst.notes.append(pretty_midi.Note(velocity=100, pitch=int(p), start=float(t0), end=float(t1)))
    pm.instruments.append(inst)
    audio = pm.fluidsynth(fs=C.SAMPLE_RATE, synthesizer=str(soundfont or find_soundfont())).astype(np.float32)
    return np.pad(audio, (0, max(0, n - audio.size)))[:n]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def lead_path(leads_dir: str | Path, clip_id: str) -> Path:
    return Path(leads_dir) / f"{clip_id}{LEAD_SUFFIX}"


def _clip_rng(seed: int, clip_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"mir1k-lead\x1f{seed}\x1f{clip_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def render_clip_lead(source: Path, clip_id: str, config: LeadConfig = LeadConfig()) -> tuple[np.ndarray, dict]:
    """One clip's lead track, sample-aligned with (and as long as) its accompaniment."""
    from data_gen.audio import load_audio

    accomp = load_audio(source / "audio" / f"{clip_id}.accompaniment.ogg", reject_silence=False)
    notes = notes_from_pitch_labels(read_pitch_labels(source / "pitch" / f"{clip_id}.pv"), config.segmentation)
    seconds = accomp.size / C.SAMPLE_RATE
    notes = [(t0, min(t1, seconds), p) for t0, t1, p in notes if t0 < seconds]
    if not notes:
        raise LeadError(f"{clip_id}: no voiced notes in its pitch labels")
    rng = _clip_rng(config.seed, clip_id)
    program = int(rng.choice(config.programs))
    lead_db = float(rng.uniform(config.lead_db_min, config.lead_db_max))
    lead = render_lead(notes, program, seconds, config.soundfont)
    if rms(lead) > 0 and rms(accomp) > 0:
        lead *= rms(accomp) / rms(lead) * 10 ** (lead_db / 20)
    # accompaniment + lead must not clip when the pipeline sums them
    peak = float(np.max(np.abs(lead + accomp))) if lead.size else 0.0
    if peak > 0.99:
        lead *= 0.99 / peak
    return lead.astype(np.float32), {"clip_id": clip_id, "program": program, "lead_db": round(lead_db, 2),
                                     "notes": len(notes)}


@dataclass(frozen=True)
class LeadReport:
    rendered: int
    reused: int
    errors: list[tuple[str, str]]
    out_dir: Path


def render_mir1k_leads(source: str | Path, out_dir: str | Path, *, splits: Sequence[str] | None = None,
                       limit: int | None = None, config: LeadConfig = LeadConfig(),
                       progress: bool = True) -> LeadReport:
    """Write OUT/<clip>.lead.ogg for every MIR-1K clip (of `splits`, by song id) and OUT/leads.csv.

    Existing lead files are kept (a rerun resumes). A clip whose accompaniment or pitch labels cannot
    be read is reported in `errors` (and in leads.csv with its reason); the others are still written.
    """
    from tqdm import tqdm

    from data_gen.audio import AudioError, write_audio
    from data_gen.melodies import split_of

    source, out_dir = Path(source), Path(out_dir)
    manifest = source / "manifest.csv"
    if not manifest.is_file():
        raise LeadError(f"MIR-1K manifest not found: {manifest}")
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"clip_id", "song_id"} <= set(rows[0]):
        raise LeadError(f"{manifest}: needs clip_id and song_id columns and at least one row")
    clips = [r["clip_id"].strip() for r in rows if splits is None or split_of(r["song_id"].strip()) in splits]
    clips = sorted(clips)[:limit] if limit is not None else sorted(clips)
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = reused = 0
    errors: list[tuple[str, str]] = []
    records: list[dict] = []
    for clip in tqdm(clips, desc="MIR-1K leads", unit="clip", disable=not progress, mininterval=5):
        path = lead_path(out_dir, clip)
        if path.is_file():
            reused += 1
            records.append({"clip_id": clip, "status": "reused"})
            continue
        try:
            lead, info = render_clip_lead(source, clip, config)
        except (AudioError, LeadError, OSError) as e:
            log.warning("MIR-1K lead of %s not rendered: %s", clip, e)
            errors.append((clip, str(e)))
            records.append({"clip_id": clip, "status": f"error: {e}"})
            continue
        tmp = path.with_name(path.name + ".tmp.ogg")
        write_audio(tmp, lead)
        tmp.replace(path)
        rendered += 1
        records.append({**info, "status": "rendered"})
    with (out_dir / LEADS_CSV).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["clip_id", "program", "lead_db", "notes", "status"])
        w.writeheader()
        for r in records:
            w.writerow(r)
    return LeadReport(rendered, reused, errors, out_dir)
