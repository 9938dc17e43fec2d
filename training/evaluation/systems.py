"""The systems an evaluation compares, behind one interface: audio in, ranked tracks out.

The learned model answers through `serving.retrieval.Retriever` (the same code path as the server);
each baseline implements `RankingSystem` and returns the same `RetrievalResult`, so the metrics code
cannot tell them apart.
"""

from __future__ import annotations

import abc
import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_gen.manifest import Track

if TYPE_CHECKING:  # heavy imports (TensorFlow, ScaNN) stay out of `earworm --help`
    from serving.retrieval import Retriever
    from serving.retrieval_types import QueryEmbedding, RetrievalResult


class RankingSystem(abc.ABC):
    """Ranks the catalogue's tracks for one query recording."""

    name: str = "abstract"
    description: str = ""

    def prepare(self, tracks: Sequence[Track], cache_dir: Path) -> None:
        """Precompute per-track data for the catalogue (cached under `cache_dir`); default: none."""

    @abc.abstractmethod
    def rank(self, audio: np.ndarray, top_k: int) -> "RetrievalResult":
        """audio: float32 [time] mono at SAMPLE_RATE -> the top_k tracks, best first."""

    def cache_key(self) -> str | None:
        """Identifies a deterministic system's settings so its answers can be cached; None: never."""
        return None

    def latency_ms(self, result: "RetrievalResult", wall_ms: float) -> float:
        """Per-query latency to report; default: the wall time of `rank`."""
        return wall_ms


class SharedQueryEmbedding:
    """Embeds each query once (in the given tempo views) for all aggregations of one model,
    remembering how long it took."""

    def __init__(self, embedder, tempo_rates: Sequence[float] = (1.0,)):
        self.embedder = embedder
        self.tempo_rates = tuple(tempo_rates)
        self._key: str | None = None
        self._value: tuple["QueryEmbedding", float] | None = None

    def embed(self, audio: np.ndarray) -> tuple["QueryEmbedding", float]:
        """audio [time] -> (its QueryEmbedding, milliseconds it took)."""
        key = hashlib.sha1(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()
        if key != self._key or self._value is None:
            start = time.perf_counter()
            q = self.embedder.embed_query(audio, self.tempo_rates)
            self._value = (q, 1000.0 * (time.perf_counter() - start))
            self._key = key
        return self._value


class ModelSystem(RankingSystem):
    """The learned encoder + window index, answered by the server's retrieval library.

    `Retriever.identify(audio)`: the melody gate, then the embedding, then `identify_embeddings(...)`;
    with several aggregations of one model the query is embedded once (SharedQueryEmbedding, with the
    retrievers' tempo views, passed as `embed=`) and each aggregation reports gate + embed + search +
    aggregate time.
    """

    def __init__(self, retriever: "Retriever", name: str, description: str = "",
                 shared: SharedQueryEmbedding | None = None):
        if shared is not None and shared.tempo_rates != tuple(retriever.config.query_tempo_rates):
            raise ValueError(f"the shared query embedding uses tempo views {shared.tempo_rates}, the "
                             f"retriever {retriever.config.query_tempo_rates}")
        self.retriever = retriever
        self.name = name
        self.description = description
        self.shared = shared

    def rank(self, audio: np.ndarray, top_k: int) -> "RetrievalResult":
        if self.shared is None:
            return self.retriever.identify(audio, top_k=top_k)
        made_in_ms: list[float] = []

        def embed(a: np.ndarray) -> "QueryEmbedding":
            q, ms = self.shared.embed(a)
            made_in_ms.append(ms)
            return q

        result = self.retriever.identify(audio, top_k=top_k, embed=embed)
        if made_in_ms:  # a cached embedding reports the time it took to make, as if made here
            result.timings_ms["total"] += made_in_ms[0] - result.timings_ms["embed"]
            result.timings_ms["embed"] = made_in_ms[0]
        return result

    def latency_ms(self, result: "RetrievalResult", wall_ms: float) -> float:
        return float(result.timings_ms.get("total", wall_ms))


def make_result(
    track_ids: Sequence[str],
    scores: np.ndarray,
    tracks_by_id: dict[str, Track],
    *,
    top_k: int,
    audio_seconds: float,
    offsets_s: np.ndarray | None = None,
    threshold: float | None = None,
    timings_ms: dict[str, float] | None = None,
) -> "RetrievalResult":
    """A `RetrievalResult` from one score per catalogue track (higher = better).

    track_ids: [n]; scores: float [n] (-inf for a track that cannot match); offsets_s: [n] or None.
    A system without a no-match decision passes threshold=None: it always answers.
    """
    from serving.retrieval_types import Match, RetrievalResult

    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")[:top_k]
    order = [i for i in order if np.isfinite(scores[i])]
    matches = []
    for i in order:
        t = tracks_by_id[track_ids[i]]
        offset = float(offsets_s[i]) if offsets_s is not None else 0.0
        matches.append(Match(t.track_id, t.title, t.artist, float(scores[i]), offset))
    cut = -np.inf if threshold is None else float(threshold)
    no_match = not matches or matches[0].score < cut
    return RetrievalResult(
        matches=matches,
        no_match=no_match,
        threshold=cut,
        audio_seconds=audio_seconds,
        timings_ms=dict(timings_ms or {}),
    )
