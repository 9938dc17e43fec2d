"""The export's front-end on SciPy: read from the signature, equal to it, or declined."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from data_gen import constants as C


@pytest.fixture(scope="module")
def signature(untrained_model_dir):
    import tensorflow as tf

    return tf.saved_model.load(str(untrained_model_dir)).signatures["log_power"]


def _call(signature, audio: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    return signature(audio=tf.constant(audio))["log_power"].numpy()


@pytest.mark.parametrize("seconds", [0.1, 0.2, 4.0, 12.7])
def test_it_equals_the_signature_on_hums_silence_and_short_audio(signature, embedder, seconds):
    from serving.frontend import TOLERANCE

    frontend = embedder._frontend
    assert frontend is not None and (frontend.n_fft, frontend.hop) == (embedder._n_fft, embedder._frame_hop)
    n = int(seconds * C.SAMPLE_RATE)
    rng = np.random.default_rng(n)
    t = np.arange(n) / C.SAMPLE_RATE
    hum = (0.4 * np.sin(2 * np.pi * 220 * 2 ** (np.floor(t * 3) % 7 / 12) * t)
           + 0.02 * rng.standard_normal(n)).astype(np.float32)
    batch = np.stack([hum, np.zeros(n, np.float32), 1e-6 * hum])
    want = _call(signature, batch)
    got = embedder.log_power(batch)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    np.testing.assert_allclose(embedder.log_power(hum), want[0], atol=TOLERANCE)  # one recording
    assert embedder.log_power(np.zeros((0, n), np.float32)).shape == (0,) + want.shape[1:]


def test_it_reads_only_the_filterbank_bins_the_model_uses(embedder):
    frontend = embedder._frontend
    assert frontend.top < frontend.n_fft // 2 + 1  # logfreq up to ~4.2 kHz: about half the FFT bins
    assert frontend.filterbank.shape == (frontend.top, frontend.bins)
    assert np.isclose(frontend.eps, 1e-10, rtol=1e-4)  # read back from the signature's silence


def test_a_signature_it_cannot_reproduce_is_left_to_tensorflow(signature, caplog):
    from serving.frontend import NumpyFrontend

    class Doubled:  # the same captures, but twice the log power: the check at load must refuse it
        captured_inputs = signature.captured_inputs

        def __call__(self, audio):
            return {"log_power": 2.0 * signature(audio=audio)["log_power"]}

    class Nothing:
        captured_inputs: list = []

    with caplog.at_level(logging.INFO, logger="serving.frontend"):
        assert NumpyFrontend.for_signature(Doubled(), 2048, 640) is None
        assert NumpyFrontend.for_signature(Nothing(), 2048, 640) is None
        assert NumpyFrontend.for_signature(signature, 1024, 640) is None  # not its FFT size
    assert "differs from the signature" in caplog.text and "no single [1025, bins] filterbank" in caplog.text
    assert NumpyFrontend.for_signature(signature, 2048, 640) is not None


def test_the_tensorflow_runtime_keeps_the_signature(untrained_model_dir):
    from serving.embedder import Embedder

    assert Embedder(untrained_model_dir, runtime="tensorflow")._frontend is None
