"""Baseline: 128-bin MIDI-note histograms compared by cosine similarity.

This is what the popular vector-database "hum to search" demo does: pitch-track the query, count
how much of it sits on each MIDI note (weighted by the tracker's confidence), and find the master
whose histogram points the same way. The master histogram comes from pitch-tracking the master
*audio* — polyphonic, so the tracker follows whatever is loudest, and the histogram ignores note
order and key. It is a weak baseline on purpose: it shows what a naive system gets.

Master pitch is tracked on a coarser grid (`master_hop_s`, default 250 ms: still ~120 pitch frames
in a 30 s master; the histogram is an order-free count, so a coarser grid only subsamples it) to
keep 10,000-track catalogues tractable on CPU (CREPE tiny costs ~1-2 ms per frame here, so a 10 ms
grid would take hours); master histograms are cached on disk per file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_gen import constants as C
from data_gen.audio import AudioError, load_audio
from data_gen.manifest import Track
from data_gen.pitch import PitchExtractor, PitchTrack
from training.evaluation.baselines.common import ArrayCache, file_key
from training.evaluation.baselines.pitch_cache import SharedPitch, pitch_plus_match_ms
from training.evaluation.systems import RankingSystem, make_result

log = logging.getLogger(__name__)

NUM_NOTES = 128


@dataclass(frozen=True)
class NoteHistogramConfig:
    master_hop_s: float = 0.25
    """Pitch-frame hop used on masters (queries use the extractor's 10 ms grid)."""
    threshold: float | None = None
    """Cosine below which the answer is "no match"; None: always answer."""


def note_histogram(track: PitchTrack) -> np.ndarray:
    """PitchTrack -> float32 [128] unit-norm histogram of rounded MIDI notes, confidence-weighted.

    Only voiced frames count. All zeros when no frame is voiced.
    """
    voiced = track.voiced
    hist = np.zeros(NUM_NOTES, np.float64)
    if np.any(voiced):
        midi = 69.0 + 12.0 * np.log2(track.f0_hz[voiced].astype(np.float64) / 440.0)
        notes = np.clip(np.rint(midi), 0, NUM_NOTES - 1).astype(np.int64)
        np.add.at(hist, notes, track.confidence[voiced].astype(np.float64))
    norm = np.linalg.norm(hist)
    return (hist / norm if norm > 0 else hist).astype(np.float32)


def coarse_pitch(extractor: PitchExtractor, audio: np.ndarray, hop_s: float) -> PitchTrack:
    """Pitch of `audio` on a `hop_s` grid. CREPE is run only on those frames and decoded frame by
    frame (no Viterbi smoothing: a histogram does not need a continuous path); other backends run on
    their own grid and are subsampled."""
    hop = max(1, int(round(hop_s * C.SAMPLE_RATE)))
    from data_gen.pitch import cents_to_hz
    from data_gen.pitch.crepe import FRAME_LENGTH, CrepeExtractor, local_average_cents, normalized_frames

    if isinstance(extractor, CrepeExtractor):
        padded = np.pad(np.asarray(audio, np.float32), FRAME_LENGTH // 2)
        n = 1 + len(audio) // hop
        batch = extractor.config.batch_size
        # the extractor's compiled forward pass (fixed input signature: no retracing per length)
        forward = getattr(extractor, "_forward", None) or (lambda x: extractor.model(x, training=False))
        act = np.concatenate([
            np.asarray(forward(normalized_frames(padded, s, min(s + batch, n), hop=hop)))
            for s in range(0, n, batch)
        ])
        confidence = act.max(axis=1)
        return PitchTrack(cents_to_hz(local_average_cents(act)).astype(np.float32), confidence,
                          confidence > extractor.config.voicing_threshold)
    track = extractor.extract(audio)
    step = max(1, hop // C.PITCH_HOP)
    return PitchTrack(track.f0_hz[::step], track.confidence[::step], track.voiced[::step])


class NoteHistogramBaseline(RankingSystem):
    name = "note_histogram"
    description = ("note histogram: 128-bin MIDI-note histogram of the query's pitch track vs each "
                   "master's (pitch-tracked from the polyphonic master audio), cosine similarity")

    def __init__(self, pitch: SharedPitch | None = None, config: NoteHistogramConfig = NoteHistogramConfig()):
        self.pitch = pitch or SharedPitch()
        self.config = config
        self._track_ids: list[str] = []
        self._tracks: dict[str, Track] = {}
        self._matrix = np.zeros((0, NUM_NOTES), np.float32)

    def prepare(self, tracks: Sequence[Track], cache_dir: Path) -> None:
        """Histogram of every master (pitch-tracked once, then read from `cache_dir`)."""
        cache = ArrayCache(Path(cache_dir) / "note_histogram")
        extractor = self.pitch.extractor
        rows = []
        computed = 0
        for t in tqdm(tracks, desc="note histograms of masters", unit="track", mininterval=5):
            key = file_key(t.path, "note_histogram/2", extractor.name, self.config.master_hop_s)
            hist = cache.get(key)
            if hist is None:
                try:
                    audio = load_audio(t.path, reject_silence=False)
                    hist = note_histogram(coarse_pitch(extractor, audio, self.config.master_hop_s))
                except AudioError as e:
                    log.warning("note histogram: cannot read master %s (%s); it will never match",
                                t.track_id, e)
                    hist = np.zeros(NUM_NOTES, np.float32)
                cache.put(key, hist)
                computed += 1
            rows.append(hist)
        log.info("note histograms: %d computed, %d from cache", computed, len(tracks) - computed)
        self._track_ids = [t.track_id for t in tracks]
        self._tracks = {t.track_id: t for t in tracks}
        self._matrix = np.stack(rows).astype(np.float32)

    def rank(self, audio: np.ndarray, top_k: int):
        track, pitch_ms = self.pitch.extract(audio)
        start = time.perf_counter()
        query = note_histogram(track)
        scores = (self._matrix @ query).astype(np.float64)
        if not np.any(query):  # nothing voiced: no basis for an answer
            scores[:] = -np.inf
        match_ms = 1000.0 * (time.perf_counter() - start)
        return make_result(
            self._track_ids, scores, self._tracks, top_k=top_k,
            audio_seconds=len(audio) / C.SAMPLE_RATE, threshold=self.config.threshold,
            timings_ms={"pitch": pitch_ms, "match": match_ms},
        )

    def cache_key(self) -> str:
        return f"note_histogram/2|{self.pitch.name}|{self.config}"

    def latency_ms(self, result, wall_ms: float) -> float:
        return pitch_plus_match_ms(result.timings_ms)
