"""Random window embeddings with the statistics of the real ones, for the load and query benchmarks.

Independent random unit vectors are the worst case for a tree index: no structure, so the searcher's
auto-tuning must search (nearly) every leaf, and a benchmark on them measures a search
that a real catalogue never pays. The stage-H model's window embeddings of a real catalogue (300
rendered masters and the 20 zalo songs, 9,352 windows, measured 2026-12-04) instead:

- live in a ~50-dimensional subspace of the 128: the top 1 / 5 / 10 / 20 / 50 principal axes hold
  7.8 / 28.8 / 48.1 / 75.4 / 99.9 % of the variance (participation ratio 27.8), roughly a variance
  falling as exp(-k / 15) along axis k;
- share a common direction (the mean vector has norm 0.11);
- are correlated along a track: consecutive windows (1 s apart) cosine 0.69, 2 s 0.34, 4 s 0.17;
- and two windows of any tracks have cosine 0.01 on average, 0.51 at the 99th percentile.

`embedding_like_windows` draws windows with those statistics (an AR(1) walk per track in a random
50-d subspace with that spectrum, plus the common direction; consecutive windows cosine 0.69,
random pairs 0.43 at the 99th percentile, participation ratio 29).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_gen import constants as C

SUBSPACE_DIM = 50
SPECTRUM_DECAY = 15.0
"""Variance along principal axis k ~ exp(-k / SPECTRUM_DECAY)."""
WINDOW_CORRELATION = 0.69
"""AR(1) coefficient of consecutive windows of a track (1 s master hop)."""
MEAN_NORM = 0.11


@dataclass(frozen=True)
class EmbeddingSpace:
    """Where the windows live: a random SUBSPACE_DIM-d subspace (orthonormal basis [dim, sub]) with the
    decaying spectrum (std per axis [sub]) and the common direction (mean [dim]). Drawn once; windows
    of any number of tracks, in any number of chunks, are then drawn in it (`windows`)."""

    basis: np.ndarray
    scale: np.ndarray
    mean: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator, dim: int = C.EMBEDDING_DIM) -> "EmbeddingSpace":
        sub = min(SUBSPACE_DIM, dim)
        basis = np.linalg.qr(rng.standard_normal((dim, sub)))[0].astype(np.float32)  # orthonormal columns
        scale = np.exp(-np.arange(sub) / SPECTRUM_DECAY / 2).astype(np.float32)  # std along each axis
        mean = rng.standard_normal(dim).astype(np.float32)
        mean *= MEAN_NORM / np.linalg.norm(mean)
        return EmbeddingSpace(basis, scale, mean)

    def windows(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unit float32 [sum(counts), dim]: counts[i] consecutive windows of track i, track-major."""
        counts = np.asarray(counts, np.int64)
        sub = self.scale.size
        # AR(1) along each track, vectorised over tracks: step t of every track that has a window t
        longest = int(counts.max()) if counts.size else 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if counts.size else counts
        z = rng.standard_normal((int(counts.sum()), sub)).astype(np.float32)
        x = np.empty_like(z)
        innovation = math.sqrt(1.0 - WINDOW_CORRELATION**2)
        if counts.size and (counts == longest).all():  # every track as long: strided steps, no gathers
            xs, zs = x.reshape(counts.size, longest, sub), z.reshape(counts.size, longest, sub)
            xs[:, 0] = zs[:, 0]
            for t in range(1, longest):
                xs[:, t] = WINDOW_CORRELATION * xs[:, t - 1] + innovation * zs[:, t]
        else:
            for t in range(longest):
                alive = counts > t
                rows = starts[alive] + t
                x[rows] = z[rows] if t == 0 else WINDOW_CORRELATION * x[rows - 1] + innovation * z[rows]
        v = (x * self.scale) @ self.basis.T
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        v += self.mean
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return v.astype(np.float32, copy=False)


def embedding_like_windows(counts: np.ndarray, rng: np.random.Generator, dim: int = C.EMBEDDING_DIM
                           ) -> np.ndarray:
    """Unit float32 [sum(counts), dim]: counts[i] consecutive windows of track i, track-major, in a
    space drawn from `rng` first."""
    return EmbeddingSpace.draw(rng, dim).windows(counts, rng)


def window_stats(emb: np.ndarray, track_rows: np.ndarray, seed: int = 0) -> dict[str, float]:
    """The statistics above, of any window embeddings (for checking a generator against an index)."""
    emb = np.asarray(emb, np.float32)
    rows = np.asarray(track_rows)
    centred = emb - emb.mean(axis=0)
    ev = np.sort(np.linalg.eigvalsh(np.cov(centred.T)))[::-1]
    out = {"participation_ratio": float(ev.sum() ** 2 / (ev**2).sum()),
           "top10_variance_share": float(ev[:10].sum() / ev.sum()),
           "mean_norm": float(np.linalg.norm(emb.mean(axis=0)))}
    for lag in (1, 2, 4):
        same = rows[lag:] == rows[:-lag]
        out[f"cos_lag{lag}"] = float(np.sum(emb[lag:] * emb[:-lag], axis=1)[same].mean()) if same.any() else float("nan")
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, emb.shape[0], (2, 20_000))
    out["random_pair_cos_p99"] = float(np.percentile(np.sum(emb[i] * emb[j], axis=1), 99))
    return out
