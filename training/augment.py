"""On-the-fly augmentation in the spectrogram domain (cheap TF ops inside the tf.data pipeline).

Training caches the log filterbank power of each 6 s example once ([frames, bins], see
`training.frontend.log_power`); every epoch then draws a fresh 4 s view of it with these ops, all
O(frames x bins) and vectorised, so augmentation costs far less than the encoder's own step on a
2-core CPU (audio-domain augmentation with audiomentations through tf.numpy_function would
re-run an STFT per view and hold the GIL). The ops never enter the exported model.

With the semitone-spaced front-end a transposition by s semitones is a shift by
s * bins_per_semitone bins (fractional shifts interpolate linearly between bins); a tempo change is
a crop of `frames * tempo` frames resized to `frames` (bilinear along time); room reverb is an
exponentially decaying smear along time in linear power; noise is coloured noise added in linear
power at a random SNR; the phone-like band limit and EQ add a smooth random gain curve (in dB)
over the bands; SpecAugment-style masks hide a band of frequencies / a span of frames.

All randomness is stateless: every function takes a `seed` ([2] int32/int64 tensor), so the views
are a deterministic function of (run seed, element index).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from training.frontend import FrontendConfig

DB = float(np.log(10.0) / 10.0)  # natural-log power units per dB


@dataclass(frozen=True)
class SideAugment:
    """Augmentation strengths for one side of the pair (query or master)."""

    tempo_min: float = 1.0  # tempo factor range (>1: faster = more material in the window)
    tempo_max: float = 1.0
    pitch_semitones: float = 0.0  # uniform shift in [-x, x] semitones (fractional)
    octave_prob: float = 0.0  # probability of an extra +-12 semitones (whistles, octave errors)
    eq_prob: float = 0.0  # random tilt + bumps
    eq_db: float = 0.0  # max tilt in dB per octave (bumps up to the same dB)
    bandlimit_prob: float = 0.0  # phone-like band limit
    reverb_prob: float = 0.0
    rt60_max_s: float = 0.0
    noise_prob: float = 0.0
    snr_db_min: float = 30.0
    snr_db_max: float = 30.0
    freq_mask_bins: int = 0  # max width of one frequency mask (0: none)
    time_mask_frames: int = 0  # max width of one time mask (0: none)


QUERY_DEFAULT = SideAugment(tempo_min=0.9, tempo_max=1.1, pitch_semitones=7.0, octave_prob=0.15,
                            eq_prob=0.7, eq_db=6.0, bandlimit_prob=0.3, reverb_prob=0.4,
                            rt60_max_s=0.9, noise_prob=0.6, snr_db_min=0.0, snr_db_max=30.0,
                            freq_mask_bins=6, time_mask_frames=8)
MASTER_DEFAULT = SideAugment(tempo_min=0.97, tempo_max=1.03, pitch_semitones=0.5, eq_prob=0.5,
                             eq_db=3.0, noise_prob=0.3, snr_db_min=15.0, snr_db_max=40.0)


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    query: SideAugment = QUERY_DEFAULT
    master: SideAugment = MASTER_DEFAULT
    query_jitter_s: float = 1.0  # query crop offset vs the master's (serving cuts master windows every 1 s)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "AugmentConfig":
        d = dict(d)
        for side in ("query", "master"):
            if side in d:
                d[side] = SideAugment(**d[side])
        return AugmentConfig(**d)


def _u(seed, lo=0.0, hi=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed, lo, hi)


def _seeds(seed, n: int):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def crop_tempo(logp: tf.Tensor, start: tf.Tensor, tempo: tf.Tensor, out_frames: int) -> tf.Tensor:
    """[frames, bins] -> [out_frames, bins]: `out_frames * tempo` frames from `start`, resized to out_frames.

    `start` is clipped so the crop stays inside the clip; tempo 1 is an exact slice.
    """
    total = tf.shape(logp)[0]
    length = tf.clip_by_value(tf.cast(tf.round(out_frames * tempo), tf.int32), 2, total)
    start = tf.clip_by_value(tf.cast(start, tf.int32), 0, total - length)
    seg = logp[start:start + length]

    def resized():
        return tf.image.resize(seg[tf.newaxis, ..., tf.newaxis], [out_frames, tf.shape(logp)[1]],
                               method="bilinear")[0, ..., 0]

    return tf.cond(tf.equal(length, out_frames), lambda: seg, resized)


def shift_bins(logp: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """Shift [frames, bins] up by `shift` bins (fractional: linear interpolation); new bins get the floor."""
    bins = tf.shape(logp)[-1]
    fill = tf.reduce_min(logp)
    src = tf.cast(tf.range(bins), tf.float32) - tf.cast(shift, tf.float32)
    i0 = tf.floor(src)
    w = src - i0
    i0 = tf.cast(i0, tf.int32)

    def take(i):
        valid = tf.logical_and(i >= 0, i < bins)
        vals = tf.gather(logp, tf.clip_by_value(i, 0, bins - 1), axis=-1)
        return tf.where(valid[tf.newaxis, :], vals, fill)

    return (1.0 - w) * take(i0) + w * take(i0 + 1)


def eq_curve_db(seed, centers_hz: np.ndarray, max_db: float, bandlimit: tf.Tensor) -> tf.Tensor:
    """[bins] random smooth gain in dB: a tilt, two bumps and (if `bandlimit`) a phone-like band-pass."""
    s = _seeds(seed, 6)
    octs = tf.constant(np.log2(centers_hz / 1000.0), tf.float32)
    gain = _u(s[0], -max_db, max_db) * octs
    for k in (1, 2):
        centre = _u(s[k], -2.5, 2.0)
        width = 0.3 + _u(s[k + 2], 0.0, 1.0)
        gain += _u(tf.stack([s[k][0], s[k][1] + 7]), -max_db, max_db) * tf.exp(
            -0.5 * tf.square((octs - centre) / width))
    lo = tf.math.log(_u(s[5], 150.0, 500.0) / 1000.0) / np.log(2.0)
    hi = tf.math.log(_u(tf.stack([s[5][0], s[5][1] + 3]), 2500.0, 4000.0) / 1000.0) / np.log(2.0)
    band = -40.0 * (tf.sigmoid(-(octs - lo) * 8.0) + tf.sigmoid((octs - hi) * 8.0))
    return gain + tf.where(bandlimit, band, tf.zeros_like(band))


def reverb(logp: tf.Tensor, rt60_s: tf.Tensor, wet_db: tf.Tensor, hop_s: float, max_frames: int = 32) -> tf.Tensor:
    """Exponential-decay smear along time in linear power: [frames, bins] -> same."""
    peak = tf.reduce_max(logp)
    p = tf.exp(logp - peak)  # [T, F]
    k = tf.cast(tf.range(1, max_frames), tf.float32) * hop_s
    tail = tf.exp(-6.9 * k / tf.maximum(rt60_s, 1e-3)) * tf.exp(wet_db * DB)
    kernel = tf.concat([[1.0], tail], 0)[::-1]  # causal: newest frame last
    x = tf.transpose(p)[:, :, tf.newaxis]  # [F, T, 1]
    x = tf.pad(x, [[0, 0], [max_frames - 1, 0], [0, 0]])
    y = tf.nn.conv1d(x, kernel[:, tf.newaxis, tf.newaxis], stride=1, padding="VALID")
    return tf.math.log(tf.transpose(y[:, :, 0]) + 1e-12) + peak


def add_noise(logp: tf.Tensor, seed, snr_db: tf.Tensor, centers_hz: np.ndarray) -> tf.Tensor:
    """Add coloured noise (spectral slope random in [-6, +3] dB/octave) at `snr_db` in linear power."""
    s = _seeds(seed, 2)
    peak = tf.reduce_max(logp)
    p = tf.exp(logp - peak)
    slope = _u(s[0], -6.0, 3.0)
    shape = tf.exp(slope * DB * tf.constant(np.log2(centers_hz / 1000.0), tf.float32))  # [F]
    fluct = tf.exp(0.5 * tf.random.stateless_normal(tf.shape(p), s[1]))
    noise = shape[tf.newaxis, :] * fluct
    level = tf.reduce_mean(p) / tf.reduce_mean(noise) * tf.exp(-snr_db * DB)
    return tf.math.log(p + level * noise + 1e-12) + peak


def mask(logp: tf.Tensor, seed, axis: int, max_width: int) -> tf.Tensor:
    """Set a random span of up to `max_width` frames (axis 0) or bins (axis 1) to the floor value."""
    s = _seeds(seed, 2)
    n = tf.shape(logp)[axis]
    width = tf.cast(_u(s[0], 0.0, float(max_width + 1)), tf.int32)
    start = tf.cast(_u(s[1], 0.0, 1.0) * tf.cast(n - width + 1, tf.float32), tf.int32)
    idx = tf.range(n)
    hit = tf.logical_and(idx >= start, idx < start + width)
    hit = hit[:, tf.newaxis] if axis == 0 else hit[tf.newaxis, :]
    return tf.where(hit, tf.reduce_min(logp), logp)


def augment_side(logp: tf.Tensor, seed, start: tf.Tensor, aug: SideAugment, fe: FrontendConfig,
                 extra_shift: tf.Tensor | float = 0.0) -> tf.Tensor:
    """Cached log power of a 6 s clip [frames, bins] -> one augmented 4 s view [window_frames, bins]."""
    s = _seeds(seed, 16)
    out_frames = fe.window_frames
    centers = fe.center_hz()
    tempo = tf.exp(_u(s[0], float(np.log(aug.tempo_min)), float(np.log(aug.tempo_max))))
    # Keep the crop centred on the same material whatever the tempo.
    start = tf.cast(start, tf.float32) - 0.5 * (tempo - 1.0) * out_frames
    x = crop_tempo(logp, tf.cast(tf.round(start), tf.int32), tempo, out_frames)
    if fe.kind == "logfreq":
        semis = _u(s[1], -aug.pitch_semitones, aug.pitch_semitones) if aug.pitch_semitones > 0 else 0.0
        octave = tf.where(_u(s[2]) < aug.octave_prob, tf.where(_u(s[3]) < 0.5, -12.0, 12.0), 0.0)
        shift = (semis + octave + extra_shift) * fe.bins_per_semitone
        x = shift_bins(x, shift)
    if aug.eq_prob > 0:
        curve = eq_curve_db(s[4], centers, aug.eq_db, _u(s[5]) < aug.bandlimit_prob)
        x = tf.where(_u(s[6]) < aug.eq_prob, x + curve[tf.newaxis, :] * DB, x)
    if aug.reverb_prob > 0:
        rt60 = _u(s[7], 0.1, max(aug.rt60_max_s, 0.1))
        wet = _u(s[8], -12.0, -3.0)
        hop_s = fe.hop / 16000.0
        x = tf.cond(_u(s[9]) < aug.reverb_prob, lambda: reverb(x, rt60, wet, hop_s), lambda: x)
    if aug.noise_prob > 0:
        snr = _u(s[10], aug.snr_db_min, aug.snr_db_max)
        x = tf.cond(_u(s[11]) < aug.noise_prob, lambda: add_noise(x, s[12], snr, centers), lambda: x)
    if aug.freq_mask_bins > 0:
        x = mask(x, s[13], 1, aug.freq_mask_bins)
    if aug.time_mask_frames > 0:
        x = mask(x, s[14], 0, aug.time_mask_frames)
    return x
