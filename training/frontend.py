"""The spectrogram front-end: a Keras layer inside the model, so serving sends raw audio.

[batch, samples] float32 at SAMPLE_RATE -> [batch, frames, bins, 1] log-compressed spectrogram.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from data_gen import constants as C


@dataclass(frozen=True)
class FrontendConfig:
    kind: str = "logmel"  # "logmel" (mel filterbank) or "logfreq" (semitone-spaced filterbank)
    n_fft: int = 1024
    hop: int = 320  # 20 ms
    bins: int = 96
    fmin_hz: float = 50.0
    fmax_hz: float = 4000.0


def filterbank_matrix(cfg: FrontendConfig) -> tf.Tensor:
    """[n_fft//2+1, bins] float32 filterbank for the configured frequency scale."""
    if cfg.kind == "logmel":
        return tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins=cfg.bins,
            num_spectrogram_bins=cfg.n_fft // 2 + 1,
            sample_rate=C.SAMPLE_RATE,
            lower_edge_hertz=cfg.fmin_hz,
            upper_edge_hertz=cfg.fmax_hz,
        )
    if cfg.kind == "logfreq":
        import numpy as np

        freqs = np.linspace(0, C.SAMPLE_RATE / 2, cfg.n_fft // 2 + 1)
        edges = cfg.fmin_hz * (cfg.fmax_hz / cfg.fmin_hz) ** (np.arange(cfg.bins + 2) / (cfg.bins + 1))
        fb = np.zeros((freqs.size, cfg.bins), dtype=np.float32)
        for b in range(cfg.bins):
            lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
            up = (freqs - lo) / max(mid - lo, 1e-6)
            down = (hi - freqs) / max(hi - mid, 1e-6)
            fb[:, b] = np.clip(np.minimum(up, down), 0.0, None)
            if fb[:, b].sum() == 0:  # narrower than one FFT bin: take the nearest bin
                fb[np.argmin(np.abs(freqs - mid)), b] = 1.0
        return tf.constant(fb)
    raise ValueError(f"unknown front-end kind {cfg.kind!r}; use 'logmel' or 'logfreq'")


@keras.saving.register_keras_serializable(package="earworm")
class SpectrogramFrontend(keras.layers.Layer):
    """Raw audio [batch, samples] -> log spectrogram [batch, frames, bins, 1]."""

    def __init__(self, kind: str = "logmel", n_fft: int = 1024, hop: int = 320, bins: int = 96,
                 fmin_hz: float = 50.0, fmax_hz: float = 4000.0, **kwargs):
        super().__init__(**kwargs)
        self.cfg = FrontendConfig(kind, n_fft, hop, bins, fmin_hz, fmax_hz)
        self._fb = filterbank_matrix(self.cfg)

    def call(self, audio):
        stft = tf.signal.stft(audio, frame_length=self.cfg.n_fft, frame_step=self.cfg.hop,
                              fft_length=self.cfg.n_fft, pad_end=True)
        power = tf.square(tf.abs(stft))
        spec = tf.tensordot(power, self._fb, axes=1)
        logspec = tf.math.log(spec + 1e-6)
        # Per-example normalisation: loudness and mic gain must not matter.
        mean = tf.reduce_mean(logspec, axis=[1, 2], keepdims=True)
        std = tf.math.reduce_std(logspec, axis=[1, 2], keepdims=True)
        return ((logspec - mean) / (std + 1e-5))[..., tf.newaxis]

    def get_config(self):
        return {**super().get_config(), **self.cfg.__dict__}
