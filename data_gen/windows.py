"""Cutting recordings into the fixed-length windows the encoder embeds.

Masters and queries are cut the same way (only the hop differs), so a query window and the master
window holding the same melody line up. Offsets are in seconds from the recording's start.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

from data_gen import constants as C


def window_starts(num_samples: int, hop: int, window: int = C.WINDOW_SAMPLES) -> np.ndarray:
    """Start sample of every window; the last window is aligned to the end so no audio is dropped.

    A recording shorter than one window gets one window (zero-padded by `cut_windows`).
    """
    if num_samples <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, num_samples - window + 1, hop, dtype=np.int64)
    if starts[-1] + window < num_samples:
        starts = np.append(starts, num_samples - window)
    return starts


def cut_windows(
    audio: np.ndarray, hop: int, window: int = C.WINDOW_SAMPLES
) -> tuple[np.ndarray, np.ndarray]:
    """[time] float32 -> (windows [n, window] float32, offsets_seconds [n] float32)."""
    starts = window_starts(audio.shape[0], hop, window)
    if audio.shape[0] < window:
        audio = np.pad(audio, (0, window - audio.shape[0]))
    idx = starts[:, None] + np.arange(window)[None, :]
    windows = audio[idx].astype(np.float32, copy=False)
    return windows, (starts / C.SAMPLE_RATE).astype(np.float32)


def cut_master_windows(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return cut_windows(audio, C.MASTER_WINDOW_HOP)


def view_window_hop(rate: float) -> int:
    """Samples between the windows of the tempo view `rate` (in the view's own time): the view as
    sung every QUERY_WINDOW_HOP, the other views every TEMPO_VIEW_WINDOW_HOP."""
    return C.QUERY_WINDOW_HOP if tempo_fraction(rate) == 1 else C.TEMPO_VIEW_WINDOW_HOP


@functools.lru_cache(maxsize=256)
def tempo_fraction(rate: float) -> Fraction:
    """A tempo view's rate as the fraction the views use (denominator at most 20): 1 means as sung.
    Remembered per rate: a query asks for its few views' fractions many times (2-9 us each)."""
    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    return Fraction(rate).limit_denominator(20)


def tempo_view(audio: np.ndarray, rate: float) -> np.ndarray:
    """The recording played `rate` times slower (`rate` > 1: longer, slower and lower; < 1: shorter,
    faster and higher), by band-limited resampling (`scipy.signal.resample_poly`, `rate` approximated
    by a fraction with a denominator of at most 20). Changing the speed moves the pitch too, which a
    key-invariant encoder does not mind; rate 1 returns the audio itself."""
    from scipy.signal import resample_poly

    frac = tempo_fraction(rate)
    if frac == 1:
        return audio
    return resample_poly(audio, frac.numerator, frac.denominator).astype(np.float32, copy=False)


def cut_query_views(audio: np.ndarray, rates: tuple[float, ...] = (1.0,)
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query windows of each tempo view (`tempo_view(audio, rate)` for every rate, windows every
    `view_window_hop(rate)`), concatenated:
    (windows [n, WINDOW_SAMPLES] float32, offsets_seconds [n] float32 in their view's own time,
    views [n] int64: index into `rates`)."""
    windows, offsets, views = [], [], []
    for v, rate in enumerate(rates):
        w, o = cut_windows(tempo_view(audio, rate), view_window_hop(rate))
        windows.append(w)
        offsets.append(o)
        views.append(np.full(o.shape[0], v, np.int64))
    return np.concatenate(windows), np.concatenate(offsets), np.concatenate(views)
