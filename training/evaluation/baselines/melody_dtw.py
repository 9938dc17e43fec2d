"""Baseline: classic query-by-humming — the query's pitch contour against each master's known melody.

The query is pitch-tracked (data_gen.pitch default extractor) and reduced to ~50 ms frames (median
of the voiced 10 ms frames in each; unvoiced stretches are dropped, likely octave errors folded
back). Each master's melody (its `melody_midi`) is rendered as a contour on the same 50 ms grid,
sounding frames only (rests are dropped as the query's unvoiced frames are). Key normalisation
(default "query_window_mean"): the query minus its mean, the melody minus its running mean over as
many frames as the query has, so every passage is compared in its own key. A subsequence DTW (start
and end anywhere in the melody; steps (1,1), (1,2), (2,1), i.e. local tempo between half and double,
the tempo-changing ones penalised) finds the best-matching passage; the score is minus the mean
absolute deviation in semitones along it (each frame's cost capped at `cost_cap`).

This baseline is handed the true symbolic melody of every master — a privilege the learned model,
which only hears the polyphonic audio, does not have. A catalogue of real recordings has no symbolic
melody: there (`master_melody="auto"` when any track lacks melody_midi, or "audio") every master's
melody is its predominant pitch, tracked from the polyphonic mix on the contour grid — the classic
audio-to-audio QbH system, as good as pitch tracking on a full mix is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from scipy.ndimage import median_filter
from tqdm import tqdm

from data_gen import constants as C
from data_gen.audio import AudioError, load_audio
from data_gen.manifest import Track
from data_gen.pitch import PitchExtractor, PitchTrack
from training.evaluation.baselines.common import ArrayCache, file_key
from training.evaluation.baselines.pitch_cache import SharedPitch, pitch_plus_match_ms
from training.evaluation.systems import RankingSystem, make_result

log = logging.getLogger(__name__)

KEY_NORMALIZATIONS = ("query_window_mean", "local_median")
_SEPARATOR = 2
"""NaN columns between concatenated melodies; no DTW step (at most 2 columns) can jump them."""


class MissingMelodyError(ValueError):
    """master_melody="midi", but the catalogue has tracks without melody_midi."""


MASTER_MELODIES = ("auto", "midi", "audio")


@dataclass(frozen=True)
class MelodyDtwConfig:
    frame_s: float = 0.05
    """Contour frame length (query and melody)."""
    key_normalization: str = "query_window_mean"
    """"query_window_mean": the melody minus its running mean over as many frames as the query has,
    the query minus its mean (each passage compared in its own key, at the query's scale);
    "local_median": the melody minus its running median over `local_median_s`, the query minus its
    median."""
    local_median_s: float = 8.0
    """Window of the melody's running median (key_normalization="local_median")."""
    drop_rests: bool = True
    """Compare sounding frames only (rests removed from the melody as unvoiced frames are from the query)."""
    cost_cap: float = 4.0
    """Per-frame cost cap in semitones (one wrong note cannot sink a whole match)."""
    step_penalty: float = 1.0
    """Extra cost (semitones) of each tempo-changing DTW step (a steady tempo is preferred)."""
    min_voiced_s: float = 0.5
    """A query with less voiced melody than this gets no answer."""
    chunk_columns: int = 2_000_000
    """Melody frames matched per kernel call (bounds memory on large catalogues)."""
    threshold: float | None = None
    """Score below which the answer is "no match"; None: always answer."""
    master_melody: str = "auto"
    """Where a master's melody comes from: "midi" (its melody_midi), "audio" (its predominant pitch,
    tracked from the mix), "auto" (midi when every track has one, else audio for every track: one
    source for the whole catalogue, so no track is favoured by a cleaner melody)."""

    def __post_init__(self) -> None:
        if self.master_melody not in MASTER_MELODIES:
            raise ValueError(f"master_melody must be one of {MASTER_MELODIES}, got {self.master_melody!r}")


def audio_melody_contour(extractor: PitchExtractor, audio: np.ndarray, frame_s: float,
                         drop_rests: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A recording's predominant pitch -> (MIDI pitch float64 [frames], frame times [frames]) every
    `frame_s` s, like `melody_contour` (unvoiced frames are the rests). ValueError when none is voiced."""
    from training.evaluation.baselines.note_histogram import coarse_pitch

    track = coarse_pitch(extractor, audio, frame_s)
    times = np.arange(len(track)) * frame_s
    midi = track.f0_midi()
    if not track.voiced.any():
        raise ValueError("no pitched frame in the master")
    if drop_rests:
        return midi[track.voiced], times[track.voiced]
    idx = np.maximum.accumulate(np.where(track.voiced, np.arange(midi.size), 0))
    idx[: int(np.flatnonzero(track.voiced)[0])] = int(np.flatnonzero(track.voiced)[0])
    return midi[idx], times


def melody_contour(midi_path: Path, frame_s: float, drop_rests: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Melody MIDI -> (MIDI pitch float64 [frames], frame times in s [frames]) every `frame_s` s.

    drop_rests: keep only frames where a note sounds (the query's unvoiced frames are dropped too,
    so both sides are "sounding-only" contours); else rests hold the previous note.
    Raises ValueError for a MIDI file without notes.
    """
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(midi_path))
    notes = sorted((n for inst in pm.instruments if not inst.is_drum for n in inst.notes),
                   key=lambda n: (n.start, -n.pitch))
    if not notes:
        raise ValueError(f"{midi_path}: no notes")
    end = max(n.end for n in notes)
    times = np.arange(int(np.ceil(end / frame_s)) + 1) * frame_s + frame_s / 2
    contour = np.full(times.shape, np.nan)
    for n in notes:  # later notes overwrite earlier ones where they overlap
        lo, hi = np.searchsorted(times, [n.start, n.end])
        contour[lo:hi] = n.pitch
    valid = ~np.isnan(contour)
    if not np.any(valid):  # every note shorter than one frame: one frame per note
        return (np.asarray([n.pitch for n in notes], np.float64),
                np.asarray([n.start for n in notes], np.float64))
    if drop_rests:
        return contour[valid], times[valid]
    first = int(np.flatnonzero(valid)[0])
    idx = np.maximum.accumulate(np.where(valid, np.arange(contour.size), 0))
    idx[:first] = first
    return contour[idx], times


def normalized_melody(contour: np.ndarray, frame_s: float, local_median_s: float) -> np.ndarray:
    """Contour minus its running median over `local_median_s` (float64 [frames])."""
    size = max(1, int(round(local_median_s / frame_s)) | 1)
    return contour - median_filter(contour, size=size, mode="nearest")


def query_contour(track: PitchTrack, frame_s: float) -> np.ndarray:
    """PitchTrack (10 ms) -> key-normalised float64 [frames] on the `frame_s` grid, voiced only."""
    step = max(1, int(round(frame_s / C.PITCH_HOP_SECONDS)))
    midi = track.f0_midi()  # NaN where unvoiced
    n = len(midi) // step
    if n == 0:
        return np.zeros(0)
    blocks = midi[: n * step].reshape(n, step)
    enough = np.sum(~np.isnan(blocks), axis=1) * 2 > step
    if not np.any(enough):
        return np.zeros(0)
    contour = np.nanmedian(blocks[enough], axis=1)
    contour = contour - np.median(contour)
    # fold probable octave errors back towards the median
    contour = np.where(contour > 9, contour - 12, np.where(contour < -9, contour + 12, contour))
    return contour - np.median(contour)


@numba.njit(cache=True)
def subsequence_dtw_last_row(query: np.ndarray, reference: np.ndarray, cap: float,
                             step_penalty: float = 0.0) -> np.ndarray:
    """Accumulated cost of the best path ending at every reference column after the whole query.

    query: float64 [N]; reference: float64 [M] (NaN columns are impassable).
    Cost |q - r| capped at `cap`; a path starts anywhere in row 0 and uses steps (1,1), (1,2)
    [query +1, reference +2] and (2,1) [query +2, reference +1, cost counted twice]; the two
    tempo-changing steps cost `step_penalty` extra (a path that keeps the tempo is preferred).
    Returns float64 [M] (inf where no path ends).
    """
    n_q = query.shape[0]
    n_r = reference.shape[0]
    inf = np.inf
    prev2 = np.full(n_r, inf)
    prev = np.empty(n_r)
    cur = np.empty(n_r)
    for m in range(n_r):
        r = reference[m]
        prev[m] = inf if r != r else min(abs(query[0] - r), cap)
    for i in range(1, n_q):
        q = query[i]
        for m in range(n_r):
            r = reference[m]
            if r != r:
                cur[m] = inf
                continue
            c = min(abs(q - r), cap)
            best = inf
            if m >= 1:
                best = prev[m - 1] + c
                if i >= 2 and prev2[m - 1] + 2.0 * c + step_penalty < best:
                    best = prev2[m - 1] + 2.0 * c + step_penalty
            if m >= 2 and prev[m - 2] + c + step_penalty < best:
                best = prev[m - 2] + c + step_penalty
            cur[m] = best
        prev2, prev, cur = prev, cur, prev2
    return prev.copy()


class MelodyDtwBaseline(RankingSystem):
    name = "melody_dtw"
    DESCRIPTIONS = {
        "midi": ("melody DTW (classic QBH): key-normalised subsequence DTW of the query's pitch contour "
                 "against each master's true melody MIDI — it is given the symbolic melody, which the "
                 "learned model never sees"),
        "audio": ("melody DTW (classic QBH on audio): key-normalised subsequence DTW of the query's pitch "
                  "contour against each master's predominant pitch, tracked from the polyphonic mix"),
    }

    @property
    def description(self) -> str:  # type: ignore[override]
        return self.DESCRIPTIONS[self.source]

    def __init__(self, pitch: SharedPitch | None = None, config: MelodyDtwConfig = MelodyDtwConfig()):
        if config.key_normalization not in KEY_NORMALIZATIONS:
            raise ValueError(f"key_normalization must be one of {KEY_NORMALIZATIONS}")
        self.pitch = pitch or SharedPitch()
        self.config = config
        self.source = "midi" if config.master_melody != "audio" else "audio"
        """Where the prepared catalogue's melodies came from (set by `prepare`)."""
        self._track_ids: list[str] = []
        self._tracks: dict[str, Track] = {}
        self._reference = np.zeros(0)
        self._filled = np.zeros(0)
        self._times = np.zeros(0)
        self._starts = np.zeros(0, np.int64)
        self._lengths = np.zeros(0, np.int64)

    def melody_source(self, tracks: Sequence[Track]) -> str:
        """"midi" or "audio": where this catalogue's master melodies come from (see MelodyDtwConfig)."""
        missing = [t.track_id for t in tracks if t.melody_midi is None]
        if self.config.master_melody == "midi" and missing:
            raise MissingMelodyError(
                f"melody_dtw with master_melody='midi' needs a melody_midi column for every track; "
                f"{len(missing)} track(s) lack one (e.g. {', '.join(missing[:3])})")
        if self.config.master_melody == "audio" or missing:
            return "audio"
        return "midi"

    def _contour(self, track: Track, source: str) -> np.ndarray:
        """[2, frames]: the master's MIDI pitch contour and its frame times (ValueError/OSError when none)."""
        cfg = self.config
        if source == "midi":
            return np.stack(melody_contour(track.melody_midi, cfg.frame_s, cfg.drop_rests))
        audio = load_audio(track.path, reject_silence=False)
        return np.stack(audio_melody_contour(self.pitch.extractor, audio, cfg.frame_s, cfg.drop_rests))

    def prepare(self, tracks: Sequence[Track], cache_dir: Path) -> None:
        """Normalised melody contour of every master, concatenated with impassable separators."""
        cfg = self.config
        source = self.source = self.melody_source(tracks)
        cache = ArrayCache(Path(cache_dir) / "melody_dtw")
        parts, times, starts, lengths = [], [], [], []
        pos = 0
        for t in tqdm(tracks, desc=f"melody contours ({source})", unit="track", mininterval=5):
            key = (file_key(t.melody_midi, "melody_dtw/3", cfg.frame_s, cfg.drop_rests) if source == "midi" else
                   file_key(t.path, "melody_dtw/audio/1", self.pitch.name, cfg.frame_s, cfg.drop_rests))
            ref = cache.get(key)  # [2, frames]: MIDI pitch contour, frame times
            if ref is None:
                try:
                    ref = self._contour(t, source)
                except (OSError, ValueError, EOFError, AudioError) as e:
                    log.warning("melody_dtw: cannot read melody of %s (%s); it will never match",
                                t.track_id, e)
                    ref = np.full((2, 1), np.nan)
                cache.put(key, ref)
            contour = ref[0]
            if cfg.key_normalization == "local_median" and np.isfinite(contour).all():
                contour = normalized_melody(contour, cfg.frame_s, cfg.local_median_s)
            parts += [contour, np.full(_SEPARATOR, np.nan)]
            times += [ref[1], np.zeros(_SEPARATOR)]
            starts.append(pos)
            lengths.append(ref.shape[1])
            pos += ref.shape[1] + _SEPARATOR
        self._track_ids = [t.track_id for t in tracks]
        self._tracks = {t.track_id: t for t in tracks}
        self._reference = np.concatenate(parts).astype(np.float64)
        self._times = np.concatenate(times).astype(np.float64)
        # separators filled with their neighbours' values, for running means that must not see NaN
        ref = self._reference
        filled_idx = np.maximum.accumulate(np.where(np.isfinite(ref), np.arange(ref.size), 0))
        self._filled = ref[filled_idx]
        self._filled = np.where(np.isfinite(self._filled), self._filled, 0.0)
        self._starts = np.asarray(starts, np.int64)
        self._lengths = np.asarray(lengths, np.int64)

    def _normalized(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query [N], reference [columns]) in the configured key normalisation."""
        if self.config.key_normalization == "local_median":
            return query, self._reference
        from scipy.ndimage import uniform_filter1d

        size = max(1, query.size)
        local_mean = uniform_filter1d(self._filled, size=size, mode="nearest")
        return query - query.mean(), self._reference - local_mean

    def _match(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """query contour [N] -> (score per track [tracks], start offset of the match in s [tracks])."""
        query, reference = self._normalized(query)
        n_tracks = len(self._track_ids)
        scores = np.full(n_tracks, -np.inf)
        offsets = np.zeros(n_tracks)
        # chunk at track boundaries so a kernel call stays within chunk_columns
        t0 = 0
        while t0 < n_tracks:
            t1 = t0 + 1
            while t1 < n_tracks and self._starts[t1] + self._lengths[t1] - self._starts[t0] <= self.config.chunk_columns:
                t1 += 1
            lo = self._starts[t0]
            hi = self._starts[t1 - 1] + self._lengths[t1 - 1] + _SEPARATOR
            last = subsequence_dtw_last_row(query, reference[lo:hi], self.config.cost_cap,
                                            self.config.step_penalty)
            for j in range(t0, t1):
                a = self._starts[j] - lo
                seg = last[a : a + self._lengths[j]]
                if seg.size and np.isfinite(seg).any():
                    end = int(np.argmin(seg))
                    scores[j] = -seg[end] / query.size
                    # approximate start of the matched passage (the path's slope is not tracked)
                    offsets[j] = float(self._times[self._starts[j] + max(0, end + 1 - query.size)])
            t0 = t1
        return scores, offsets

    def rank(self, audio: np.ndarray, top_k: int):
        track, pitch_ms = self.pitch.extract(audio)
        start = time.perf_counter()
        query = query_contour(track, self.config.frame_s)
        if query.size * self.config.frame_s < self.config.min_voiced_s:
            scores, offsets = np.full(len(self._track_ids), -np.inf), None
        else:
            scores, offsets = self._match(query)
        match_ms = 1000.0 * (time.perf_counter() - start)
        return make_result(
            self._track_ids, scores, self._tracks, top_k=top_k, offsets_s=offsets,
            audio_seconds=len(audio) / C.SAMPLE_RATE, threshold=self.config.threshold,
            timings_ms={"pitch": pitch_ms, "match": match_ms},
        )

    def cache_key(self) -> str:
        return f"melody_dtw/2|{self.pitch.name}|{self.config}"

    def latency_ms(self, result, wall_ms: float) -> float:
        return pitch_plus_match_ms(result.timings_ms)
