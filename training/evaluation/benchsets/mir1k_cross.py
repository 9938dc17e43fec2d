"""`earworm benchset mir1k-cross`: real singing as queries against masters that do not hold that voice.

Source layout (../shared/data/mir1k): manifest.csv (clip_id,singer,song_id[,duration_s,...]),
audio/<clip>.voice.ogg and audio/<clip>.accompaniment.ogg (sample-aligned), pitch/<clip>.pv (the
voice's MIDI pitch per 20 ms frame, frame i centred at 0.02 i + 0.02 s, 0 = unvoiced).

For each song (song_id; its clips are consecutive excerpts of one performance, concatenated here):
- master = the real accompaniment + a General-MIDI lead instrument (FluidSynth) playing the melody
  segmented from the ground-truth pitch labels, the whole master time-stretched by a few percent
  (the lead is rendered at the scaled tempo, the accompaniment stretched with librosa), so a query
  never lines up sample-for-sample with its master; the master's melody MIDI (timed like the master)
  is written too, for the DTW baseline;
- queries = the singing voice alone: one 5-8 s excerpt per clip (at most `max_queries_per_song`).

Only songs with `data_gen.melodies.split_of(song_id) == "test"` are used (training uses the others)
unless `all_songs` (for recordings never used in training, e.g. held-back singers). Optional
distractors (another catalogue's tracks, e.g. the synthetic 1k) pad the catalogue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_gen import constants as C
from data_gen.audio import load_audio, write_audio
from data_gen.manifest import (
    ManifestError,
    Query,
    Track,
    read_catalogue,
    read_csv_rows,
    write_catalogue,
    write_queries,
)
from data_gen.mir1k_leads import NoteSegmentation, notes_from_pitch_labels, read_pitch_labels, render_lead
from data_gen.mir1k_leads import rms as _rms
from training.evaluation.benchsets.common import (
    default_source,
    require_source,
    seeded_rng,
    write_info,
)

log = logging.getLogger(__name__)

NAME = "mir1k"
QUERY_KIND = "sung_real"
LEAD_PROGRAMS = (73, 65, 56, 40, 71, 81)
"""GM programs for the lead: flute, alto sax, trumpet, violin, clarinet, sawtooth lead."""


@dataclass(frozen=True)
class Mir1kCrossConfig:
    seed: int = 0
    all_songs: bool = False
    min_query_s: float = 5.0
    max_query_s: float = 8.0
    max_queries_per_song: int = 8
    stretch_min: float = 0.02
    stretch_max: float = 0.06
    """The master runs |1 - rate| in [stretch_min, stretch_max] slower or faster than the singing."""
    lead_db: float = -1.0
    """Lead level relative to the accompaniment (RMS)."""
    note_hysteresis: float = 0.75
    """Semitones the pitch must leave the current note by to start a new one (vibrato stays one note)."""
    min_note_s: float = 0.08
    soundfont: str | None = None
    """GM soundfont for the lead; None: data_gen.render.find_soundfont() ($EARWORM_SOUNDFONT, system)."""

    @property
    def segmentation(self) -> NoteSegmentation:
        return NoteSegmentation(self.note_hysteresis, self.min_note_s)


def select_songs(rows: Sequence[dict[str, str]], all_songs: bool) -> dict[str, list[dict[str, str]]]:
    """song_id -> its clips (in clip order), test-split songs only unless all_songs."""
    from data_gen.melodies import split_of

    songs: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if all_songs or split_of(row["song_id"]) == "test":
            songs.setdefault(row["song_id"], []).append(row)
    return {s: sorted(clips, key=lambda r: r["clip_id"]) for s, clips in sorted(songs.items())}


def write_melody_midi(path: Path, notes: Sequence[tuple[float, float, int]]) -> None:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=0, name="melody")
    for t0, t1, p in notes:
        inst.notes.append(pretty_midi.Note(velocity=100, pitch=int(p), start=float(t0), end=float(t1)))
    pm.instruments.append(inst)
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(str(path))


def build_master(source: Path, song_id: str, clips: Sequence[dict[str, str]], config: Mir1kCrossConfig
                 ) -> tuple[np.ndarray, list[tuple[float, float, int]], dict[str, Any]]:
    """One song's master audio [time], its melody notes (master time) and facts about it."""
    import librosa

    rng = seeded_rng(config.seed, "mir1k-master", song_id)
    accomp, notes, t = [], [], 0.0
    for clip in clips:
        cid = clip["clip_id"]
        a = load_audio(source / "audio" / f"{cid}.accompaniment.ogg", reject_silence=False)
        labels = read_pitch_labels(source / "pitch" / f"{cid}.pv")
        for t0, t1, p in notes_from_pitch_labels(labels, config.segmentation):
            if t0 < a.size / C.SAMPLE_RATE:
                notes.append((t + t0, t + min(t1, a.size / C.SAMPLE_RATE), p))
        accomp.append(a)
        t += a.size / C.SAMPLE_RATE
    accompaniment = np.concatenate(accomp)
    stretch = float(rng.uniform(config.stretch_min, config.stretch_max)) * float(rng.choice([-1.0, 1.0]))
    ratio = 1.0 + stretch  # master seconds per original second
    stretched = librosa.effects.time_stretch(accompaniment, rate=1.0 / ratio).astype(np.float32)
    notes = [(t0 * ratio, t1 * ratio, p) for t0, t1, p in notes]
    program = int(rng.choice(LEAD_PROGRAMS))
    lead = render_lead(notes, program, stretched.size / C.SAMPLE_RATE, config.soundfont)
    if _rms(lead) > 0 and _rms(stretched) > 0:
        lead *= _rms(stretched) / _rms(lead) * 10 ** (config.lead_db / 20)
    mix = stretched + lead
    peak = float(np.max(np.abs(mix))) or 1.0
    mix = (0.9 * mix / peak).astype(np.float32)
    info = {"song_id": song_id, "clips": [c["clip_id"] for c in clips], "tempo_ratio": round(ratio, 4),
            "lead_program": program, "notes": len(notes), "seconds": round(mix.size / C.SAMPLE_RATE, 2)}
    return mix, notes, info


def _previous_masters(out_dir: Path) -> list[dict[str, Any]]:
    """Facts about masters built by an earlier (resumed) run, from its benchset.json."""
    import json

    from training.evaluation.benchsets.common import BENCHSET_INFO

    try:
        return list(json.loads((out_dir / BENCHSET_INFO).read_text()).get("masters", []))
    except (OSError, ValueError):
        return []


def build_mir1k_cross(out_dir: Path, source: Path | None = None, *, distractors: Path | None = None,
                      config: Mir1kCrossConfig = Mir1kCrossConfig()) -> dict[str, Any]:
    """Write OUT/catalogue/manifest.csv (+ audio, midi) and OUT/queries/queries.csv; returns a summary.

    Masters already written (same song, same config) are kept, so an interrupted build resumes.
    """
    source = Path(source) if source else default_source(NAME)
    manifest = require_source(source, NAME)
    source = manifest.parent
    rows = read_csv_rows(manifest, ("clip_id", "singer", "song_id"))
    songs = select_songs(rows, config.all_songs)
    if not songs:
        raise ValueError(f"{manifest}: no {'' if config.all_songs else 'test-split '}songs "
                         "(pass --all-songs for recordings never used in training)")
    all_song_ids = {r["song_id"] for r in rows}
    if not config.all_songs and len(songs) < 10:
        log.warning("mir1k-cross: only %d test-split songs of %d (small; the numbers are noisy)",
                    len(songs), len(all_song_ids))
    out_dir = Path(out_dir).resolve()
    cat_dir, q_dir = out_dir / "catalogue", out_dir / "queries"
    tracks: list[Track] = []
    queries: list[Query] = []
    infos = []
    for song_id, clips in tqdm(songs.items(), desc="mir1k-cross songs", unit="song"):
        audio_path = cat_dir / "audio" / f"{song_id}.ogg"
        midi_path = cat_dir / "midi" / f"{song_id}.mid"
        if not (audio_path.is_file() and midi_path.is_file()):
            mix, notes, info = build_master(source, song_id, clips, config)
            write_melody_midi(midi_path, notes)
            write_audio(audio_path, mix)
            infos.append(info)
        singer = clips[0]["singer"]
        tracks.append(Track(song_id, f"MIR-1K {song_id}", singer, audio_path, midi_path))
        rng = seeded_rng(config.seed, "mir1k-queries", song_id)
        chosen = sorted(rng.permutation(len(clips))[: config.max_queries_per_song])
        for ci in chosen:
            clip = clips[int(ci)]
            voice = load_audio(source / "audio" / f"{clip['clip_id']}.voice.ogg", reject_silence=False)
            seconds = voice.size / C.SAMPLE_RATE
            if seconds < C.MIN_QUERY_SECONDS:
                continue
            length = min(seconds, float(rng.uniform(config.min_query_s, config.max_query_s)))
            start = float(rng.uniform(0.0, seconds - length))
            q_path = q_dir / "audio" / f"{clip['clip_id']}.ogg"
            a = int(round(start * C.SAMPLE_RATE))
            write_audio(q_path, voice[a : a + int(round(length * C.SAMPLE_RATE))])
            queries.append(Query(f"mir1k-{clip['clip_id']}", q_path, song_id, {
                "kind": QUERY_KIND, "singer": clip["singer"], "clip_id": clip["clip_id"],
                "start_s": f"{start:.2f}", "duration_s": f"{length:.2f}"}))
    num_songs = len(tracks)
    if distractors is not None:
        extra = read_catalogue(distractors)
        clash = {t.track_id for t in tracks} & {t.track_id for t in extra}
        if clash:
            raise ManifestError(f"{distractors}: track ids clash with MIR-1K songs: {sorted(clash)[:5]}")
        tracks += extra
    write_catalogue(cat_dir / "manifest.csv", tracks)
    write_queries(q_dir / "queries.csv", queries)
    masters = {m["song_id"]: m for m in _previous_masters(out_dir)}
    masters.update({m["song_id"]: m for m in infos})
    write_info(out_dir, {
        "benchset": "mir1k-cross", "source": str(source), "config": config.__dict__,
        "songs": num_songs, "songs_in_source": len(all_song_ids), "distractors": len(tracks) - num_songs,
        "distractor_catalogue": str(distractors) if distractors else None, "queries": len(queries),
        "masters": [masters[s] for s in songs if s in masters],
    })
    log.info("mir1k-cross: %d songs (+%d distractors), %d queries", num_songs, len(tracks) - num_songs,
             len(queries))
    return {"catalogue": str(cat_dir / "manifest.csv"), "queries": str(q_dir / "queries.csv"),
            "songs": num_songs, "songs_in_source": len(all_song_ids), "tracks": len(tracks),
            "num_queries": len(queries)}
