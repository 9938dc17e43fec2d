"""One pitch extractor shared by the baselines, with a per-run cache of query pitch tracks.

Both baselines pitch-track the same query; the cache avoids doing it twice, and remembers how long
the extraction took so each baseline still reports it in its latency (`timings_ms["pitch"]`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

import numpy as np

from data_gen.pitch import PitchExtractor, PitchTrack


class SharedPitch:
    """Lazily builds `data_gen.pitch.default_extractor()` (CREPE tiny, else pYIN) once."""

    def __init__(self, extractor: PitchExtractor | None = None, max_items: int = 64):
        self._extractor = extractor
        self._cache: OrderedDict[str, tuple[PitchTrack, float]] = OrderedDict()
        self._max_items = max_items
        self._lock = threading.Lock()

    @property
    def extractor(self) -> PitchExtractor:
        if self._extractor is None:
            from data_gen.pitch import default_extractor

            self._extractor = default_extractor()
        return self._extractor

    @property
    def name(self) -> str:
        return self.extractor.name

    def extract(self, audio: np.ndarray) -> tuple[PitchTrack, float]:
        """audio [time] -> (PitchTrack on the 10 ms grid, milliseconds the extraction took)."""
        key = hashlib.sha1(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        start = time.perf_counter()
        track = self.extractor.extract(audio)
        value = (track, 1000.0 * (time.perf_counter() - start))
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > self._max_items:
                self._cache.popitem(last=False)
        return value


def pitch_plus_match_ms(timings_ms: dict[str, float]) -> float:
    """Latency of a pitch-based baseline: its (possibly cached) pitch extraction plus its matching."""
    return float(timings_ms.get("pitch", 0.0) + timings_ms.get("match", 0.0))
