"""The benchmarks' random index has the statistics of real window embeddings, not of iid vectors."""

from __future__ import annotations

import numpy as np

from serving.apps.synthetic_embeddings import embedding_like_windows, window_stats


def test_embedding_like_windows_have_the_real_statistics_and_are_reproducible():
    counts = np.random.default_rng(3).integers(20, 41, size=600)
    emb = embedding_like_windows(counts, np.random.default_rng(0))
    assert emb.shape == (counts.sum(), 128) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb, embedding_like_windows(counts, np.random.default_rng(0)))
    stats = window_stats(emb, np.repeat(np.arange(counts.size), counts))
    # the real stage-H windows: participation ratio 27.8, top-10 share 0.48, lag-1 cosine 0.69,
    # lag-4 0.17, random pairs 0.51 at the 99th percentile, mean norm 0.11
    assert 20 < stats["participation_ratio"] < 40
    assert 0.40 < stats["top10_variance_share"] < 0.58
    assert 0.62 < stats["cos_lag1"] < 0.76
    assert stats["cos_lag1"] > stats["cos_lag2"] > stats["cos_lag4"] > 0.1
    assert 0.3 < stats["random_pair_cos_p99"] < 0.6
    assert 0.08 < stats["mean_norm"] < 0.14
    iid = np.random.default_rng(0).standard_normal(emb.shape).astype(np.float32)
    iid /= np.linalg.norm(iid, axis=1, keepdims=True)
    assert window_stats(iid, np.repeat(np.arange(counts.size), counts))["participation_ratio"] > 100
