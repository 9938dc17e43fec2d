"""`earworm eval --explain`: why the model missed, query by query (the failure table).

For every in-catalogue query whose true track is not ranked first by the model (the first model
system of the run, e.g. `earworm-temporal`), the table gives:

- the true track's rank (or "–" beyond the list), its exact score (`Retriever.score_track`, the
  re-ranking score, on the scale of the answers) against the winner's;
- from the pitch tracks (CREPE, the project's default extractor): the hum's voiced fraction and its
  intonation spread (how far its steady frames sit from the nearest semitone of its own tuning, in
  cents); the master's voiced fraction (predominant pitch of the *mix*); and the best rigid alignment
  of the hum's contour onto the master's — tempo ratio (master seconds per hum second), where in the
  master it lands, and how well the contours agree there (mean pitch-class distance in semitones,
  octave errors forgiven), which says whether the master's pitch track even carries the hummed tune;
- a likely cause, by simple rules on those figures;
- a plot per miss (OUT/failures/<query>.png): the hum's contour laid over the master's at that
  alignment, to check by eye.

Writes OUT/failures.md and OUT/failures.jsonl; `evaluate` appends the table to report.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_gen import constants as C

log = logging.getLogger(__name__)

FRAME_S = 0.05
"""Contour grid of the alignment (the melody-DTW baseline's)."""
TEMPO_RATIOS = np.geomspace(0.5, 2.0, 41)
COST_CAP = 3.0
TEMPO_PRIOR = 0.3
"""Semitones of contour distance a tempo ratio r costs per unit of |ln r| when choosing the alignment:
a squeezed or stretched hum meets fewer master frames and fits by chance more easily. On adc2004's 60
synthesized queries, whose tempo is known, the estimate was within 10 % for 44 of them with this
prior and 36 without."""
ALIGNMENT_FAILED = 1.5
"""Mean pitch-class distance (semitones) above which the contours do not agree anywhere."""


@dataclass(frozen=True)
class Miss:
    query_id: str
    kind: str
    true_track: str
    rank: int | None
    true_score: float
    winner: str | None
    winner_score: float | None
    true_offset_s: float
    hum_voiced: float
    intonation_spread_cents: float | None
    master_voiced: float
    master_seconds: float
    tempo_ratio: float | None
    aligned_start_s: float | None
    contour_distance: float | None
    cause: str


def _contour(extractor: Any, audio: np.ndarray) -> tuple[np.ndarray, float]:
    """MIDI contour on the FRAME_S grid (NaN where unvoiced) and the voiced fraction."""
    from training.evaluation.baselines.note_histogram import coarse_pitch

    track = coarse_pitch(extractor, audio, FRAME_S)
    return track.f0_midi(), float(track.voiced.mean()) if len(track) else 0.0


def intonation_spread(midi: np.ndarray) -> float | None:
    """Median distance (cents) of the voiced frames from the nearest semitone of the contour's own
    tuning (its circular-mean offset): ~10-20 for a steady singer, 30+ for a wavering one."""
    v = midi[np.isfinite(midi)]
    if v.size < 10:
        return None
    angle = 2 * np.pi * v
    tuning = np.angle(np.mean(np.exp(1j * angle))) / (2 * np.pi)
    dev = (v - tuning + 0.5) % 1.0 - 0.5
    return float(np.median(np.abs(dev)) * 100.0)


def align_contours(hum: np.ndarray, master: np.ndarray, ratios: np.ndarray = TEMPO_RATIOS
                   ) -> tuple[float, float, float] | None:
    """Best rigid alignment of the hum's contour onto the master's (both on the FRAME_S grid, NaN =
    unvoiced): (tempo ratio = master s per hum s, start in the master s, mean pitch-class distance in
    semitones at the best transposition). Only alignments where at least half of the hum's voiced
    frames meet a voiced master frame count; the best is the lowest distance + TEMPO_PRIOR x |ln r|.
    None when there is no such alignment."""
    h_idx = np.flatnonzero(np.isfinite(hum))
    if h_idx.size < 10 or np.isfinite(master).sum() < 10:
        return None
    best: tuple[float, float, float] | None = None
    best_key = np.inf
    for r in ratios:
        pos = np.rint(h_idx * r).astype(np.int64)  # hum frame -> master frame offset
        span = int(pos[-1]) + 1
        n_starts = master.size - span + 1 + span // 2  # the hum may run off the end by half
        if n_starts <= 0:
            continue
        starts = np.arange(-(span // 4), n_starts - span // 4)
        cols = starts[:, None] + pos[None, :]
        inside = (cols >= 0) & (cols < master.size)
        m = np.where(inside, master[np.clip(cols, 0, master.size - 1)], np.nan)
        d = hum[h_idx][None, :] - m
        ok = np.isfinite(d)
        enough = ok.sum(axis=1) >= 0.5 * h_idx.size
        if not enough.any():
            continue
        angle = np.where(ok, 2 * np.pi * d / 12.0, 0.0)
        shift = np.angle(np.where(ok, np.exp(1j * angle), 0).sum(axis=1)) * 12.0 / (2 * np.pi)
        resid = np.abs((d - shift[:, None] + 6.0) % 12.0 - 6.0)
        cost = np.where(ok, np.minimum(resid, COST_CAP), 0.0).sum(axis=1) / np.maximum(ok.sum(axis=1), 1)
        cost = np.where(enough, cost, np.inf)
        j = int(np.argmin(cost))
        if np.isfinite(cost[j]) and (best is None or cost[j] + TEMPO_PRIOR * abs(np.log(r)) < best_key):
            best, best_key = (float(r), float(starts[j] * FRAME_S), float(cost[j])), cost[j] + TEMPO_PRIOR * abs(np.log(r))
    return best


def _tempo_span(retriever: Any) -> tuple[float, float]:
    """The master-seconds-per-query-second range the retriever's tempo views and alignments cover."""
    cfg = retriever.config
    rates = cfg.query_tempo_rates
    ratios = cfg.tempo_ratios if len(rates) == 1 else cfg.view_tempo_ratios
    return min(rates) * min(ratios), max(rates) * max(ratios)


def likely_cause(m: Miss, tempo_views: tuple[float, float] = (0.7, 1.44)) -> str:
    """tempo_views: the range of tempo ratios the retrieval covers (`_tempo_span`)."""
    causes = []
    if m.hum_voiced < 0.4:
        causes.append(f"little pitched sound in the query ({m.hum_voiced:.0%} voiced)")
    if m.intonation_spread_cents is not None and m.intonation_spread_cents > 30:
        causes.append(f"wavering intonation ({m.intonation_spread_cents:.0f} cents off its own semitones)")
    if m.contour_distance is None or m.contour_distance > ALIGNMENT_FAILED:
        causes.append("the master's pitch track does not carry the hummed tune (melody buried in the mix, "
                      "or the query is another part of the song)")
    elif m.tempo_ratio is not None and not tempo_views[0] <= m.tempo_ratio <= tempo_views[1]:
        causes.append(f"sung at {1 / m.tempo_ratio:.2f}x the record's tempo, beyond the tempo views")
    if not causes:
        causes.append("the model: the melody is there and aligns, but the embeddings of query and "
                      "master disagree")
    return "; ".join(causes)


def explain_misses(retriever: Any, queries: list, tracks: dict[str, Any], outcomes: list,
                   out_dir: Path, plots: bool = True) -> list[Miss]:
    """One `Miss` per in-catalogue query not answered first (outcomes of the model, full queries)."""
    from data_gen.audio import AudioError, load_audio
    from data_gen.pitch import default_extractor

    extractor = default_extractor()
    by_id = {q.query_id: q for q in queries}
    misses: list[Miss] = []
    master_cache: dict[str, tuple[np.ndarray, float, float]] = {}
    for o in outcomes:
        if o.true_track is None or o.rank == 1 or o.error or o.query_id not in by_id:
            continue
        q = by_id[o.query_id]
        try:
            audio = load_audio(q.path)
            if o.true_track not in master_cache:
                master = load_audio(tracks[o.true_track].path, max_seconds=C.MAX_MASTER_SECONDS)
                contour, voiced = _contour(extractor, master)
                master_cache[o.true_track] = (contour, voiced, master.size / C.SAMPLE_RATE)
        except (AudioError, KeyError) as e:
            log.warning("explain: %s: %s", o.query_id, e)
            continue
        gated = o.reason == "no_melody"  # never searched: its cause is the gate's verdict
        try:
            true_score, true_offset = (0.0, 0.0) if gated else retriever.score_track(retriever.embed(audio),
                                                                                      o.true_track)
        except KeyError:  # the true master is not in the index (indexing could not read it)
            log.warning("explain: %s: its track %s is not in the index", o.query_id, o.true_track)
            true_score, true_offset = 0.0, 0.0
        hum, hum_voiced = _contour(extractor, audio)
        m_contour, m_voiced, m_seconds = master_cache[o.true_track]
        aligned = align_contours(hum, m_contour)
        miss = Miss(
            o.query_id, o.kind, o.true_track, o.rank, round(true_score, 4),
            o.ranked[0] if o.ranked else None, round(o.scores[0], 4) if o.scores else None,
            round(true_offset, 2), round(hum_voiced, 3),
            None if (s := intonation_spread(hum)) is None else round(s, 1), round(m_voiced, 3), round(m_seconds, 2),
            None if aligned is None else round(aligned[0], 3), None if aligned is None else round(aligned[1], 2),
            None if aligned is None else round(aligned[2], 2), "")
        cause = (f"stopped by the melody gate: {retriever.check_melody(audio)[0].why}" if gated
                 else likely_cause(miss, _tempo_span(retriever)))
        miss = Miss(**{**asdict(miss), "cause": cause})
        misses.append(miss)
        if plots:
            _plot(out_dir / "failures" / f"{o.query_id}.png", miss, hum, m_contour)
    return misses


def _plot(path: Path, miss: Miss, hum: np.ndarray, master: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    t_master = np.arange(master.size) * FRAME_S
    ax.plot(t_master, master, ".", ms=2, color="0.5", label=f"master {miss.true_track} (pitch of the mix)")
    if miss.tempo_ratio is not None:
        t_hum = (miss.aligned_start_s or 0.0) + np.arange(hum.size) * FRAME_S * miss.tempo_ratio
        v = np.isfinite(hum)
        d = hum[v][:, None] - np.interp(t_hum[v], t_master, np.nan_to_num(master, nan=np.nanmedian(master)))[:, None]
        shift = 12.0 * np.round(np.median(d) / 12.0)  # show the hum in the master's octave
        ax.plot(t_hum, hum - shift, ".", ms=2, color="C3",
                label=f"query {miss.query_id} (x{miss.tempo_ratio:.2f}, {-shift:+.0f} st)")
    ax.set_xlabel("master time (s)")
    ax.set_ylabel("MIDI pitch")
    rank = miss.rank if miss.rank is not None else "–"
    ax.set_title(f"{miss.query_id}: rank {rank}, score {miss.true_score:.3f} vs {miss.winner_score}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cause_kind(cause: str) -> str:
    """A cause without its figures, for counting: "sung at 1.74x the record's tempo, beyond the tempo
    views" -> "sung at another tempo than the record's, beyond the tempo views"."""
    if cause.startswith("stopped by the melody gate"):
        return "stopped by the melody gate"
    if cause.startswith("sung at "):
        return "sung at another tempo than the record's, beyond the tempo views"
    return cause.split(" (")[0]


def failures_markdown(misses: list[Miss], n_in_catalogue: int, system: str) -> str:
    from training.evaluation.report import table

    lines = [f"## Failure table ({system}: {len(misses)} of {n_in_catalogue} in-catalogue queries not ranked first)",
             ""]
    if not misses:
        return "\n".join(lines + ["Every in-catalogue query was answered first.", ""])
    rows = []
    for m in misses:
        rows.append([
            f"`{m.query_id}`", "–" if m.rank is None else str(m.rank), f"{m.true_score:.3f}",
            "–" if m.winner_score is None else f"{m.winner_score:.3f}", f"{m.hum_voiced:.0%}",
            "–" if m.intonation_spread_cents is None else f"{m.intonation_spread_cents:.0f}",
            f"{m.master_voiced:.0%}",
            "–" if m.tempo_ratio is None else f"{m.tempo_ratio:.2f}",
            "–" if m.aligned_start_s is None else f"{m.aligned_start_s:.1f} / {m.master_seconds:.0f}",
            "–" if m.contour_distance is None else f"{m.contour_distance:.2f}", m.cause])
    lines.append(table(["query", "rank", "true score", "winner score", "query voiced", "intonation (cents)",
                        "master voiced", "tempo (master s / query s)", "aligned at (s / master s)",
                        "contour distance (st)", "likely cause"], rows))
    counts: dict[str, int] = {}
    for m in misses:
        for c in m.cause.split("; "):
            counts[cause_kind(c)] = counts.get(cause_kind(c), 0) + 1
    lines += ["", "Causes: " + "; ".join(f"{v} × {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])),
              "", "Plots of each miss (query contour over the master's at the best alignment): `failures/*.png`.",
              ""]
    return "\n".join(lines)


def write_failures(misses: list[Miss], out_dir: Path, n_in_catalogue: int, system: str) -> str:
    text = failures_markdown(misses, n_in_catalogue, system)
    (out_dir / "failures.md").write_text(text)
    with (out_dir / "failures.jsonl").open("w") as f:
        for m in misses:
            f.write(json.dumps(asdict(m)) + "\n")
    return text
