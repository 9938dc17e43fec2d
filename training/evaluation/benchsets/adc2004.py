"""`build_adc2004`: real polyphonic masters with an annotated melody, and synthetic queries of it.

Source layout (../shared/data/adc2004): manifest.csv (clip_id,genre,audio,melody), audio/<clip>.flac
(16 kHz mono, 10-25 s excerpts: pop, jazz, opera, a synthesized voice "daisy", MIDI renderings) and
melody/<clip>.f0.txt (lines `time_s f0_hz`, one every 256/44100 s ~ 5.8 ms; 0 = no melody).

- masters = the 20 real recordings, referenced by absolute path (never copied), track_id
  `adc2004-<clip>`, title = clip, artist = genre;
- the annotated f0 is re-gridded onto the 20 ms MIR-1K label grid and segmented into notes by the
  project's `notes_from_pitch_labels`; the notes are written as OUT/catalogue/midi/<clip>.mid (timed
  like the master), listed in the manifest's melody_midi column (so the melody-DTW baseline runs);
- queries = `make_queries` on the 20 alone (OUT/songs/manifest.csv): hums, whistles and tones of a
  random 5-10 s window of each melody, at another key and tempo, with human-like deviations
  (`kind` column); reused when an earlier build with the same settings left them;
- the catalogue OUT/catalogue/manifest.csv = the 20 + the optional distractor catalogue;
- optionally (`pitch_accuracy`), the default pitch tracker (CREPE tiny) run on each *polyphonic mix*
  and scored against the annotation on the tracker's 10 ms grid (`mix_pitch_accuracy`): raw pitch
  and chroma accuracy (50 cents), voicing recall and false alarm, per clip, per genre and pooled.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_gen import constants as C
from data_gen.manifest import (
    ManifestError,
    Query,
    Track,
    read_csv_rows,
    read_queries,
    write_catalogue,
    write_queries,
)
from data_gen.mir1k_leads import PV_FIRST_CENTRE_S, PV_HOP_S, NoteSegmentation, notes_from_pitch_labels
from training.evaluation.benchsets.common import (
    BENCHSET_INFO,
    default_source,
    pad_with_distractors,
    require_source,
    write_info,
)
from training.evaluation.benchsets.mir1k_cross import write_melody_midi

log = logging.getLogger(__name__)

NAME = "adc2004"
TRACK_PREFIX = "adc2004-"
MANIFEST_COLUMNS = ("clip_id", "genre", "audio", "melody")


@dataclass(frozen=True)
class Adc2004Config:
    seed: int = 0
    kinds: tuple[str, ...] = ("hum", "whistle", "tone")
    per_track: int = 3
    """Queries per excerpt (the kinds are cycled across excerpts and queries)."""
    min_query_s: float = 5.0
    max_query_s: float = 10.0
    note_hysteresis: float = 0.75
    """Semitones the pitch must leave the current note by to start a new one (vibrato stays one note)."""
    min_note_s: float = 0.08
    vibrato_median_s: float = 0.18
    """Median filter (per voiced run) of the 20 ms pitch labels before segmentation, about one vibrato
    period: operatic vibrato (up to +-1 semitone) would otherwise shatter each sustained note into
    slivers shorter than min_note_s (ADC opera: 34-72 % of the voiced frames in notes without it, 87-97 %
    with it). Steps between notes survive a median filter. 0: off."""
    pitch_accuracy: bool = True
    """Also score the default pitch tracker on the polyphonic mixes (not cached: CREPE tiny runs at
    ~0.2 s per second of audio on 2 CPU cores, ~2 min for the 20 excerpts)."""

    @property
    def segmentation(self) -> NoteSegmentation:
        return NoteSegmentation(self.note_hysteresis, self.min_note_s)

    def query_settings(self) -> dict[str, Any]:
        """Everything the melody MIDI and the queries depend on (resume key)."""
        d = asdict(self)
        d.pop("pitch_accuracy")
        d["kinds"] = list(self.kinds)
        return d


# --- Annotation ---------------------------------------------------------------------------------


def read_f0(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """melody/<clip>.f0.txt -> (times_s float64 [n], f0_hz float64 [n], 0 = no melody)."""
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: cannot read the f0 annotation ({e})") from e
    if values.shape[1] != 2 or values.shape[0] < 2:
        raise ManifestError(f"{path}: expected lines `time_s f0_hz` (got shape {values.shape})")
    times, f0 = values[:, 0], np.maximum(values[:, 1], 0.0)
    if np.any(np.diff(times) <= 0):
        raise ManifestError(f"{path}: times must increase")
    return times, f0


def annotation_on_grid(times: np.ndarray, f0_hz: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The annotation on the tracker's 10 ms grid (frame i centred at i * 10 ms): (ref_hz float64
    [num_frames], ref_voiced bool [num_frames]). f0 is interpolated in cents between voiced
    neighbours, voicing follows the nearer annotation frame; frames past the annotation are unvoiced."""
    from data_gen.pitch.base import frame_times, resample_to_pitch_grid

    voiced = (f0_hz > 0).astype(np.float64)
    track = resample_to_pitch_grid(times, np.where(f0_hz > 0, f0_hz, 1.0), voiced, num_frames, 0.5)
    t = frame_times(num_frames)
    hop = float(np.median(np.diff(times)))
    inside = (t >= times[0] - hop / 2) & (t <= times[-1] + hop / 2)
    ref_voiced = track.voiced & inside
    return np.where(ref_voiced, track.f0_hz.astype(np.float64), 0.0), ref_voiced


def pitch_labels(times: np.ndarray, f0_hz: np.ndarray) -> np.ndarray:
    """The annotation as MIR-1K-style labels: MIDI per 20 ms frame (label j centred at 0.02 j + 0.02 s,
    0 = unvoiced), float64 [labels], the input `notes_from_pitch_labels` expects."""
    num_labels = int(math.floor((times[-1] - PV_FIRST_CENTRE_S) / PV_HOP_S + 1e-9)) + 1
    if num_labels < 1:
        return np.zeros(0)
    # label j sits exactly on 10 ms frame 2 j + 2
    step, first = int(round(PV_HOP_S / C.PITCH_HOP_SECONDS)), int(round(PV_FIRST_CENTRE_S / C.PITCH_HOP_SECONDS))
    ref_hz, ref_voiced = annotation_on_grid(times, f0_hz, first + step * (num_labels - 1) + 1)
    hz, voiced = ref_hz[first::step], ref_voiced[first::step]
    with np.errstate(divide="ignore"):
        midi = 69.0 + 12.0 * np.log2(np.where(voiced, hz, 440.0) / 440.0)
    return np.where(voiced, midi, 0.0)


def median_per_run(labels: np.ndarray, size: int) -> np.ndarray:
    """Median-filter each voiced run (labels > 0) of `labels` on its own (window `size` frames, shrunk
    to the run's length); unvoiced frames stay 0. float64 [frames]."""
    from scipy.ndimage import median_filter

    out = np.asarray(labels, np.float64).copy()
    if size <= 1:
        return out
    voiced = np.concatenate([[False], out > 0, [False]])
    edges = np.flatnonzero(np.diff(voiced.astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2]):
        out[a:b] = median_filter(out[a:b], size=min(size, b - a), mode="nearest")
    return out


def melody_notes(times: np.ndarray, f0_hz: np.ndarray, seg: NoteSegmentation, seconds: float | None = None,
                 vibrato_median_s: float = 0.0) -> list[tuple[float, float, int]]:
    """Annotated f0 -> notes [(start_s, end_s, midi)] in master time (clipped to `seconds`): the
    f0 on the 20 ms label grid, median-filtered over `vibrato_median_s`, segmented by
    `notes_from_pitch_labels`."""
    labels = median_per_run(pitch_labels(times, f0_hz), int(round(vibrato_median_s / PV_HOP_S)))
    notes = notes_from_pitch_labels(labels, seg)
    if seconds is not None:
        notes = [(t0, min(t1, seconds), p) for t0, t1, p in notes if t0 < seconds]
    return notes


# --- Pitch tracking on the mixes ----------------------------------------------------------------


def _scores(counts: Any) -> dict[str, Any]:
    s = counts.scores()

    def r(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 4)

    return {"raw_pitch_accuracy": r(s.raw_pitch_accuracy), "raw_chroma_accuracy": r(s.raw_chroma_accuracy),
            "voicing_recall": r(s.voicing_recall), "voicing_false_alarm": r(s.voicing_false_alarm),
            "overall_accuracy": r(s.overall_accuracy), "frames": counts.frames,
            "ref_voiced_frames": counts.ref_voiced}


def mix_pitch_accuracy(source: Path | None = None, *, extractor: Any = None,
                       clips: Sequence[str] | None = None) -> dict[str, Any]:
    """Score a pitch tracker (default `data_gen.pitch.default_extractor()`: CREPE tiny) on the
    polyphonic mixes against the annotated melody, on the tracker's 10 ms grid.

    Returns {"extractor", "overall": scores, "per_genre": {genre: scores}, "clips": {clip: scores +
    genre}, "seconds"}; scores = raw pitch / raw chroma accuracy (50 cents, tracker voicing
    ignored), voicing recall / false alarm, overall accuracy (None where undefined, e.g. the false
    alarm of a clip voiced throughout), pooled over frames (frame-weighted)."""
    from data_gen.audio import load_audio
    from data_gen.pitch import default_extractor
    from data_gen.pitch.base import num_pitch_frames
    from data_gen.pitch.benchmark import FrameCounts, frame_counts

    started = time.perf_counter()
    source = Path(source) if source else default_source(NAME)
    manifest = require_source(source, NAME)
    source = manifest.parent
    rows = read_csv_rows(manifest, MANIFEST_COLUMNS)
    if clips is not None:
        wanted = set(clips)
        rows = [r for r in rows if r["clip_id"] in wanted]
    extractor = extractor or default_extractor()
    total, per_genre, per_clip = FrameCounts(), {}, {}
    for row in rows:
        audio = load_audio(source / row["audio"], reject_silence=False)
        track = extractor.extract(audio)
        times, f0 = read_f0(source / row["melody"])
        ref_hz, ref_voiced = annotation_on_grid(times, f0, len(track))
        counts = frame_counts(ref_hz, ref_voiced, track.f0_hz, track.voiced)
        if len(track) != num_pitch_frames(audio.size):
            log.warning("%s: %d tracker frames for %d samples", row["clip_id"], len(track), audio.size)
        total = total + counts
        per_genre[row["genre"]] = per_genre.get(row["genre"], FrameCounts()) + counts
        per_clip[row["clip_id"]] = {"genre": row["genre"], **_scores(counts)}
    return {"extractor": getattr(extractor, "name", repr(extractor)), "overall": _scores(total),
            "per_genre": {g: _scores(c) for g, c in sorted(per_genre.items())}, "clips": per_clip,
            "seconds": round(time.perf_counter() - started, 1)}


# --- Builder ------------------------------------------------------------------------------------


def _previous_info(out_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((out_dir / BENCHSET_INFO).read_text()))
    except (OSError, ValueError):
        return {}


def _reusable_queries(q_csv: Path, track_ids: set[str]) -> list[Query] | None:
    """The queries an earlier build left, when they are all there and cover exactly these tracks."""
    try:
        queries = read_queries(q_csv)
    except ManifestError:
        return None
    return queries if {q.track_id for q in queries} == track_ids else None


def build_adc2004(out_dir: Path, source: Path | None = None, *, distractors: Path | None = None,
                  config: Adc2004Config = Adc2004Config()) -> dict[str, Any]:
    """Write OUT/catalogue/manifest.csv (+ midi), OUT/songs/manifest.csv (the 20 alone),
    OUT/queries/queries.csv (+ audio) and OUT/benchset.json; returns a summary.

    distractors: a catalogue manifest whose tracks pad the catalogue (None: the 20 excerpts alone).
    Queries left by an earlier build with the same source and settings are reused."""
    from data_gen.audio import load_audio
    from data_gen.synth.queries import AUDIO_DIR, make_queries

    started = time.perf_counter()
    source = Path(source) if source else default_source(NAME)
    manifest = require_source(source, NAME)
    source = manifest.parent
    rows = read_csv_rows(manifest, MANIFEST_COLUMNS)
    if not rows:
        raise ManifestError(f"{manifest}: no clips listed")
    for row in rows:
        for col in ("audio", "melody"):
            if not (source / row[col]).is_file():
                raise ManifestError(f"{manifest}: {col} file of clip {row['clip_id']!r} not found: "
                                    f"{source / row[col]}")
    out_dir = Path(out_dir).resolve()
    cat_dir, songs_dir, q_dir = out_dir / "catalogue", out_dir / "songs", out_dir / "queries"
    previous = _previous_info(out_dir)

    tracks: list[Track] = []
    masters: list[dict[str, Any]] = []
    genre_of: dict[str, str] = {}
    for row in rows:
        clip = row["clip_id"]
        audio_path = (source / row["audio"]).resolve()
        seconds = load_audio(audio_path, reject_silence=False).size / C.SAMPLE_RATE
        times, f0 = read_f0(source / row["melody"])
        notes = melody_notes(times, f0, config.segmentation, seconds, config.vibrato_median_s)
        if not notes:
            raise ManifestError(f"{source / row['melody']}: no melody notes in clip {clip!r}")
        midi_path = cat_dir / "midi" / f"{clip}.mid"
        write_melody_midi(midi_path, notes)
        track_id = TRACK_PREFIX + clip
        tracks.append(Track(track_id, clip, row["genre"], audio_path, midi_path))
        genre_of[track_id] = row["genre"]
        span = notes[-1][1] - notes[0][0]
        masters.append({"clip_id": clip, "genre": row["genre"], "seconds": round(seconds, 2),
                        "voiced_fraction": round(float(np.mean(f0 > 0)), 3), "notes": len(notes),
                        "melody_span_s": round(span, 2)})
        if span < config.max_query_s:
            log.warning("adc2004: %s's melody spans only %.1f s (queries up to %.1f s may be shorter)",
                        clip, span, config.max_query_s)
    catalogue = pad_with_distractors(tracks, distractors)  # an id clash fails before any synthesis
    songs_manifest = songs_dir / "manifest.csv"
    write_catalogue(songs_manifest, tracks)
    write_catalogue(cat_dir / "manifest.csv", catalogue)

    settings = {"source": str(source), "clips": [r["clip_id"] for r in rows], **config.query_settings()}
    q_csv = q_dir / "queries.csv"
    queries = _reusable_queries(q_csv, set(genre_of)) if previous.get("query_settings") == settings else None
    reused = queries is not None
    if queries is None:
        if (q_dir / AUDIO_DIR).is_dir():  # stale queries of other settings
            for old in (q_dir / AUDIO_DIR).glob(f"{TRACK_PREFIX}*.wav"):
                old.unlink()
        q_dir.mkdir(parents=True, exist_ok=True)
        make_queries(songs_manifest, q_dir, kinds=config.kinds, per_track=config.per_track, seed=config.seed,
                     min_s=config.min_query_s, max_s=config.max_query_s, progress=False)
        queries = [Query(q.query_id, q.path, q.track_id, {**q.extra, "genre": genre_of[q.track_id or ""],
                                                            "clip_id": (q.track_id or "")[len(TRACK_PREFIX):]})
                   for q in read_queries(q_csv)]
        write_queries(q_csv, queries)
    kinds: dict[str, int] = {}
    for q in queries:
        kinds[q.extra.get("kind", "")] = kinds.get(q.extra.get("kind", ""), 0) + 1

    pitch = mix_pitch_accuracy(source) if config.pitch_accuracy else None
    info: dict[str, Any] = {
        "benchset": "adc2004", "source": str(source), "config": config.__dict__, "query_settings": settings,
        "songs": len(tracks), "distractors": len(catalogue) - len(tracks),
        "distractor_catalogue": str(distractors) if distractors else None, "queries": len(queries),
        "query_kinds": kinds, "queries_reused": reused, "masters": masters,
    }
    if pitch is not None:  # absent (not null) when not measured
        info["pitch_on_mix"] = pitch
    write_info(out_dir, info)
    log.info("adc2004: %d real excerpts (+%d distractors), %d synthetic queries%s", len(tracks),
             len(catalogue) - len(tracks), len(queries), " (reused)" if reused else "")
    summary: dict[str, Any] = {
        "catalogue": str(cat_dir / "manifest.csv"), "queries": str(q_csv), "songs": len(tracks),
        "tracks": len(catalogue), "num_queries": len(queries), "query_kinds": kinds, "queries_reused": reused,
        "seconds": round(time.perf_counter() - started, 1)}
    if pitch is not None:
        summary["pitch_on_mix"] = {"extractor": pitch["extractor"], **{
            k: v for k, v in pitch["overall"].items() if k not in ("frames", "ref_voiced_frames")}}
        summary["pitch_on_mix_per_genre"] = {g: s["raw_pitch_accuracy"] for g, s in pitch["per_genre"].items()}
    return summary


__all__ = ["Adc2004Config", "annotation_on_grid", "build_adc2004", "median_per_run", "melody_notes",
           "mix_pitch_accuracy", "pitch_labels", "read_f0"]
