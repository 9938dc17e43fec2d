"""From a query's window embeddings to a ranked list of catalogue tracks (the retrieval library).

One implementation for the server, the evaluation and the benchmarks:

0. the melody gate (`serving.melody_gate`): a query with no melody in it (a steady tone, noise,
   clicks, speech) is answered "no melody" (reason NO_MELODY, no candidates) and never embedded;
1. the query is cut into windows (hop QUERY_WINDOW_HOP_SECONDS as sung, TEMPO_VIEW_WINDOW_HOP_SECONDS in
   the other views: `data_gen.windows.view_window_hop`) and embedded (`Embedder.embed_query`),
   once per tempo view (`query_tempo_rates`: the query played 0.8x / 1x / 1.25x as long, its spectrogram
   stretched along time (`Embedder.stretched_view`), so
   that one view is close to the master's tempo; see `RetrievalConfig.query_tempo_rates`); steps 2-4
   run on each view and a track keeps its best view's score, a changed tempo paying
   `tempo_view_penalty` x |ln rate| (the singer is more likely at the record's tempo than not);
2. each query window retrieves its `neighbors_per_window` nearest catalogue windows (`WindowIndex.search`);
3. the hits are aggregated per track:
   - "vote": for each query window, the track's best window similarity; the track's score is the mean
     of these over all query windows (a track that matches every query window somewhere scores high,
     whatever the order in time);
   - "temporal": each hit implies an alignment of query and master, start = master_offset -
     ratio * query_offset, for a few tempo ratios (the singer may be slower/faster than the record;
     `tempo_ratios` for a query in one view, the narrower `view_tempo_ratios` within each of several).
     Hits are histogrammed per (track, ratio) on start bins of `offset_bin_seconds`, each hit also
     voting into its `offset_tolerance_bins` neighbouring bins (master windows are
     MASTER_WINDOW_HOP_SECONDS apart, so a true alignment's hits scatter by up to half of that);
     within the best bin each query window counts once (its best hit). Score = sum of those similarities / number of query windows, so it lies in
     [0, 1] for unit-norm embeddings and is comparable across query lengths; among equal scores the
     (ratio, bin) whose implied starts agree best wins; the offset is the similarity-weighted mean
     start of the chosen bin's hits. A track whose windows match the query in
     random order (a common motif, a repeated chorus-like fragment) scores much lower than one that
     matches in time order.
4. re-ranking ("temporal" only): the first stage sees just `neighbors_per_window` catalogue windows per
   query window, and in a large catalogue the right track's windows get crowded out of those lists,
   so its score misses some query windows. The best `rerank_candidates` tracks are therefore re-scored
   exactly (`rerank_temporal`): every query window against every window of the track, over the same
   tempo ratios and a grid of start positions, on the same [0, 1] scale. On the synthetic benchmark
   this lifted MRR@10 from 0.718 to 0.753 with 1,000 tracks (see the README for 10,000) for ~2-3 ms
   of CPU per query with 50 candidates;
5. the best `top_k` tracks are returned with their score and offset (where in the master the query
   starts, seconds, >= 0); `no_match` is set when the best score is below the no-match threshold.

The threshold comes from `RetrievalConfig.no_match_threshold`, or else from the index directory's
calibration.json (per aggregation, see `serving.calibration`), or else DEFAULT_NO_MATCH_THRESHOLD with a
warning. Matches are returned even when `no_match` is set (callers decide whether to show them).

Everything is vectorised numpy: aggregating a 10 s query (7 windows x 100 neighbours) takes about
0.5 ms ("temporal") / 0.05 ms ("vote") on one CPU core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from data_gen import constants as C
from serving.melody_gate import MelodyCheck, MelodyGate
from serving.retrieval_types import (
    AGGREGATIONS, DEFAULT_NO_MATCH_THRESHOLD, DEFAULT_TEMPO_RATIOS, DEFAULT_TEMPO_VIEW_PENALTY, DEFAULT_VIEW_TEMPO_RATIOS, DEFAULT_QUERY_TEMPO_RATES, parse_tempo_rates, ModelMismatchError, QueryEmbedding, EmbedderLike, RetrievalConfig, Match, NO_MATCH_BELOW_THRESHOLD, NO_MELODY, RetrievalResult,
)
from serving.window_store import CandidateWindows, TrackWindows, WindowHits, WindowStore

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrackScores:
    """Aggregated scores for every track that got a hit, unsorted.

    track_rows int [u], scores float [u], offsets_s float [u].
    """

    track_rows: np.ndarray
    scores: np.ndarray
    offsets_s: np.ndarray


# --- aggregation (pure numpy; no index, no model) ----------------------------------------------

def _hits(hits: WindowHits, query_offsets: np.ndarray):
    """Flatten search results [q, k] into valid hits: (qwin, track, master_off, query_off, sim>=0)."""
    q, k = hits.track_rows.shape
    qwin = np.repeat(np.arange(q, dtype=np.int64), k)
    tracks = hits.track_rows.ravel()
    sims = hits.sims.ravel()
    valid = (tracks >= 0) & np.isfinite(sims)
    qwin, sims = qwin[valid], sims[valid]
    return (qwin, tracks[valid].astype(np.int64), hits.offsets_s.ravel()[valid].astype(np.float64),
            np.asarray(query_offsets)[qwin].astype(np.float64), np.maximum(sims.astype(np.float64), 0.0))


def _first_of_groups(sorted_keys: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


_SIM_BITS = 20


def _order_by_key_best_first(key: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Permutation sorting by key (int64 >= 0), and within a key by similarity descending.

    One argsort of a combined int64 key (similarity quantised to 2^-20) is several times faster than
    np.lexsort; the exact lexsort is used when the key is too large to combine."""
    if key.size == 0 or int(key.max()) >= (1 << (62 - _SIM_BITS)):
        return np.lexsort((-sim, key))
    quant = np.rint(np.clip(sim, 0.0, 1.0) * ((1 << _SIM_BITS) - 1)).astype(np.int64)
    return np.argsort((key << _SIM_BITS) - quant)


def aggregate_vote(hits: WindowHits, query_offsets: np.ndarray) -> TrackScores:
    """Order-free aggregation. hits [q, k] first-stage results, query_offsets [q]. Score = mean over
    query windows of the track's best similarity; offset = implied start of the track's single best hit."""
    q = hits.track_rows.shape[0]
    qwin, track, moff, qoff, sim = _hits(hits, query_offsets)
    if sim.size == 0 or q == 0:
        return TrackScores(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    key = track * q + qwin
    order = _order_by_key_best_first(key, sim)  # by (track, qwin), best hit first
    best = order[_first_of_groups(key[order])]  # one hit per (track, query window), sorted by track
    starts = _first_of_groups(track[best])
    scores = np.add.reduceat(sim[best], starts) / q
    # offset from each track's best hit
    by_track = np.lexsort((-sim[best], track[best]))
    top = best[by_track[_first_of_groups(track[best][by_track])]]
    return TrackScores(track[best][starts], scores, np.maximum(moff[top] - qoff[top], 0.0))


def aggregate_temporal(hits: WindowHits, query_offsets: np.ndarray,
                       tempo_ratios: Sequence[float] = DEFAULT_TEMPO_RATIOS,
                       bin_seconds: float = C.MASTER_WINDOW_HOP_SECONDS / 2,
                       tolerance_bins: int = 1) -> TrackScores:
    """Time-consistent aggregation (see the module docstring). Same inputs as `aggregate_vote`."""
    q = hits.track_rows.shape[0]
    return _aggregate_temporal(hits, query_offsets, tempo_ratios, bin_seconds, tolerance_bins, np.array([q]))[0]


def aggregate_temporal_views(hits: WindowHits, query_offsets: np.ndarray, views: np.ndarray, num_views: int,
                             tempo_ratios: Sequence[float] = DEFAULT_TEMPO_RATIOS,
                             bin_seconds: float = C.MASTER_WINDOW_HOP_SECONDS / 2,
                             tolerance_bins: int = 1) -> list[TrackScores]:
    """`aggregate_temporal` of each tempo view's windows (views [q] in 0..num_views-1), all in one pass
    (a track of each view is one group of its own): the same scores as view by view (up to which of
    a query window's hits on one alignment counts when their similarities agree to 2^-20), in a third
    of the calls for three views."""
    views = np.asarray(views, np.int64)
    counts = np.bincount(views, minlength=num_views)
    tracks = np.asarray(hits.track_rows, np.int64)
    stride = int(tracks.max(initial=-1)) + 1
    keyed = np.where(tracks >= 0, tracks + views[:, None] * stride, -1)
    return _aggregate_temporal(WindowHits(keyed, hits.offsets_s, hits.sims), query_offsets, tempo_ratios,
                               bin_seconds, tolerance_bins, counts, stride)


def _aggregate_temporal(hits: WindowHits, query_offsets: np.ndarray, tempo_ratios: Sequence[float],
                        bin_seconds: float, tolerance_bins: int, windows_per_view: np.ndarray,
                        stride: int = 0) -> list[TrackScores]:
    """The aggregation of `aggregate_temporal` where track row t of view v is `t + v * stride` in `hits`
    (stride 0: one view): per view, its tracks' scores (divided by that view's number of windows)."""
    q = hits.track_rows.shape[0]
    empty = TrackScores(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    qwin, track, moff, qoff, sim = _hits(hits, query_offsets)
    h = sim.size
    if h == 0 or q == 0:
        return [empty] * len(windows_per_view)
    # ratio 1.0 first so that exact ties prefer "same tempo"
    ratios = np.asarray(sorted(tempo_ratios, key=lambda r: (abs(np.log(r)), r)), np.float64)
    s_count, t_count = ratios.size, 2 * tolerance_bins + 1
    start = moff[None, :] - ratios[:, None] * qoff[None, :]  # [S, h] implied master start of the query
    base_bin = np.rint(start / bin_seconds).astype(np.int64)
    bins = base_bin[:, :, None] + np.arange(-tolerance_bins, tolerance_bins + 1)[None, None, :]  # [S,h,T]
    bins -= bins.min()
    n_bins = int(bins.max()) + 1
    shape = (s_count, h, t_count)
    e_slope = np.broadcast_to(np.arange(s_count)[:, None, None], shape).ravel()
    e_hit = np.broadcast_to(np.arange(h)[None, :, None], shape).ravel()
    e_start = np.broadcast_to(start[:, :, None], shape).ravel()
    e_group = (track[e_hit] * s_count + e_slope) * n_bins + bins.ravel()  # (track, ratio, bin)
    e_sim = sim[e_hit]
    key = e_group * q + qwin[e_hit]
    order = _order_by_key_best_first(key, e_sim)
    best = order[_first_of_groups(key[order])]  # best hit per (track, ratio, bin, query window)
    g = e_group[best]
    starts = _first_of_groups(g)
    w = e_sim[best]
    group_score = np.add.reduceat(w, starts)
    group_wstart = np.add.reduceat(w * e_start[best], starts)
    group_mean_start = np.add.reduceat(e_start[best], starts) / np.diff(np.r_[starts, best.size])
    group_offset = np.where(group_score > 0, group_wstart / np.maximum(group_score, 1e-12), group_mean_start)
    # spread of the implied starts: the right tempo ratio makes them coincide
    group_wsq = np.add.reduceat(w * e_start[best] ** 2, starts)
    group_spread = np.where(group_score > 0, group_wsq / np.maximum(group_score, 1e-12) - group_offset**2, 0.0)
    group_spread = np.round(np.maximum(group_spread, 0.0), 6)
    group_track = g[starts] // (s_count * n_bins)
    # best (ratio, bin) per track: highest score; ties -> the tightest alignment, then the ratio
    # closest to 1 (slope index 0), then the earliest bin (the groups are in (track, slope, bin) order:
    # the first group left of each track). Reductions per track, not a 4-key lexsort (0.4 -> 0.1 ms).
    t_starts = _first_of_groups(group_track)
    of_track = np.repeat(np.arange(t_starts.size), np.diff(np.r_[t_starts, group_track.size]))
    top = group_score == np.maximum.reduceat(group_score, t_starts)[of_track]
    spread_top = np.where(top, group_spread, np.inf)
    left = top & (spread_top == np.minimum.reduceat(spread_top, t_starts)[of_track])
    kept = np.flatnonzero(left)
    first = kept[_first_of_groups(of_track[kept])]
    rows, scores, offsets = group_track[first], group_score[first], np.maximum(group_offset[first], 0.0)
    if not stride:
        return [TrackScores(rows, scores / windows_per_view[0], offsets)]
    view = rows // stride  # rows are sorted, so by view
    out = []
    for v, n in enumerate(windows_per_view):
        at = slice(*np.searchsorted(view, [v, v + 1]))
        out.append(TrackScores(rows[at] - v * stride, scores[at] / max(int(n), 1), offsets[at]))
    return out


def _best_within(key: np.ndarray, sims: np.ndarray, times: np.ndarray, tol: float,
                 positions: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """For sorted window times `key` [W] and their similarities `sims` [W, q] (>= 0): at each time in
    `times` ([..., 1] for every query window, or [..., q] one per query window), the best similarity
    per query window among windows within `tol` of it (0 where none) and, with `positions`, that
    window's position (-1 where none; None without). Returns ([..., q] float32, [..., q] int64 | None)."""
    q = sims.shape[1]
    shape = np.broadcast_shapes(times.shape, (q,))
    if not positions and times.shape[-1] == 1 and key.size:
        # one time for every query window (the re-ranking's grid): whole rows of `sims` per window in
        # range, taken at once (the same values as below, 3x faster)
        t = times.reshape(-1)
        first = np.searchsorted(key, t - tol, side="left")
        end = np.searchsorted(key, t + tol, side="right")  # windows first..end-1 are within tol
        out = np.zeros((t.size, q), np.float32)
        for k in range(int((end - first).max(initial=0))):
            vals = np.take(sims, np.minimum(first + k, key.size - 1), axis=0)
            vals[first + k >= end] = 0.0
            np.maximum(out, vals, out=out)
        return out.reshape(shape), None
    best = np.zeros(shape, np.float32)
    best_j = np.full(shape, -1, np.int64) if positions else None
    first = np.searchsorted(key, times - tol, side="left")
    qi = np.arange(q)
    # a few windows (about 2 * tol / hop + 1, whatever the index's hop) fall in range: stop at the first
    # step past the range for every time
    for k in range(key.size):
        j = np.minimum(first + k, key.size - 1)
        ok = (first + k < key.size) & (key[j] <= times + tol)
        if not ok.any():
            break
        if best_j is None:  # similarities are >= 0: a window out of range counts as 0
            np.maximum(best, np.where(ok, sims[j, qi], 0.0), out=best)
            continue
        val = np.where(ok, sims[j, qi], -1.0)
        better = val > best
        best = np.where(better, val, best)
        best_j = np.where(better, np.broadcast_to(j, shape), best_j)
    return best, best_j


def rerank_temporal(query_emb: np.ndarray, query_offsets: np.ndarray, candidates: np.ndarray,
                    windows: Sequence[TrackWindows] | CandidateWindows,
                    tempo_ratios: Sequence[float] = DEFAULT_TEMPO_RATIOS,
                    step_seconds: float = C.MASTER_WINDOW_HOP_SECONDS / 2,
                    tolerance_seconds: float = C.MASTER_WINDOW_HOP_SECONDS / 2) -> TrackScores:
    """Exact time-aligned score of each candidate track against the query (the second stage).

    The first stage sees only the `neighbors_per_window` nearest catalogue windows of each query window;
    in a large catalogue the right track's windows are often crowded out of that list, so its aggregated
    score misses some query windows. Here every query window is compared with every window of each
    candidate track: for each tempo ratio r and master start s (a grid of `step_seconds`), query window i
    (starting at q_i in the query) aligns with master time s + r * q_i and takes the best similarity of
    the master windows within `tolerance_seconds` of it (0 where there is none: the query runs off the
    master); the alignment's score is the sum over query windows / number of query windows, the track's
    score the best alignment's (same scale as `aggregate_temporal`). Ties prefer ratio 1 and then the
    earliest start.

    query_emb [q, d], query_offsets [q]; candidates [c] track rows; windows[i] every window of track
    candidates[i] in time order (`WindowStore.fetch_tracks`), or those windows already laid out
    (`CandidateWindows.of(candidates, windows)`, e.g. a `subset` of one fetch shared by several tempo
    views; then `candidates` is ignored).
    """
    cw = windows if isinstance(windows, CandidateWindows) else CandidateWindows.of(candidates, windows)
    candidates = cw.candidates
    q = query_emb.shape[0]
    c = candidates.size
    if c == 0 or q == 0:
        return TrackScores(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    seg = np.repeat(np.arange(c), np.diff(cw.starts))
    m_off = cw.offsets_s
    if cw.sims is not None:  # already computed for these query windows (`subset(..., columns)`)
        if cw.sims.shape != (m_off.size, q):
            raise ValueError(f"the windows' similarities are {cw.sims.shape}, expected {(m_off.size, q)}")
        sims = cw.sims
    else:
        sims = np.maximum(cw.emb @ np.asarray(query_emb, np.float32).T, 0.0)  # [W, q]
    ratios = np.asarray(sorted(tempo_ratios, key=lambda r: (abs(np.log(r)), r)), np.float64)
    q_off = np.asarray(query_offsets, np.float64)
    q_off = q_off - q_off.min()
    step, tol = float(step_seconds), float(tolerance_seconds)
    # f[c, k, i]: best similarity of query window i to a master window of candidate c within `tol` of
    # time t0 + k * step; an alignment (ratio r, start cell g) scores sum_i f[c, g + shift[r, i], i] / q
    t0 = -2.0 * step
    span = float(m_off.max())
    n_starts = int(np.floor((span - t0) / step)) + 1
    shifts = np.rint(ratios[:, None] * q_off[None, :] / step).astype(np.int64)  # [R, q]
    cells = t0 + np.arange(n_starts + int(shifts.max()) + 1) * step
    gap = span + float(ratios.max() * q_off.max()) + 2 * (tol + step) + 10.0
    key = m_off + seg * gap  # the candidates' offsets pushed apart: one searchsorted serves them all
    f = _best_within(key, sims, (cells[None, :] + (np.arange(c) * gap)[:, None])[:, :, None], tol,
                     positions=False)[0]  # [c, T, q]
    f = np.ascontiguousarray(f.transpose(2, 0, 1))  # [q, c, T]: the shifted slices below are contiguous
    score = np.empty((c, ratios.size, n_starts), np.float32)
    for r in range(ratios.size):
        acc = np.zeros((c, n_starts), np.float32)
        for i in range(q):
            acc += f[i, :, shifts[r, i] : shifts[r, i] + n_starts]
        score[:, r, :] = acc
    score /= q
    c_idx = np.arange(c)
    pick = score.reshape(c, -1).argmax(axis=1)  # first max: the ratio closest to 1, then the earliest start
    r_idx, g_idx = np.unravel_index(pick, score.shape[1:])
    best_score = score[c_idx, r_idx, g_idx].astype(np.float64)
    # offset: the similarity-weighted start implied by the chosen alignment's matched master windows
    aligned = (t0 + g_idx * step)[:, None] + ratios[r_idx][:, None] * q_off[None, :]  # [c, q]
    t = aligned + (c_idx * gap)[:, None]
    best, best_j = _best_within(key, sims, t, tol + step)  # [c, q]
    w = best.astype(np.float64)
    implied = m_off[np.maximum(best_j, 0)] - ratios[r_idx][:, None] * q_off[None, :]
    total = w.sum(axis=1)
    offset = np.where(total > 0, (w * implied).sum(axis=1) / np.maximum(total, 1e-12), aligned[:, 0])
    return TrackScores(candidates, best_score, np.maximum(offset, 0.0))


def aggregate(hits: WindowHits, query_offsets: np.ndarray, config: RetrievalConfig,
              tempo_ratios: Sequence[float] | None = None) -> TrackScores:
    """`config`'s aggregation of one query (view); tempo_ratios None: `config.tempo_ratios`."""
    if config.aggregation == "vote":
        return aggregate_vote(hits, query_offsets)
    if config.offset_bin_seconds is None:  # no index at hand: the default master hop
        config = config.for_master_hop(C.MASTER_WINDOW_HOP_SECONDS)
    return aggregate_temporal(hits, query_offsets,
                              config.tempo_ratios if tempo_ratios is None else tempo_ratios,
                              config.offset_bin_seconds, config.offset_tolerance_bins)


def top_tracks(scores: TrackScores, top_k: int) -> np.ndarray:
    """Indices into `scores` of the best `top_k` tracks with a positive score, by score descending
    (ties: lower track row first). Tracks whose hits all have similarity <= 0 are not matches."""
    order = np.lexsort((scores.track_rows, -scores.scores))
    order = order[scores.scores[order] > 0]
    return order[:top_k]


def _ranked(scores: TrackScores, depth: int) -> list[tuple[int, float, float]]:
    """The best `depth` of `scores` (`top_tracks`) as (track row, score, offset), best first."""
    return [(int(scores.track_rows[j]), float(scores.scores[j]), float(scores.offsets_s[j]))
            for j in top_tracks(scores, depth)]


# --- the retriever -----------------------------------------------------------------------------

def master_hop_seconds(index: WindowStore) -> float:
    """How far apart the index's master windows start (`earworm index --master-hop-seconds`; indexes
    made before the option existed used MASTER_WINDOW_HOP_SECONDS)."""
    return float(getattr(index.metadata, "master_hop_seconds", C.MASTER_WINDOW_HOP_SECONDS))


class Retriever:
    """Identifies queries against one index with one model. Thread-safe (read-only state)."""

    def __init__(self, embedder: EmbedderLike | None, index: WindowStore,
                 config: RetrievalConfig = RetrievalConfig()):
        """`embedder` may be None for callers that only use `identify_embeddings` (benchmarks on
        simulated embeddings). Raises ModelMismatchError when the embedder's model version differs
        from the one the index was built with."""
        if embedder is not None and embedder.version != index.metadata.model_version:
            raise ModelMismatchError(
                f"the index {index.version} holds embeddings of model {index.metadata.model_version!r}; "
                f"the embedder is {embedder.version!r}: rebuild the index with this model")
        self.embedder = embedder
        self.index = index
        self.config = config.for_master_hop(master_hop_seconds(index))
        self._rerank_count = config.effective_rerank_candidates
        self.threshold, self.threshold_source = self._resolve_threshold()
        self.gate = MelodyGate(config.melody_gate) if config.melody_gate is not None else None

    @property
    def rerank_candidates(self) -> int:
        """How many first-stage tracks are re-scored (0 for "vote", which is order-free by design)."""
        return self._rerank_count

    def _rerank(self, emb: np.ndarray, offsets: np.ndarray, ranked: list[tuple[int, float, float]],
                tempo_ratios: Sequence[float], fetched: CandidateWindows,
                columns: np.ndarray | slice | None = None) -> list[tuple[int, float, float]]:
        """The first `rerank_candidates` of `ranked` (track row, score, offset), re-scored by
        `rerank_temporal` against their windows in `fetched` (`_fetch_candidates`; `columns`: which of
        its similarity columns are `emb`'s windows) and re-sorted (ties: lower track row); the rest keep
        their order after them."""
        head, tail = ranked[: self._rerank_count], ranked[self._rerank_count :]
        if not head:
            return ranked
        cfg = self.config
        candidates = np.array([t for t, _, _ in head], np.int64)
        exact = rerank_temporal(emb, offsets, candidates, fetched.subset(candidates, columns), tempo_ratios,
                                cfg.rerank_step_seconds, cfg.rerank_tolerance_seconds)
        order = np.lexsort((exact.track_rows, -exact.scores))
        order = order[exact.scores[order] > 0]
        return [(int(exact.track_rows[j]), float(exact.scores[j]), float(exact.offsets_s[j])) for j in order] + tail

    def _resolve_threshold(self) -> tuple[float, str]:
        if self.config.no_match_threshold is not None:
            return float(self.config.no_match_threshold), "config"
        from serving.calibration import CalibrationError, load_calibration

        store_cal = getattr(self.index, "load_calibration", None)  # a store that carries its own (Milvus)
        if store_cal is not None or self.index.path is not None:
            try:
                cal = (store_cal(self.config.aggregation) if store_cal is not None
                       else load_calibration(self.index.path, self.config.aggregation))
            except CalibrationError as e:
                log.warning("ignoring the calibration: %s", e)
                cal = None
            if cal is not None:
                if cal.model_version and cal.model_version != self.index.metadata.model_version:
                    log.warning("calibration in %s is for model %s, the index holds %s: using the default "
                                "no-match threshold %.2f", self.index.path, cal.model_version,
                                self.index.metadata.model_version, DEFAULT_NO_MATCH_THRESHOLD)
                    return DEFAULT_NO_MATCH_THRESHOLD, "default"
                if cal.neighbors_per_window not in (None, self.config.neighbors_per_window):
                    log.info("calibration used %s neighbours per window, this retriever uses %d",
                             cal.neighbors_per_window, self.config.neighbors_per_window)
                differs = cal.retrieval_differs(self.config)
                if differs:
                    log.warning("the calibration in %s does not fit this retriever's scores (%s): run "
                                "`earworm calibrate` again", self.index.path, differs)
                return float(cal.threshold), "calibration"
        log.warning("no calibrated no-match threshold for aggregation %r (index %s): using the default "
                    "%.2f; run the calibration for a measured operating point", self.config.aggregation,
                    self.index.path or self.index.version, DEFAULT_NO_MATCH_THRESHOLD)
        return DEFAULT_NO_MATCH_THRESHOLD, "default"

    def with_index(self, index: WindowStore) -> "Retriever":
        """Same embedder and config over another index (hot swap); the threshold is re-resolved."""
        return Retriever(self.embedder, index, self.config)

    def with_config(self, config: RetrievalConfig | None = None, **changes: object) -> "Retriever":
        """Same embedder and index with another config (e.g. `aggregation="vote"`)."""
        config = replace(config or self.config, **changes)  # type: ignore[arg-type]
        return Retriever(self.embedder, self.index, config)

    # -- identification --------------------------------------------------------------------------
    def embed(self, audio: np.ndarray) -> QueryEmbedding:
        """audio float32 [time] mono at SAMPLE_RATE -> its windows embedded in this config's tempo views."""
        if self.embedder is None:
            raise RuntimeError("this Retriever has no embedder; use identify_embeddings")
        return self.embedder.embed_query(audio, self.config.query_tempo_rates)

    def check_melody(self, audio: np.ndarray) -> tuple[MelodyCheck | None, float]:
        """The melody gate's verdict on `audio` (None when the gate is off) and its milliseconds."""
        if self.gate is None:
            return None, 0.0
        t0 = time.perf_counter()
        check = self.gate.check(audio)
        return check, (time.perf_counter() - t0) * 1e3

    def no_melody(self, check: MelodyCheck, audio_seconds: float, gate_ms: float = 0.0) -> RetrievalResult:
        """The answer to a query the gate rejected: no match, no candidates, the reason and the figures."""
        return RetrievalResult([], True, self.threshold, float(audio_seconds),
                               {"melody": gate_ms, "total": gate_ms}, NO_MELODY, check)

    def identify(self, audio: np.ndarray, top_k: int | None = None,
                 embed: Callable[[np.ndarray], QueryEmbedding] | None = None,
                 melody: MelodyCheck | None = None) -> RetrievalResult:
        """audio float32 [time] mono at SAMPLE_RATE (already validated/decoded) -> RetrievalResult.

        The melody gate runs first: a query with no melody is answered `NO_MELODY`, unembedded and
        unsearched. Then `embed(audio)` (default `self.embed`; the server passes its batched
        embedder, the evaluation a cache shared by several retrievers) and `identify_embeddings`.
        melody: the gate's verdict when the caller made it already (a stream checks incrementally).
        timings_ms: "melody", "embed", "search", "aggregate", "total"."""
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"audio must be a non-empty [time] array, got shape {audio.shape}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        t0 = time.perf_counter()
        check, gate_ms = (melody, 0.0) if melody is not None else self.check_melody(audio)
        seconds = audio.size / C.SAMPLE_RATE
        if check is not None and not check.has_melody:
            return self.no_melody(check, seconds, gate_ms)
        t1 = time.perf_counter()
        q = (embed or self.embed)(audio)
        embed_ms = (time.perf_counter() - t1) * 1e3
        result = replace(self.identify_embeddings(q.emb, q.offsets_s, seconds, top_k, views=q.views),
                         melody=check)
        result.timings_ms.update(melody=gate_ms, embed=embed_ms, total=(time.perf_counter() - t0) * 1e3)
        return result

    def score_track(self, q: QueryEmbedding, track_id: str) -> tuple[float, float]:
        """The exact (re-ranking) score and offset of one catalogue track against an embedded query,
        its best tempo view, on the scale of the re-ranked answers (`rerank_candidates` > 0): for
        explaining a miss whose true track did not make the list. KeyError for a track that is not
        in the index."""
        row = self.index.track_row(track_id)
        windows = self.index.fetch_tracks([row])
        groups, ratios = self._view_groups(q.views)
        best = (0.0, 0.0)
        for m, penalty, _rate in groups:
            s = rerank_temporal(q.emb[m], q.offsets_s[m], np.array([row]), windows, ratios,
                                self.config.rerank_step_seconds, self.config.rerank_tolerance_seconds)
            if s.scores.size and s.scores[0] - penalty > best[0]:
                best = (float(s.scores[0] - penalty), float(s.offsets_s[0]))
        return best

    def identify_embeddings(self, emb: np.ndarray, offsets_s: np.ndarray, audio_seconds: float,
                            top_k: int | None = None, views: np.ndarray | None = None) -> RetrievalResult:
        """emb float32 [n, d] query window embeddings, offsets_s [n] their starts in the query (s),
        views [n] their tempo view (None: all one view)."""
        return self.identify_embeddings_batch([(emb, offsets_s, audio_seconds, views)], top_k)[0]

    def _view_penalty(self, view: int) -> float:
        """What view `view` (an index into `query_tempo_rates`) loses against the query as sung."""
        rates = self.config.query_tempo_rates
        if view >= len(rates):
            raise ValueError(f"query window of tempo view {view}, but the config has {len(rates)} views")
        return self.config.tempo_view_penalty * abs(float(np.log(rates[view])))

    def _view_groups(self, views: np.ndarray | None) -> tuple[list[tuple], Sequence[float]]:
        """(window mask, score penalty, tempo rate) per tempo view of a query's windows (no views
        given: the query as sung, no penalty), and the aggregation's tempo ratios for that many views."""
        rates = self.config.query_tempo_rates
        groups = ([(slice(None), 0.0, 1.0)] if views is None else
                  [(views == v, self._view_penalty(int(v)), float(rates[int(v)])) for v in np.unique(views)])
        return groups, self.config.tempo_ratios if len(groups) == 1 else self.config.view_tempo_ratios

    def _rank_view(self, hits: WindowHits, offsets: np.ndarray, depth: int,
                   tempo_ratios: Sequence[float]) -> list[tuple[int, float, float]]:
        """One tempo view's windows: aggregate their hits and keep the best `depth` (track row, score,
        offset), before re-ranking."""
        return _ranked(aggregate(hits, offsets, self.config, tempo_ratios), depth)

    def _rank_views(self, hits: WindowHits, offsets: np.ndarray, views: np.ndarray | None, groups: list[tuple],
                    depth: int, tempo_ratios: Sequence[float]) -> list[list[tuple[int, float, float]]]:
        """`_rank_view` of every tempo view in `groups` (`_view_groups(views)`); the temporal aggregation
        of all views in one pass (`aggregate_temporal_views`: the same scores, 1.64 -> 1.26 ms for three)."""
        if self.config.aggregation != "temporal" or views is None or len(groups) == 1:
            return [self._rank_view(hits[m], offsets[m], depth, tempo_ratios) for m, _, _ in groups]
        present = np.unique(views)  # the groups' order
        per_view = aggregate_temporal_views(hits, offsets, np.searchsorted(present, views), present.size,
                                            tempo_ratios, self.config.offset_bin_seconds,
                                            self.config.offset_tolerance_bins)
        return [_ranked(scores, depth) for scores in per_view]

    def _fetch_candidates(self, ranked_views: list[list[tuple[int, float, float]]],
                          query_emb: np.ndarray) -> CandidateWindows:
        """One fetch of every track that some view will re-rank (the views share most of them), with
        their windows' similarities to all of the query's windows (`query_emb`, every view)."""
        heads = [t for ranked in ranked_views for t, _, _ in ranked[: self._rerank_count]]
        union = np.unique(np.asarray(heads, np.int64))
        return self.index.fetch_candidates(union).with_sims(query_emb)

    def identify_embeddings_batch(self, queries: Sequence[tuple], top_k: int | None = None
                                  ) -> list[RetrievalResult]:
        """Many queries' (emb [n_i, d], offsets_s [n_i], audio_seconds[, views [n_i] or None]) with one
        index search call. With several tempo views, each view is ranked on its own and a track keeps
        its best view's score and offset (ties: the lower view index)."""
        t0 = time.perf_counter()
        top_k = int(top_k or self.config.top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        embs, offs, views_of = [], [], []
        for item in queries:
            emb, offsets = np.asarray(item[0], np.float32), np.asarray(item[1], np.float64)
            if emb.ndim != 2 or offsets.shape != (emb.shape[0],):
                raise ValueError(f"emb must be [n, d] with offsets [n], got {emb.shape} and {offsets.shape}")
            views = item[3] if len(item) > 3 else None
            if views is not None:
                views = np.asarray(views, np.int64)
                if views.shape != offsets.shape:
                    raise ValueError(f"views must be [n] like the offsets, got {views.shape}")
            embs.append(emb)
            offs.append(offsets)
            views_of.append(views)
        sizes = [e.shape[0] for e in embs]
        if embs and sum(sizes):
            hits = self.index.search_windows(np.concatenate(embs), self.config.neighbors_per_window)
        else:
            hits = WindowHits.empty()
        search_ms = (time.perf_counter() - t0) * 1e3
        results = []
        bounds = np.cumsum([0] + sizes)
        depth = max(top_k, self._rerank_count)
        for i, item in enumerate(queries):
            t1 = time.perf_counter()
            h = hits[bounds[i] : bounds[i + 1]]
            groups, ratios = self._view_groups(views_of[i])
            best: dict[int, tuple[float, float, float]] = {}
            ranked_views = self._rank_views(h, offs[i], views_of[i], groups, depth, ratios)
            t2 = time.perf_counter()
            if self._rerank_count:
                fetched = self._fetch_candidates(ranked_views, embs[i])
                ranked_views = [self._rerank(embs[i][m], offs[i][m], ranked_view, ratios, fetched, m)
                                for ranked_view, (m, _, _) in zip(ranked_views, groups)]
            rerank_ms = (time.perf_counter() - t2) * 1e3
            for ranked_view, (m, penalty, rate) in zip(ranked_views, groups):
                for t, score, offset in ranked_view:
                    if t not in best or score - penalty > best[t][0]:
                        best[t] = (score - penalty, offset, rate)
            ranked = [kv for kv in sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0])) if kv[1][0] > 0][:top_k]
            matches = [
                Match(self.index.tracks[t].track_id, self.index.tracks[t].title, self.index.tracks[t].artist,
                      score, round(offset, 3), rate)
                for t, (score, offset, rate) in ranked
            ]
            no_match = not matches or matches[0].score < self.threshold
            agg_ms = (time.perf_counter() - t1) * 1e3
            results.append(RetrievalResult(matches, no_match, self.threshold, float(item[2]),
                                           {"search": search_ms, "aggregate": agg_ms - rerank_ms,
                                            "rerank": rerank_ms, "total": search_ms + agg_ms},
                                           NO_MATCH_BELOW_THRESHOLD if no_match else ""))
        return results


__all__ = [
    "AGGREGATIONS", "DEFAULT_NO_MATCH_THRESHOLD", "NO_MATCH_BELOW_THRESHOLD", "NO_MELODY", "DEFAULT_QUERY_TEMPO_RATES", "DEFAULT_TEMPO_RATIOS",
    "DEFAULT_TEMPO_VIEW_PENALTY", "DEFAULT_VIEW_TEMPO_RATIOS", "EmbedderLike", "Match", "ModelMismatchError", "QueryEmbedding",
    "RetrievalConfig", "RetrievalResult", "Retriever", "TrackScores", "aggregate", "aggregate_temporal",
    "aggregate_temporal_views",
    "aggregate_vote", "CandidateWindows", "parse_tempo_rates", "rerank_temporal", "top_tracks",
]
