"""Calibrating the no-match threshold: when is the best match too weak to be an answer?

The service must say "no match" for a hum of a song that is not in the catalogue. The decision is
`best score < threshold`. The threshold is chosen on data:

- out-of-catalogue queries (songs in none of our catalogues, e.g. the real hums in
  ../shared/data/qbh_demo, and inputs with no melody at all: `data_gen.synth.no_melody`) give the
  top-1 scores of wrong answers that must be rejected (a query the melody gate stops scores 0, as
  the server never searches it); false accepts are reported per source;
- in-catalogue queries (with their true track) give top-1 scores and whether top-1 was right.

Method "open_set_far": the lowest threshold at which at most `target_false_accept_rate` of the
out-of-catalogue queries are accepted (score >= threshold), in each of their sources. At that threshold we report the in-catalogue
true-accept rate (top-1 correct AND accepted), the in-catalogue accept rate, and the wrong-accept rate
(in-catalogue queries accepted with a wrong top-1).

The result is stored as calibration.json in the index directory, one entry per aggregation (scores of
"temporal" and "vote" live on different scales). `serving.retrieval.Retriever` reads it when
`RetrievalConfig.no_match_threshold` is None.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_gen import constants as C
from serving.index import CALIBRATION_FILE

if TYPE_CHECKING:
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

log = logging.getLogger(__name__)

CALIBRATION_FORMAT = "earworm-calibration/1"
METHOD_OPEN_SET_FAR = "open_set_far"
DEFAULT_TARGET_FALSE_ACCEPT_RATE = 0.05


class CalibrationError(ValueError):
    """Calibration data is unusable (no out-of-catalogue scores, NaNs) or calibration.json is corrupt."""


@dataclass(frozen=True)
class Calibration:
    threshold: float
    aggregation: str
    method: str
    target_false_accept_rate: float
    false_accept_rate: float
    """Measured on the out-of-catalogue scores at `threshold`."""
    true_accept_rate: float | None
    """In-catalogue: fraction with top-1 correct and score >= threshold (None without in-catalogue data)."""
    data: dict[str, Any] = field(default_factory=dict)
    """Summary of the data: counts, score quantiles, sources, accept / wrong-accept rates."""
    created: str = ""
    model_version: str = ""
    index_version: str = ""
    neighbors_per_window: int | None = None
    rerank_candidates: int | None = None
    """The retriever's effective re-ranking depth (0: none, as for "vote"); None: a calibration made
    before re-ranking existed."""
    query_tempo_rates: tuple[float, ...] | None = None
    """The retriever's tempo views of a query; None: a calibration made before tempo views existed
    (one view, the query as sung)."""
    tempo_view_penalty: float | None = None
    """The retriever's score penalty of the tempo views (None: made before tempo views existed)."""
    tempo_view_hop_seconds: float | None = None
    """How far apart the windows of the other tempo views start (`C.TEMPO_VIEW_WINDOW_HOP_SECONDS` of
    the code that calibrated); None: made when they were cut every QUERY_WINDOW_HOP_SECONDS (1 s)."""

    def retrieval_differs(self, config: "RetrievalConfig") -> str | None:
        """Why scores of a retriever with this config are not on this calibration's scale (None: they are)."""
        rerank_candidates = config.effective_rerank_candidates
        query_tempo_rates, tempo_view_penalty = config.query_tempo_rates, config.tempo_view_penalty
        if (self.rerank_candidates or 0) != rerank_candidates:
            made = ("before re-ranking existed" if self.rerank_candidates is None
                    else f"re-ranking {self.rerank_candidates} candidates")
            return f"it was made {made}, the retriever re-ranks {rerank_candidates}"
        views = tuple(self.query_tempo_rates or (1.0,))
        if views != tuple(query_tempo_rates):
            return f"it was made with tempo views {list(views)}, the retriever uses {list(query_tempo_rates)}"
        if len(views) > 1 and (self.tempo_view_penalty or 0.0) != tempo_view_penalty:
            return (f"it was made with tempo-view penalty {self.tempo_view_penalty}, the retriever uses "
                    f"{tempo_view_penalty}")
        hop = C.QUERY_WINDOW_HOP_SECONDS if self.tempo_view_hop_seconds is None else self.tempo_view_hop_seconds
        if len(views) > 1 and hop != C.TEMPO_VIEW_WINDOW_HOP_SECONDS:
            return (f"it was made with the tempo views' windows every {hop:g} s, the retriever cuts them "
                    f"every {C.TEMPO_VIEW_WINDOW_HOP_SECONDS:g} s")
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Calibration":
        try:
            return Calibration(
                threshold=float(d["threshold"]), aggregation=str(d["aggregation"]), method=str(d["method"]),
                target_false_accept_rate=float(d["target_false_accept_rate"]),
                false_accept_rate=float(d["false_accept_rate"]),
                true_accept_rate=None if d.get("true_accept_rate") is None else float(d["true_accept_rate"]),
                data=dict(d.get("data") or {}), created=str(d.get("created", "")),
                model_version=str(d.get("model_version", "")), index_version=str(d.get("index_version", "")),
                neighbors_per_window=None if d.get("neighbors_per_window") is None
                else int(d["neighbors_per_window"]),
                rerank_candidates=None if d.get("rerank_candidates") is None else int(d["rerank_candidates"]),
                query_tempo_rates=None if d.get("query_tempo_rates") is None
                else tuple(float(r) for r in d["query_tempo_rates"]),
                tempo_view_penalty=None if d.get("tempo_view_penalty") is None
                else float(d["tempo_view_penalty"]),
                tempo_view_hop_seconds=None if d.get("tempo_view_hop_seconds") is None
                else float(d["tempo_view_hop_seconds"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CalibrationError(f"incomplete calibration entry ({e!r})") from e


def _summary(scores: np.ndarray) -> dict[str, float]:
    if scores.size == 0:
        return {"count": 0}
    q = np.quantile(scores, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"count": int(scores.size), "min": float(scores.min()), "p05": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]), "max": float(scores.max())}


def threshold_at_false_accept_rate(out_scores: Sequence[float] | np.ndarray, target: float) -> float:
    """The lowest threshold t such that the fraction of `out_scores` >= t is at most `target`.

    With n scores, at most floor(target * n) of them may be accepted: t is the next float above the
    (floor(target * n) + 1)-th highest score, so ties at that score are all rejected.
    """
    out = np.sort(np.asarray(out_scores, np.float64))[::-1]
    if out.size == 0:
        raise CalibrationError("no out-of-catalogue scores: cannot bound the false-accept rate")
    if not np.all(np.isfinite(out)):
        raise CalibrationError("out-of-catalogue scores contain NaN or infinity")
    if not 0.0 <= target < 1.0:
        raise CalibrationError(f"target false-accept rate must be in [0, 1), got {target}")
    allowed = int(np.floor(target * out.size + 1e-9))
    return float(np.nextafter(out[allowed], np.inf))


def calibrate_scores(
    out_scores: Sequence[float] | np.ndarray,
    in_scores: Sequence[float] | np.ndarray | None = None,
    in_correct: Sequence[bool] | np.ndarray | None = None,
    *,
    aggregation: str,
    target_false_accept_rate: float = DEFAULT_TARGET_FALSE_ACCEPT_RATE,
    model_version: str = "",
    index_version: str = "",
    neighbors_per_window: int | None = None,
    rerank_candidates: int | None = None,
    query_tempo_rates: Sequence[float] | None = None,
    tempo_view_penalty: float | None = None,
    sources: dict[str, Any] | None = None,
    out_groups: Sequence[str] | None = None,
) -> Calibration:
    """Choose the threshold from top-1 scores. out_scores [n_out]; in_scores [n_in] with in_correct
    [n_in] (top-1 was the true track); out_groups [n_out]: where each out-of-catalogue query came from
    (e.g. "qbh_demo", "no_melody"): the threshold then keeps the false-accept rate within the target
    in every group with at least 1 / target members (the highest of their thresholds: a pile of
    easily rejected inputs must not loosen it for real hums), `false_accept_rate` is the worst of
    those groups', and each group's rate is reported (smaller groups too)."""
    out = np.asarray(out_scores, np.float64)
    groups = None if out_groups is None else np.asarray(list(out_groups), dtype=object)
    if groups is not None and groups.shape != out.shape:
        raise CalibrationError(f"out_groups {groups.shape} must match out_scores {out.shape}")
    # the target holds for every source big enough to measure it (easy negatives must not dilute
    # the hard ones); a smaller source is only reported
    big = [] if groups is None else [g for g in sorted(set(groups.tolist()))
                                     if (groups == g).sum() * max(target_false_accept_rate, 1e-9) >= 1.0]
    if big:
        threshold = max(threshold_at_false_accept_rate(out[groups == g], target_false_accept_rate) for g in big)
        far = max(float(np.mean(out[groups == g] >= threshold)) for g in big)
    else:
        threshold = threshold_at_false_accept_rate(out, target_false_accept_rate)
        far = float(np.mean(out >= threshold))
    data: dict[str, Any] = {"out_of_catalogue": _summary(out), "sources": sources or {}}
    if groups is not None:
        data["false_accepts_by_group"] = {
            str(g): {"count": int((groups == g).sum()), "false_accept_rate": float(np.mean(out[groups == g] >= threshold)),
                     "sets_threshold": g in big}
            for g in sorted(set(groups.tolist()))}
    tar = None
    if in_scores is not None:
        ins = np.asarray(in_scores, np.float64)
        correct = np.ones(ins.shape, bool) if in_correct is None else np.asarray(in_correct, bool)
        if correct.shape != ins.shape:
            raise CalibrationError(f"in_correct {correct.shape} must match in_scores {ins.shape}")
        if not np.all(np.isfinite(ins)):
            raise CalibrationError("in-catalogue scores contain NaN or infinity")
        data["in_catalogue"] = _summary(ins)
        if ins.size:
            accepted = ins >= threshold
            tar = float(np.mean(accepted & correct))
            data["in_catalogue"].update({
                "top1_accuracy": float(np.mean(correct)),
                "accept_rate": float(np.mean(accepted)),
                "wrong_accept_rate": float(np.mean(accepted & ~correct)),
            })
    return Calibration(
        threshold=threshold, aggregation=aggregation, method=METHOD_OPEN_SET_FAR,
        target_false_accept_rate=float(target_false_accept_rate), false_accept_rate=far,
        true_accept_rate=tar, data=data,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        model_version=model_version, index_version=index_version,
        neighbors_per_window=neighbors_per_window, rerank_candidates=rerank_candidates,
        query_tempo_rates=None if query_tempo_rates is None else tuple(float(r) for r in query_tempo_rates),
        tempo_view_penalty=tempo_view_penalty, tempo_view_hop_seconds=C.TEMPO_VIEW_WINDOW_HOP_SECONDS,
    )


# --- the file -------------------------------------------------------------------------------------

def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"{path}: unreadable ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != CALIBRATION_FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else None
        raise CalibrationError(f"{path}: format {got!r}, expected {CALIBRATION_FORMAT!r}")
    if not isinstance(raw.get("entries"), dict):
        raise CalibrationError(f"{path}: no 'entries' object")
    return raw


def save_calibration(index_dir: str | os.PathLike[str], calibration: Calibration) -> Path:
    """Write/merge `calibration` into index_dir/calibration.json (one entry per aggregation; entries
    of other aggregations for the same model are kept). Returns the file's path."""
    path = Path(index_dir) / CALIBRATION_FILE
    entries: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = _read_file(path)
            if raw.get("model_version") == calibration.model_version:
                entries = raw["entries"]
            else:
                log.info("replacing %s (calibrated for model %r)", path, raw.get("model_version"))
        except CalibrationError as e:
            log.warning("replacing a corrupt calibration file: %s", e)
    entries[calibration.aggregation] = calibration.to_json()
    doc = {"format": CALIBRATION_FORMAT, "model_version": calibration.model_version,
           "index_version": calibration.index_version, "created": calibration.created, "entries": entries}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    log.info("saved the %s no-match threshold %.4f to %s", calibration.aggregation, calibration.threshold, path)
    return path


def load_calibration(index_dir: str | os.PathLike[str], aggregation: str) -> Calibration | None:
    """The calibration for `aggregation` in index_dir, or None when there is none.
    Raises CalibrationError for a corrupt file."""
    path = Path(index_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    entry = _read_file(path)["entries"].get(aggregation)
    return None if entry is None else Calibration.from_json(entry)


# --- calibrating a retriever on audio -------------------------------------------------------------

def top1_scores(retriever: "Retriever", audios: Iterable[np.ndarray],
                expected: Iterable[str | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 score per query and whether top-1 is the `expected` track id (False when expected is
    None). Queries with no hit at all score 0."""
    scores, correct = [], []
    expected_iter = iter(expected) if expected is not None else None
    for audio in audios:
        want = next(expected_iter) if expected_iter is not None else None
        best = retriever.identify(audio, top_k=1).best
        scores.append(best.score if best else 0.0)
        correct.append(bool(best and want is not None and best.track_id == want))
    return np.asarray(scores, np.float64), np.asarray(correct, bool)


def calibrate_retriever(retriever: "Retriever", out_of_catalogue: Iterable[np.ndarray],
                        in_catalogue: Iterable[tuple[np.ndarray, str]] = (), *,
                        target_false_accept_rate: float = DEFAULT_TARGET_FALSE_ACCEPT_RATE,
                        sources: dict[str, Any] | None = None,
                        out_groups: Sequence[str] | None = None) -> Calibration:
    """Run the retriever on audio (float32 [time] at SAMPLE_RATE) and choose its threshold
    (`retriever.identify`: its melody gate stops inputs with no melody, which then score 0).
    out_groups: the source of each out-of-catalogue recording (false accepts are reported per source)."""
    out_scores, _ = top1_scores(retriever, out_of_catalogue)
    pairs = list(in_catalogue)
    in_scores, in_correct = top1_scores(retriever, (a for a, _ in pairs), (t for _, t in pairs))
    return calibrate_scores(
        out_scores, in_scores if pairs else None, in_correct if pairs else None,
        aggregation=retriever.config.aggregation, target_false_accept_rate=target_false_accept_rate,
        model_version=retriever.index.metadata.model_version, index_version=retriever.index.version,
        neighbors_per_window=retriever.config.neighbors_per_window,
        rerank_candidates=retriever.rerank_candidates, query_tempo_rates=retriever.config.query_tempo_rates,
        tempo_view_penalty=retriever.config.tempo_view_penalty, sources=sources, out_groups=out_groups,
    )


def qbh_demo_hums(shared_data: str | os.PathLike[str] | None = None) -> list[Path]:
    """Paths of the real hums in ../shared/data/qbh_demo (songs in none of our catalogues: the
    out-of-catalogue set). Raises FileNotFoundError when the folder is absent."""
    import csv

    from data_gen.paths import shared_data_dir

    root = Path(shared_data) if shared_data else shared_data_dir()
    manifest = root / "qbh_demo" / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"qbh_demo hums not found: {manifest}")
    with manifest.open(newline="", encoding="utf-8") as f:
        return [(manifest.parent / row["path"]).resolve() for row in csv.DictReader(f)]
