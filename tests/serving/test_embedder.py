"""The embedder's two halves: one front-end pass per recording, windows sliced from it."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.windows import cut_master_windows, cut_query_views


def _hum(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * C.SAMPLE_RATE))) / C.SAMPLE_RATE
    f0 = 220.0 * 2 ** (np.floor(t * 2.5) % 5 / 12)
    audio = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / C.SAMPLE_RATE) + 0.01 * rng.standard_normal(t.size)
    return audio.astype(np.float32)


@pytest.mark.parametrize("seconds", [2.5, 4.0, 7.3, 10.0])
def test_sliced_spectrogram_gives_the_per_window_embeddings(embedder, seconds):
    """Off-grid (end-aligned) and short windows included: same offsets and views, same embeddings up
    to float rounding (the front-end's matmul over more frames may sum in another order)."""
    assert embedder.splits_frontend
    audio = _hum(seconds, 0)
    rates = (1.0, 0.8, 1.25)
    q = embedder.embed_query(audio, rates)
    windows, offsets, views = cut_query_views(audio, rates)
    np.testing.assert_array_equal(q.offsets_s, offsets)
    np.testing.assert_array_equal(q.views, views)
    np.testing.assert_allclose(q.emb, embedder.embed_windows(windows), atol=1e-5)
    emb, off = embedder.embed_master(audio)
    m_windows, m_off = cut_master_windows(audio)
    np.testing.assert_array_equal(off, m_off)
    np.testing.assert_allclose(emb, embedder.embed_windows(m_windows), atol=1e-5)


def test_window_log_power_slices_exactly_what_each_window_would_get(embedder):
    audio = _hum(9.5, 1)
    logp, (starts,) = embedder.window_log_power([audio], C.QUERY_WINDOW_HOP)
    assert logp.shape[0] == starts.size == 7  # 0..5 s on the grid + the end-aligned 5.5 s
    own = embedder.log_power(np.stack([audio[s : s + C.WINDOW_SAMPLES] for s in starts]))
    np.testing.assert_allclose(logp, own, atol=1e-4)


def test_an_export_without_the_split_signatures_embeds_per_window(embedder, untrained_model_dir, tmp_path):
    """Models exported before the front-end signatures still serve (the per-window path)."""
    from serving.embedder import Embedder

    old = Embedder(untrained_model_dir)
    old._log_power_fn = None  # as loaded from an older SavedModel
    assert not old.splits_frontend
    audio = _hum(6.0, 2)
    np.testing.assert_allclose(old.embed_query(audio, (1.0, 1.25)).emb,
                               embedder.embed_query(audio, (1.0, 1.25)).emb, atol=1e-5)
    master = _hum(9.0, 3)
    (emb, off), (want_emb, want_off) = old.embed_master(master, 2.0), embedder.embed_master(master, 2.0)
    np.testing.assert_array_equal(off, [0.0, 2.0, 4.0, 5.0])  # the 2 s grid + the end-aligned window
    np.testing.assert_array_equal(off, want_off)
    np.testing.assert_allclose(emb, want_emb, atol=1e-5)
