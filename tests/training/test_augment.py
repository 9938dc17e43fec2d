"""Spectrogram-domain augmentation: shapes, finiteness, and exact bin shifts."""

import numpy as np
import tensorflow as tf

from data_gen import constants as C
from training import augment as A
from training.frontend import FrontendConfig


def clip_logp(fe: FrontendConfig, seed: int = 0) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    frames = fe.frames(C.EXAMPLE_SAMPLES)
    x = rng.normal(-5.0, 1.0, (frames, fe.bins)).astype(np.float32)
    x[:, 30] += 12.0  # a strong partial
    return tf.constant(x)


def test_shift_bins_moves_the_spectrum_by_whole_bins():
    fe = FrontendConfig()
    x = clip_logp(fe)
    for shift in (3, -4, 12):
        y = A.shift_bins(x, float(shift)).numpy()
        assert np.all(np.argmax(y, axis=1) == 30 + shift)
        np.testing.assert_allclose(y[:, 30 + shift], x.numpy()[:, 30], atol=1e-5)
    half = A.shift_bins(x, 0.5).numpy()
    np.testing.assert_allclose(half[:, 31], 0.5 * (x.numpy()[:, 30] + x.numpy()[:, 31]), atol=1e-5)


def test_crop_tempo_shapes_and_exact_slice_at_tempo_one():
    fe = FrontendConfig()
    x = clip_logp(fe)
    out = A.crop_tempo(x, tf.constant(10), tf.constant(1.0), fe.window_frames)
    np.testing.assert_array_equal(out.numpy(), x.numpy()[10:10 + fe.window_frames])
    fast = A.crop_tempo(x, tf.constant(10), tf.constant(1.25), fe.window_frames)
    slow = A.crop_tempo(x, tf.constant(40), tf.constant(0.8), fe.window_frames)
    assert fast.shape == slow.shape == (fe.window_frames, fe.bins)


def test_augment_side_keeps_shape_and_finite_values_for_many_seeds():
    fe = FrontendConfig()
    x = clip_logp(fe)
    views = []
    for i in range(12):
        seed = tf.constant([0, i], tf.int64)
        for aug in (A.QUERY_DEFAULT, A.MASTER_DEFAULT):
            v = A.augment_side(x, seed, tf.constant(20), aug, fe).numpy()
            assert v.shape == (fe.window_frames, fe.bins)
            assert np.all(np.isfinite(v))
            views.append(v)
    assert np.std([v.mean() for v in views]) > 0  # the views differ
    again = A.augment_side(x, tf.constant([0, 3], tf.int64), tf.constant(20), A.QUERY_DEFAULT, fe).numpy()
    np.testing.assert_array_equal(again, views[6])  # deterministic per seed


def test_noise_and_reverb_only_add_energy():
    fe = FrontendConfig()
    x = clip_logp(fe)[: fe.window_frames]
    noisy = A.add_noise(x, tf.constant([1, 2], tf.int64), tf.constant(0.0), fe.center_hz()).numpy()
    wet = A.reverb(x, tf.constant(0.8), tf.constant(-3.0), fe.hop / C.SAMPLE_RATE).numpy()
    assert np.all(noisy >= x.numpy() - 1e-4) and np.all(wet >= x.numpy() - 1e-4)
    assert noisy.mean() > x.numpy().mean() + 0.1
