"""The spectrogram front-end: a Keras layer inside the model, so serving sends raw audio.

[batch, samples] float32 at SAMPLE_RATE -> [batch, frames, bins, 1] normalised log spectrogram.

Two frequency scales:

* ``logfreq`` (default): semitone-spaced triangular filters, ``bins_per_semitone`` per semitone,
  starting at ``fmin_hz``. On this axis a transposition by k semitones is a shift by
  ``k * bins_per_semitone`` bins, so pitch-shift augmentation is a cheap shift of the cached
  spectrogram, and convolutions followed by pooling over frequency make the encoder (nearly)
  key-invariant -- hummers rarely sing in the key of the record.
* ``logmel``: a mel filterbank from ``fmin_hz`` to ``fmax_hz`` (the first version; kept for comparison).

The computation is split in two so training can cache the expensive part:
``log_power(audio)`` (STFT -> filterbank -> log power, [batch, frames, bins]) is computed once per
training example and cached; ``normalize(log_power)`` (a floor relative to the window's loudest
bin, then per-window mean/variance normalisation, so loudness and mic gain do not matter) runs on
the 4 s crop. Frames are computed without end padding (``frames = 1 + (samples - n_fft) // hop``), so
cropping frames from the spectrogram of a longer clip gives exactly the spectrogram of the
corresponding audio window (when the crop starts on a hop boundary).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
import tensorflow as tf

from data_gen import constants as C

LOG_EPS = 1e-10
"""Added to the filterbank power before the log (keeps digital silence finite)."""


@dataclass(frozen=True)
class FrontendConfig:
    kind: str = "logfreq"  # "logfreq" (semitone-spaced filterbank) or "logmel" (mel filterbank)
    n_fft: int = 2048  # 128 ms: resolves semitones down to ~130 Hz
    hop: int = 640  # 40 ms between frames: 97 frames per 4 s window
    bins: int = 72  # logfreq: 6 octaves from fmin_hz (C2..B7); logmel: number of mel bands
    fmin_hz: float = 65.406  # C2
    fmax_hz: float = 4000.0  # logmel only (logfreq's top is fmin * 2**(bins / (12 * bins_per_semitone)))
    bins_per_semitone: int = 1  # logfreq only
    floor_db: float = 60.0  # power more than this far below the window's peak is clipped to the floor

    def to_dict(self) -> dict:
        return asdict(self)

    def frames(self, samples: int) -> int:
        """Frames of a clip of `samples` samples (no end padding)."""
        return 1 + (samples - self.n_fft) // self.hop

    @property
    def window_frames(self) -> int:
        return self.frames(C.WINDOW_SAMPLES)

    def center_hz(self) -> np.ndarray:
        """[bins] centre frequency of each band (Hz)."""
        if self.kind == "logfreq":
            return self.fmin_hz * 2.0 ** (np.arange(self.bins) / (12.0 * self.bins_per_semitone))
        mel = np.linspace(_hz_to_mel(self.fmin_hz), _hz_to_mel(self.fmax_hz), self.bins + 2)[1:-1]
        return _mel_to_hz(mel)


def _hz_to_mel(f):
    return 1127.0 * np.log1p(np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * np.expm1(np.asarray(m) / 1127.0)


def logfreq_matrix(cfg: FrontendConfig) -> np.ndarray:
    """[n_fft//2+1, bins] semitone-spaced triangular filters, peak-normalised (max weight 1).

    Filter b is centred on f_b = fmin * 2**(b / (12 * bins_per_semitone)) and reaches zero at the
    neighbouring centres; where that is narrower than the FFT's bin spacing (low notes), the
    half-width is widened to one FFT bin so that every filter sees the spectrum (those low bands
    blur into each other instead of going blind).
    """
    freqs = np.arange(cfg.n_fft // 2 + 1) * C.SAMPLE_RATE / cfg.n_fft
    df = C.SAMPLE_RATE / cfg.n_fft
    step = 2.0 ** (1.0 / (12.0 * cfg.bins_per_semitone))
    fb = np.zeros((freqs.size, cfg.bins), dtype=np.float32)
    for b, fc in enumerate(cfg.center_hz()):
        lo = max(fc - fc / step, df)
        hi = max(fc * step - fc, df)
        w = np.where(freqs <= fc, 1.0 - (fc - freqs) / lo, 1.0 - (freqs - fc) / hi)
        fb[:, b] = np.clip(w, 0.0, None)
    return fb


def filterbank_matrix(cfg: FrontendConfig) -> np.ndarray:
    """[n_fft//2+1, bins] float32 filterbank for the configured frequency scale."""
    if cfg.kind == "logfreq":
        return logfreq_matrix(cfg)
    if cfg.kind == "logmel":
        return tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins=cfg.bins,
            num_spectrogram_bins=cfg.n_fft // 2 + 1,
            sample_rate=C.SAMPLE_RATE,
            lower_edge_hertz=cfg.fmin_hz,
            upper_edge_hertz=cfg.fmax_hz,
        ).numpy()
    raise ValueError(f"unknown front-end kind {cfg.kind!r}; use 'logfreq' or 'logmel'")


def log_power(audio: tf.Tensor, cfg: FrontendConfig, fb: tf.Tensor | None = None) -> tf.Tensor:
    """[..., samples] float32 -> [..., frames, bins] natural-log filterbank power."""
    if fb is None:
        fb = tf.constant(filterbank_matrix(cfg))
    stft = tf.signal.stft(audio, frame_length=cfg.n_fft, frame_step=cfg.hop, fft_length=cfg.n_fft,
                          pad_end=False)
    power = tf.square(tf.math.real(stft)) + tf.square(tf.math.imag(stft))
    return tf.math.log(tf.tensordot(power, fb, axes=1) + LOG_EPS)


def normalize(logp: tf.Tensor, floor_db: float) -> tf.Tensor:
    """[batch, frames, bins] log power -> same shape, floored and mean/variance normalised per window."""
    floor = floor_db * np.log(10.0) / 10.0
    peak = tf.reduce_max(logp, axis=[-2, -1], keepdims=True)
    x = tf.maximum(logp, peak - floor)
    mean = tf.reduce_mean(x, axis=[-2, -1], keepdims=True)
    std = tf.math.reduce_std(x, axis=[-2, -1], keepdims=True)
    return (x - mean) / (std + 1e-3)


@keras.saving.register_keras_serializable(package="earworm")
class SpectrogramFrontend(keras.layers.Layer):
    """Raw audio [batch, samples] -> normalised log spectrogram [batch, frames, bins, 1]."""

    def __init__(self, kind: str = "logfreq", n_fft: int = 2048, hop: int = 640, bins: int = 72,
                 fmin_hz: float = 65.406, fmax_hz: float = 4000.0, bins_per_semitone: int = 1,
                 floor_db: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.cfg = FrontendConfig(kind, n_fft, hop, bins, fmin_hz, fmax_hz, bins_per_semitone, floor_db)
        self._fb = tf.constant(filterbank_matrix(self.cfg))

    def call(self, audio):
        return normalize(log_power(audio, self.cfg, self._fb), self.cfg.floor_db)[..., tf.newaxis]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.cfg.frames(input_shape[1]), self.cfg.bins, 1)

    def get_config(self):
        return {**super().get_config(), **self.cfg.to_dict()}
