"""Retrieval metrics over the ranked answers of one system on one query set.

Every system (the learned model through `serving.retrieval.Retriever`, and each baseline) is
reduced to one `QueryOutcome` per query, so the same code scores them all:

- ranking metrics over queries whose song is in the catalogue: MRR@10 (reciprocal rank of the true
  track when it is in the top 10, else 0), hit@1/5/10, a histogram of the true track's rank;
- the accepted top-1 rate: top answer correct *and* not flagged "no match" (what a user sees);
- open-set false accepts over queries whose song is not in the catalogue: the share whose top answer
  is not "no match";
- a threshold calibrated from in-catalogue queries alone (`impostor_threshold`): the score that the
  best *wrong* track exceeds on only `target_far` of in-catalogue queries. Applying the same rule to
  every system makes their open-set false-accept rates comparable even when a system has no
  no-match decision of its own;
- latency percentiles (per query, wall clock of the system's answer, audio decoding excluded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MRR_CUTOFF = 10
HIT_KS = (1, 5, 10)
LENGTH_BUCKETS_S = (0.0, 4.0, 6.0, 8.0, 10.0, 15.0, math.inf)
"""Edges of the query-length buckets in seconds: [0, 4), [4, 6), ..., [15, inf)."""
DEFAULT_TARGET_FAR = 0.05
NO_MELODY = "no_melody"
"""`QueryOutcome.reason` of a query the melody gate stopped (`serving.retrieval_types.NO_MELODY`)."""
UNKNOWN_KIND = "unspecified"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class QueryOutcome:
    """The answer of one system to one query, reduced to what the metrics need.

    ranked: track ids, best first (at most top_k); scores: the same length, higher = better.
    true_track: None for an open-set query (its song is not in the catalogue).
    no_match: the system's own "no match" decision (False for systems without one).
    error: set when the system could not answer (e.g. undecodable audio); counts as a miss.
    """

    query_id: str
    true_track: str | None
    kind: str
    duration_s: float
    ranked: tuple[str, ...]
    scores: tuple[float, ...]
    no_match: bool
    latency_ms: float
    crop_s: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    reason: str = ""
    """Why no_match, where the system says (the model: "below_threshold" or "no_melody")."""

    @property
    def in_catalogue(self) -> bool:
        return self.true_track is not None

    @property
    def rank(self) -> int | None:
        """1-based rank of the true track among the ranked answers; None if absent or open set."""
        if self.true_track is None:
            return None
        try:
            return self.ranked.index(self.true_track) + 1
        except ValueError:
            return None

    @property
    def top_score(self) -> float | None:
        return self.scores[0] if self.scores else None

    @property
    def impostor_score(self) -> float | None:
        """Best score of a wrong track (for in-catalogue queries); None when none was ranked."""
        for tid, score in zip(self.ranked, self.scores):
            if tid != self.true_track:
                return score
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_id": self.query_id,
            "true_track": self.true_track,
            "kind": self.kind,
            "duration_s": round(self.duration_s, 3),
            "crop_s": self.crop_s,
            "rank": self.rank,
            "ranked": list(self.ranked),
            "scores": [round(float(s), 5) for s in self.scores],
            "no_match": self.no_match,
            "latency_ms": round(self.latency_ms, 2),
            "error": self.error,
            "reason": self.reason,
        }


def length_bucket(duration_s: float, edges: Sequence[float] = LENGTH_BUCKETS_S) -> str:
    """'4-6s' style label of the bucket holding `duration_s` (last bucket: '15s+'; NaN: 'unreadable')."""
    if not math.isfinite(duration_s):
        return UNREADABLE
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo <= duration_s < hi:
            return f"{lo:g}s+" if math.isinf(hi) else f"{lo:g}-{hi:g}s"
    return f"{edges[-1]:g}s+"


def reciprocal_rank(rank: int | None, cutoff: int = MRR_CUTOFF) -> float:
    return 1.0 / rank if rank is not None and rank <= cutoff else 0.0


def ranking_metrics(outcomes: Sequence[QueryOutcome]) -> dict[str, Any]:
    """MRR@10, hit@k and accepted top-1 over in-catalogue outcomes (others are ignored)."""
    inset = [o for o in outcomes if o.in_catalogue]
    n = len(inset)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out
    ranks = [o.rank for o in inset]
    out[f"mrr@{MRR_CUTOFF}"] = float(np.mean([reciprocal_rank(r) for r in ranks]))
    for k in HIT_KS:
        out[f"hit@{k}"] = float(np.mean([r is not None and r <= k for r in ranks]))
    out["accepted_top1"] = float(np.mean([r == 1 and not o.no_match for r, o in zip(ranks, inset)]))
    out["errors"] = sum(o.error is not None for o in inset)
    return out


def open_set_metrics(outcomes: Sequence[QueryOutcome], threshold: float | None = None) -> dict[str, Any]:
    """False accepts over open-set outcomes: own decision, and at `threshold` when given."""
    openset = [o for o in outcomes if not o.in_catalogue]
    out: dict[str, Any] = {"n": len(openset)}
    if not openset:
        return out
    out["false_accept_rate"] = float(np.mean([not o.no_match and o.error is None for o in openset]))
    if threshold is not None:
        out["threshold"] = float(threshold)
        out["false_accept_rate_at_threshold"] = float(
            np.mean([o.top_score is not None and o.top_score >= threshold for o in openset])
        )
    top = [o.top_score for o in openset if o.top_score is not None]
    if top:
        out["top_score_median"] = float(np.median(top))
    out["errors"] = sum(o.error is not None for o in openset)
    return out


def impostor_threshold(outcomes: Iterable[QueryOutcome], target_far: float = DEFAULT_TARGET_FAR) -> float | None:
    """Score threshold that the best wrong track reaches on only `target_far` of in-catalogue queries.

    The best wrong answer to an in-catalogue query stands in for the top answer to a query whose
    song is missing, so the threshold needs no open-set data. None without in-catalogue scores.
    """
    scores = [o.impostor_score for o in outcomes if o.in_catalogue and o.impostor_score is not None]
    if not scores:
        return None
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - target_far))


def accepted_at_threshold(outcomes: Sequence[QueryOutcome], threshold: float) -> float | None:
    """Share of in-catalogue queries whose top answer is right and scores >= threshold."""
    inset = [o for o in outcomes if o.in_catalogue]
    if not inset:
        return None
    return float(np.mean([o.rank == 1 and (o.top_score or -math.inf) >= threshold for o in inset]))


def rank_histogram(outcomes: Sequence[QueryOutcome], cutoff: int = MRR_CUTOFF) -> dict[str, int]:
    """Counts of the true track's rank 1..cutoff and 'miss' (not ranked in the top answers)."""
    hist = {str(r): 0 for r in range(1, cutoff + 1)}
    hist["miss"] = 0
    for o in outcomes:
        if not o.in_catalogue:
            continue
        r = o.rank
        hist[str(r) if r is not None and r <= cutoff else "miss"] += 1
    return hist


def latency_metrics(outcomes: Sequence[QueryOutcome]) -> dict[str, float]:
    lat = np.asarray([o.latency_ms for o in outcomes if o.error is None], dtype=np.float64)
    if lat.size == 0:
        return {}
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "mean_ms": float(lat.mean()),
    }


def _grouped(outcomes: Sequence[QueryOutcome], key) -> dict[str, list[QueryOutcome]]:
    groups: dict[str, list[QueryOutcome]] = {}
    for o in outcomes:
        groups.setdefault(key(o), []).append(o)
    return dict(sorted(groups.items()))


def _bucket_sort_key(label: str) -> float:
    return math.inf if label == UNREADABLE else float(label.split("-")[0].rstrip("s+"))


def summarize(
    outcomes: Sequence[QueryOutcome],
    *,
    open_set_threshold: float | None = None,
    target_far: float = DEFAULT_TARGET_FAR,
) -> dict[str, Any]:
    """All metrics of one system on one set of outcomes (one crop length).

    open_set_threshold: a score threshold to also report false accepts at (e.g. calibrated on
    another query set); the threshold calibrated from this set's in-catalogue queries is reported
    as `calibration` in any case.
    """
    outcomes = list(outcomes)
    calibrated = impostor_threshold(outcomes, target_far)
    threshold = open_set_threshold if open_set_threshold is not None else calibrated
    summary: dict[str, Any] = {
        "num_queries": len(outcomes),
        # queries the melody gate answered "no melody" (they never reached retrieval)
        "no_melody": sum(o.reason == NO_MELODY for o in outcomes),
        "in_catalogue": ranking_metrics(outcomes),
        "open_set": open_set_metrics(outcomes, threshold),
        "calibration": {
            "target_far": target_far,
            "impostor_threshold": calibrated,
            "accepted_top1_at_threshold": (
                accepted_at_threshold(outcomes, calibrated) if calibrated is not None else None
            ),
        },
        "latency": latency_metrics(outcomes),
        "rank_histogram": rank_histogram(outcomes),
        "by_kind": {
            kind: ranking_metrics(group) | {"open_set": open_set_metrics(group, threshold)}
            for kind, group in _grouped(outcomes, lambda o: o.kind).items()
        },
    }
    by_length = _grouped(outcomes, lambda o: length_bucket(o.duration_s))
    summary["by_length"] = {
        label: ranking_metrics(by_length[label]) for label in sorted(by_length, key=_bucket_sort_key)
    }
    return summary
