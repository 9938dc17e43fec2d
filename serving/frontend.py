"""An exported model's front-end (its `log_power` signature) run on SciPy's FFT, in the caller's thread.

The signature is STFT (periodic Hann window, `n_fft`, `hop`, no end padding) -> power -> the model's
filterbank -> log(x + eps). Called through TensorFlow from a request, it costs the FFTs plus about a
millisecond of Python dispatch and a hand-off to TensorFlow's own thread; here it is the FFTs and one
matmul. Measured 2026-12-05, 3 server processes and 4 clients at 10k tracks (README).

Nothing is assumed about the model: the filterbank is the one the signature captured, the window is
TensorFlow's, eps is read from the signature's answer to silence, and `NumpyFrontend.for_signature`
then checks the whole on a probe signal against the signature itself (within `TOLERANCE`), or declines
(None: the embedder keeps calling TensorFlow)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from data_gen import constants as C

log = logging.getLogger(__name__)

TOLERANCE = 1e-3
"""Largest difference in log power allowed against the signature on the probe (measured: 5e-7 on
noise; float32 FFTs differ in their rounding, and quiet bins' logs amplify it)."""


class NumpyFrontend:
    """log power [..., frames, bins] of audio [..., samples], as the model's `log_power` computes it."""

    def __init__(self, filterbank: np.ndarray, window: np.ndarray, hop: int, eps: float):
        filterbank = np.asarray(filterbank, np.float32)
        used = np.flatnonzero(np.any(filterbank != 0, axis=1))
        self.top = int(used.max()) + 1 if used.size else 1  # FFT bins above the filterbank's top are not read
        self.filterbank = np.ascontiguousarray(filterbank[: self.top])
        self.bins = filterbank.shape[1]
        self.window = np.asarray(window, np.float32)
        self.n_fft = self.window.shape[0]
        self.hop = int(hop)
        self.eps = np.float32(eps)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, np.float32)
        if audio.ndim == 1:
            return self._one(audio)
        return np.stack([self._one(a) for a in audio]) if audio.shape[0] else np.zeros(
            (0, self._frames(audio.shape[-1]), self.bins), np.float32)

    def _frames(self, samples: int) -> int:
        return 1 + (samples - self.n_fft) // self.hop if samples >= self.n_fft else 0

    def _one(self, audio: np.ndarray) -> np.ndarray:
        import scipy.fft

        if self._frames(audio.shape[0]) == 0:
            return np.zeros((0, self.bins), np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(audio, self.n_fft)[:: self.hop]
        spectrum = scipy.fft.rfft(frames * self.window, axis=1)[:, : self.top]
        power = np.square(spectrum.real)
        power += np.square(spectrum.imag)
        out = power @ self.filterbank
        out += self.eps
        return np.log(out, out=out)

    @classmethod
    def for_signature(cls, log_power_fn: Any, n_fft: int, hop: int) -> NumpyFrontend | None:
        """The front-end of `log_power_fn` (a loaded SavedModel's `log_power` signature, STFT of `n_fft`
        every `hop` samples), checked against it; None when it cannot be read or does not match."""
        import tensorflow as tf

        bins_shape = (n_fft // 2 + 1,)
        banks = [t for t in getattr(log_power_fn, "captured_inputs", [])
                 if t.dtype == tf.float32 and t.shape.rank == 2 and tuple(t.shape[:1]) == bins_shape]
        if len(banks) != 1 or n_fft <= 0 or hop <= 0:
            log.info("front-end stays on TensorFlow: no single [%d, bins] filterbank in the signature", bins_shape[0])
            return None

        def signature(audio: np.ndarray) -> np.ndarray:
            return log_power_fn(audio=tf.constant(audio[None]))["log_power"].numpy()[0]

        silence = signature(np.zeros(n_fft, np.float32))
        frontend = cls(banks[0].numpy(), tf.signal.hann_window(n_fft, periodic=True).numpy(), hop,
                       float(np.exp(np.float64(silence.mean()))))
        probe = _probe(n_fft + 12 * hop)
        want, got = signature(probe), frontend(probe)
        worst = float(np.abs(want - got).max()) if want.shape == got.shape else np.inf
        if not worst <= TOLERANCE:
            log.info("front-end stays on TensorFlow: SciPy's differs from the signature by %.3g", worst)
            return None
        return frontend


def _probe(samples: int) -> np.ndarray:
    """A sweep through the filterbank's range with some noise and a silent stretch: every bin loud,
    quiet and silent somewhere."""
    rng = np.random.default_rng(0)
    t = np.arange(samples) / C.SAMPLE_RATE
    sweep = 0.3 * np.sin(2 * np.pi * 60.0 * (t + t**2 * 2000.0))
    audio = sweep + 0.01 * rng.standard_normal(samples)
    audio[samples // 2 : samples // 2 + samples // 8] = 0.0
    return audio.astype(np.float32)


__all__ = ["NumpyFrontend", "TOLERANCE"]
