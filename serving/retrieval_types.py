"""The retrieval library's small shared types and defaults: the query's embedded windows, the
retrieval configuration, a ranked answer, and the no-match reasons.

They sit apart from `serving.retrieval` (the aggregation and the `Retriever`) so that the embedder,
the servicer, the evaluation and the apps can name them without importing the retrieval machinery;
this module imports nothing from the project but `serving.melody_gate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from serving.melody_gate import MelodyCheck, MelodyGateConfig

AGGREGATIONS = ("temporal", "vote")
DEFAULT_NO_MATCH_THRESHOLD = 0.5
"""Used when neither the config nor a calibration file gives a threshold. Deliberately conservative
(high): with unit-norm embeddings a score is a mean similarity in [0, 1]; an exact excerpt scores close
to 1, unrelated audio with an untrained or trained model rarely keeps half of its windows aligned and
similar. Calibrate (serving.calibration) for a real operating point."""
DEFAULT_TEMPO_RATIOS = (0.75, 0.87, 1.0, 1.15, 1.33)
"""Master seconds per query second that the temporal aggregation tries (sung 25 % slower .. faster)."""
DEFAULT_TEMPO_VIEW_PENALTY = 0.36
"""Score penalty per unit of |ln rate| of a tempo view. Measured (`earworm eval`, MRR@10, views 0.8x /
1x / 1.25x, each aligned with DEFAULT_TEMPO_RATIOS): 0 gave synthetic-10k 0.650 and mir1k-cross 0.788
(real singing, at the record's tempo, where one view gave 0.834); 0.36 (0.08 at 0.8x / 1.25x) gave
0.662 and 0.832."""
DEFAULT_VIEW_TEMPO_RATIOS = (0.87, 1.0, 1.15)
"""The temporal aggregation's tempo ratios within each view of a query embedded in several tempo views
(the views already cover the wider range: with the default views, 0.70-1.44 in all). Measured against
DEFAULT_TEMPO_RATIOS in every view (`earworm eval`, MRR@10): synthetic-1k 0.817 vs 0.811,
synthetic-10k 0.678 vs 0.662, mir1k-cross 0.840 vs 0.832, and a fifth less aggregation work."""
DEFAULT_QUERY_TEMPO_RATES = (1.0, 0.8, 1.25)
"""Tempo views of a query (`data_gen.windows.tempo_view`: how many times longer the view plays). The
encoder hears the notes' durations, so a window of a query sung much slower or faster than the record
matches its master window less well; the view closest to the master's tempo restores it."""


def parse_tempo_rates(text: str) -> tuple[float, ...]:
    """"1,0.8,1.25" -> (1.0, 0.8, 1.25): tempo views for a command-line flag (ValueError when bad)."""
    rates = tuple(float(v) for v in text.split(",") if v.strip())
    RetrievalConfig(query_tempo_rates=rates)  # raises ValueError unless distinct and positive
    return rates


class ModelMismatchError(ValueError):
    """The embedder's model is not the one the index was built with (scores would be meaningless)."""


@dataclass(frozen=True)
class QueryEmbedding:
    """The embedded windows of one query: emb [n, d] float32, offsets_s [n] (window starts, seconds
    in their view's own time), views [n] int (index into the tempo rates the query was cut with)."""

    emb: np.ndarray
    offsets_s: np.ndarray
    views: np.ndarray


class EmbedderLike(Protocol):
    """What the retriever needs from `serving.embedder.Embedder` (tests pass small fakes)."""

    @property
    def version(self) -> str: ...

    def embed_query(self, audio: np.ndarray, tempo_rates: Sequence[float] = (1.0,)) -> QueryEmbedding: ...


@dataclass(frozen=True)
class RetrievalConfig:
    top_k: int = 10
    neighbors_per_window: int = 100
    aggregation: str = "temporal"
    """"temporal" (time-consistent alignment) or "vote" (order-free)."""
    no_match_threshold: float | None = None
    """None: read from the index's calibration.json (else DEFAULT_NO_MATCH_THRESHOLD, with a warning)."""
    tempo_ratios: tuple[float, ...] = DEFAULT_TEMPO_RATIOS
    """Master seconds per query second that the temporal aggregation tries for a query in one view."""
    view_tempo_ratios: tuple[float, ...] = DEFAULT_VIEW_TEMPO_RATIOS
    """The same within each view of a query embedded in several tempo views."""
    query_tempo_rates: tuple[float, ...] = DEFAULT_QUERY_TEMPO_RATES
    """Tempo views the query is embedded in (1.0 = as sung); each is aggregated, re-ranked and scored
    on its own and a track keeps its best view. (1.0,) = one view, a third of the embedding work."""
    tempo_view_penalty: float = DEFAULT_TEMPO_VIEW_PENALTY
    """A view's scores are lowered by this times |ln rate| (0.08 for the 0.8x and 1.25x views): a prior
    that the singer is at the record's tempo, so a changed tempo must match clearly better to win."""
    offset_bin_seconds: float | None = None
    """Start bins of the temporal aggregation; None: half the index's master hop (0.5 s at 1 s)."""
    offset_tolerance_bins: int = 1
    rerank_candidates: int = 50
    """"temporal" only: re-score this many best tracks by exact alignment over all their windows
    (`rerank_temporal`); 0 = off."""
    rerank_step_seconds: float | None = None
    """Grid of query start positions in the master that the re-ranking tries; None: half the
    index's master hop."""
    rerank_tolerance_seconds: float | None = None
    """A query window may match a master window up to this far from its aligned position; None:
    half the index's master hop (the farthest a true alignment lies from its nearest window)."""
    melody_gate: MelodyGateConfig | None = MelodyGateConfig()
    """Audio with no melody in it (a steady tone, noise, clicks, speech) is answered "no melody"
    before any embedding (`serving.melody_gate`); None: every query is searched."""

    @property
    def effective_rerank_candidates(self) -> int:
        """How many first-stage tracks are re-scored (0 for "vote", which is order-free by design)."""
        return self.rerank_candidates if self.aggregation == "temporal" else 0

    def for_master_hop(self, hop_seconds: float) -> RetrievalConfig:
        """This config with every alignment grid left at None set from the index's master hop:
        master windows `hop_seconds` apart put a true alignment up to half a hop from a window."""
        half = hop_seconds / 2
        return replace(self, offset_bin_seconds=half if self.offset_bin_seconds is None else self.offset_bin_seconds,
                       rerank_step_seconds=half if self.rerank_step_seconds is None else self.rerank_step_seconds,
                       rerank_tolerance_seconds=(half if self.rerank_tolerance_seconds is None
                                                 else self.rerank_tolerance_seconds))

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.top_k < 1 or self.neighbors_per_window < 1:
            raise ValueError("top_k and neighbors_per_window must be >= 1")
        if not self.tempo_ratios or min(self.tempo_ratios) <= 0:
            raise ValueError("tempo_ratios must be positive")
        if not self.view_tempo_ratios or min(self.view_tempo_ratios) <= 0:
            raise ValueError("view_tempo_ratios must be positive")
        if (not self.query_tempo_rates or min(self.query_tempo_rates) <= 0
                or len(set(self.query_tempo_rates)) != len(self.query_tempo_rates)):
            raise ValueError(f"query_tempo_rates must be distinct positive rates, got {self.query_tempo_rates}")
        if not self.tempo_view_penalty >= 0:
            raise ValueError(f"tempo_view_penalty must be >= 0, got {self.tempo_view_penalty}")
        if (self.offset_bin_seconds is not None and self.offset_bin_seconds <= 0) or self.offset_tolerance_bins < 0:
            raise ValueError("offset_bin_seconds must be > 0 and offset_tolerance_bins >= 0")
        if (self.rerank_candidates < 0 or (self.rerank_step_seconds is not None and self.rerank_step_seconds <= 0)
                or (self.rerank_tolerance_seconds is not None and self.rerank_tolerance_seconds < 0)):
            raise ValueError("rerank_candidates must be >= 0, rerank_step_seconds > 0 and "
                             "rerank_tolerance_seconds >= 0")


@dataclass(frozen=True)
class Match:
    track_id: str
    title: str
    artist: str
    score: float
    offset_s: float
    """Where in the master the query's start aligns (seconds)."""
    tempo_ratio: float = 1.0
    """How many times longer the master plays the melody than the query (the tempo view it was
    found in): query second t lies at offset_s + t * tempo_ratio in the master."""


NO_MATCH_BELOW_THRESHOLD = "below_threshold"
"""`RetrievalResult.reason`: the best match scored below the no-match threshold."""
NO_MELODY = "no_melody"
"""`RetrievalResult.reason`: the query holds no melody (`serving.melody_gate`); nothing was searched."""


@dataclass(frozen=True)
class RetrievalResult:
    matches: list[Match]
    no_match: bool
    threshold: float
    audio_seconds: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    """"melody" (the gate), "embed" (identify only), "search", "aggregate", "total"."""
    reason: str = ""
    """Why `no_match`: NO_MATCH_BELOW_THRESHOLD or NO_MELODY ("" when there is a match)."""
    melody: MelodyCheck | None = None
    """What the melody gate measured (None when it did not run)."""

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None
