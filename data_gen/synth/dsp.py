"""Signal building blocks shared by the synthesizers: additive harmonics, formant responses,
spectrally shaped noise and amplitude envelopes.

All frame-rate arrays use the contour convention (frame `i` centred on sample `i * PITCH_HOP`);
`upsample_frames` turns them into per-sample values by linear interpolation, which keeps every
amplitude and frequency trajectory continuous (no clicks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any, TypeVar

import numpy as np

from data_gen import constants as C
from data_gen.synth.contour import Contour, SynthError, note_segments

V = TypeVar("V")

NYQUIST = C.SAMPLE_RATE / 2.0
NOISE_FFT = 512
"""FFT size of the STFT used to shape noise (32 ms at 16 kHz); its hop is PITCH_HOP."""


def upsample_frames(x: np.ndarray, n_samples: int) -> np.ndarray:
    """Frame-rate values [frames] or [frames, k] -> per-sample values [n_samples(, k)] (linear)."""
    x = np.asarray(x, dtype=np.float64)
    pos = np.arange(n_samples, dtype=np.float64) / C.PITCH_HOP
    i0 = np.minimum(pos.astype(np.int64), x.shape[0] - 1)
    i1 = np.minimum(i0 + 1, x.shape[0] - 1)
    frac = pos - i0
    if x.ndim == 2:
        frac = frac[:, None]
    return x[i0] * (1.0 - frac) + x[i1] * frac


def smooth_noise(n: int, rng: np.random.Generator, smooth_frames: float) -> np.ndarray:
    """[n] Gaussian noise low-passed by a Gaussian kernel of sd `smooth_frames`, unit sd."""
    if n == 0:
        return np.zeros(0)
    white = rng.standard_normal(n + 8 * int(smooth_frames + 1))
    if smooth_frames > 0:
        half = int(4 * smooth_frames) + 1
        t = np.arange(-half, half + 1)
        kernel = np.exp(-0.5 * (t / smooth_frames) ** 2)
        white = np.convolve(white, kernel / kernel.sum(), mode="same")
    out = white[:n]
    sd = out.std()
    return out / sd if sd > 0 else out


def _trig(freqs: np.ndarray) -> tuple[np.ndarray, ...]:
    w = 2.0 * np.pi * np.asarray(freqs, dtype=np.float64) / C.SAMPLE_RATE
    return np.cos(w), np.sin(w), np.cos(2.0 * w), np.sin(2.0 * w)


def _resonator(trig: tuple[np.ndarray, ...], centre: np.ndarray | float, bandwidth: np.ndarray | float) -> np.ndarray:
    cw, sw, c2w, s2w = trig
    r = np.exp(-np.pi * np.asarray(bandwidth) / C.SAMPLE_RATE)
    c = 2.0 * r * np.cos(2.0 * np.pi * np.asarray(centre) / C.SAMPLE_RATE)
    r2 = r * r
    re = 1.0 - c * cw + r2 * c2w
    im = c * sw - r2 * s2w
    return (1.0 - c + r2) / np.sqrt(np.maximum(re * re + im * im, 1e-18))


def resonator_gain(freqs: np.ndarray, centre: np.ndarray | float, bandwidth: np.ndarray | float) -> np.ndarray:
    """|H(f)| of a digital two-pole resonator normalised to unit gain at DC (Klatt style).

    freqs, centre, bandwidth broadcast together (Hz). Cascading these reproduces the relative
    formant amplitudes of a vocal tract."""
    return _resonator(_trig(freqs), centre, bandwidth)


def formant_gain(
    freqs: np.ndarray,
    formants: Sequence[tuple[float, float]] | np.ndarray,
    antiformants: Sequence[tuple[float, float]] | np.ndarray = (),
) -> np.ndarray:
    """Magnitude response of a resonator cascade (`formants`) and anti-resonators (`antiformants`)
    at `freqs`. Each (centre, bandwidth) may be a scalar pair or per-frame arrays that broadcast
    against `freqs` (e.g. freqs [frames, k] with centres [frames, 1])."""
    trig = _trig(freqs)
    g = np.ones(np.shape(freqs))
    for f, b in formants:
        g = g * _resonator(trig, f, b)
    for f, b in antiformants:
        g = g / np.maximum(_resonator(trig, f, b), 1e-6)
    return g


def harmonic_signal(
    f0_frames: np.ndarray,
    amps: np.ndarray,
    *,
    phases: np.ndarray | None = None,
) -> np.ndarray:
    """Additive synthesis of a harmonic tone with a continuous phase.

    f0_frames: [frames] Hz, positive everywhere (use `Contour.filled_f0`).
    amps:      [frames, k] linear amplitude of harmonics 1..k per frame; harmonics that would
               exceed 0.92 x Nyquist fade out smoothly, so the output is band-limited.
    phases:    [k] starting phase of each harmonic (default 0).
    Returns [frames * PITCH_HOP] float64.
    """
    f0_frames = np.asarray(f0_frames, dtype=np.float64)
    amps = np.asarray(amps, dtype=np.float64)
    n_frames, k = amps.shape
    n = n_frames * C.PITCH_HOP
    harmonics = np.arange(1, k + 1, dtype=np.float64)
    hf = f0_frames[:, None] * harmonics[None, :]
    amps = amps * np.clip((0.92 * NYQUIST - hf) / (0.07 * NYQUIST), 0.0, 1.0)
    f0 = upsample_frames(f0_frames, n)
    cycles = np.cumsum(f0) / C.SAMPLE_RATE  # the fundamental's phase, in cycles
    cycles -= cycles[0]
    phases = np.zeros(k) if phases is None else np.asarray(phases, dtype=np.float64)
    active = amps.max(axis=0) > 0
    if not active.any():
        return np.zeros(n)
    last = int(np.flatnonzero(active)[-1]) + 1
    return _harmonics_kernel()(cycles, np.ascontiguousarray(amps[:, :last]), active[:last],
                               np.cos(phases[:last]), np.sin(phases[:last]), float(C.PITCH_HOP), np.empty(n))


_KERNEL = None


def _harmonics_kernel():
    """The compiled additive-synthesis loop (numba, compiled once per process on first use, ~1-2 s;
    no on-disk cache, see WORKSPACE.md on corrupt numba caches).

    out[t] = sum_j amps_t[j] * sin((j + 1) * theta_t + phase_j), theta_t = 2 pi cycles[t], with
    amps_t the frame amplitudes interpolated linearly at sample t (frame i at sample i * hop). The
    harmonics' sines come from rotating (cos theta_t, sin theta_t) once per harmonic in float64
    (errors ~1e-13), not from a sine per harmonic and sample: 4x faster than numpy's sin, which
    made this the costliest step of hum/tone synthesis."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(cache=False, nogil=True)
        def kernel(cycles, amps, active, cos_ph, sin_ph, hop, out):
            n, k, nf = cycles.shape[0], amps.shape[1], amps.shape[0]
            block = 512  # samples per pass: the working arrays stay in L1
            cs, sn = np.empty(block), np.empty(block)
            c1, s1, acc, frac = np.empty(block), np.empty(block), np.empty(block), np.empty(block)
            i0s, i1s = np.empty(block, np.int64), np.empty(block, np.int64)
            two_pi = 2.0 * np.pi
            for b0 in range(0, n, block):
                m = min(block, n - b0)
                for t in range(m):
                    x = cycles[b0 + t]
                    th = two_pi * (x - np.floor(x))
                    c1[t], s1[t] = np.cos(th), np.sin(th)
                    cs[t], sn[t], acc[t] = 1.0, 0.0, 0.0
                    pos = (b0 + t) / hop
                    i0 = min(int(pos), nf - 1)
                    i0s[t], i1s[t], frac[t] = i0, min(i0 + 1, nf - 1), pos - i0
                for j in range(k):
                    for t in range(m):  # harmonic j + 1: rotate harmonic j's phasor by theta
                        c = cs[t] * c1[t] - sn[t] * s1[t]
                        sn[t] = sn[t] * c1[t] + cs[t] * s1[t]
                        cs[t] = c
                    if active[j]:
                        cp, sp = cos_ph[j], sin_ph[j]
                        for t in range(m):
                            a = amps[i0s[t], j] * (1.0 - frac[t]) + amps[i1s[t], j] * frac[t]
                            acc[t] += a * (sn[t] * cp + cs[t] * sp)
                for t in range(m):
                    out[b0 + t] = acc[t]
            return out

        _KERNEL = kernel
    return _KERNEL


def noise_bin_freqs() -> np.ndarray:
    """[bins] centre frequency (Hz) of each STFT bin used by `shaped_noise`."""
    return np.fft.rfftfreq(NOISE_FFT, 1.0 / C.SAMPLE_RATE)


def filter_stft(x: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """A time-varying filter: multiply the STFT (NOISE_FFT, hop PITCH_HOP, centred) of x
    [frames * PITCH_HOP] by gains [frames, bins] and overlap-add back (same length as x)."""
    import librosa  # local: slow to import

    spec = librosa.stft(np.asarray(x, dtype=np.float64), n_fft=NOISE_FFT, hop_length=C.PITCH_HOP, center=True)
    g = np.asarray(gains, dtype=np.float64).T  # [bins, frames]
    if spec.shape[1] > g.shape[1]:
        g = np.concatenate([g, np.repeat(g[:, -1:], spec.shape[1] - g.shape[1], axis=1)], axis=1)
    return librosa.istft(spec * g[:, : spec.shape[1]], hop_length=C.PITCH_HOP, n_fft=NOISE_FFT, length=x.shape[0])


def shaped_noise(gains: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White noise whose short-time magnitude spectrum is multiplied by `gains`.

    gains: [frames, bins] (bins = NOISE_FFT // 2 + 1, see `noise_bin_freqs`), one row per contour
    frame. Returns [frames * PITCH_HOP] float64 (overlap-added, so gains interpolate smoothly)."""
    return filter_stft(rng.standard_normal(gains.shape[0] * C.PITCH_HOP), gains)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def scale_to(reference: np.ndarray, x: np.ndarray, rel_db: float) -> np.ndarray:
    """`x` scaled so that rms(x) = rms(reference) * 10^(rel_db / 20) (unchanged if either is 0)."""
    r_ref, r_x = rms(reference), rms(x)
    if r_ref == 0 or r_x == 0:
        return x * 0.0
    return x * (r_ref / r_x) * 10.0 ** (rel_db / 20.0)


def mix_at_db(main: np.ndarray, extra: np.ndarray, rel_db: float) -> np.ndarray:
    """main + extra scaled to `rel_db` relative to main (see `scale_to`)."""
    return main + scale_to(main, extra, rel_db)


def note_envelope(
    contour: Contour,
    rng: np.random.Generator,
    *,
    attack_s: float = 0.04,
    release_s: float = 0.05,
    sustain: float = 1.0,
    accent_sd: float = 0.0,
    legato_dip: float = 0.8,
) -> np.ndarray:
    """[frames] amplitude envelope: 0 where unvoiced; per note a raised-cosine attack, an
    exponential decay towards `sustain` (relative level at the note's end), a raised-cosine
    release, and a random loudness accent (log-normal, sd `accent_sd`). Notes that follow
    another without a gap (legato) start from `legato_dip` instead of silence."""
    env = np.zeros(contour.n_frames)
    rate = C.PITCH_FRAME_RATE
    segments = note_segments(contour)
    for i, (s, e) in enumerate(segments):
        length = e - s
        t = np.arange(length, dtype=np.float64)
        accent = float(np.exp(rng.normal(0.0, accent_sd))) if accent_sd > 0 else 1.0
        decay = sustain ** (t / max(length - 1, 1))
        joined_prev = i > 0 and segments[i - 1][1] == s
        joined_next = i + 1 < len(segments) and segments[i + 1][0] == e
        # Ramps never longer than half the note (and at least one frame, for one-frame notes).
        a = max(1, min(int(round(attack_s * rate)), max(length // 2, 1)))
        r = max(1, min(int(round(release_s * rate)), max(length // 2, 1)))
        shape = np.ones(length)
        floor = legato_dip if joined_prev else 0.0
        ramp_up = floor + (1.0 - floor) * (0.5 - 0.5 * np.cos(np.pi * (np.arange(a) + 1) / (a + 1)))
        shape[:a] = np.minimum(shape[:a], ramp_up)
        if not joined_next:
            ramp_down = 0.5 - 0.5 * np.cos(np.pi * (r - np.arange(r)) / (r + 1))
            shape[length - r :] = np.minimum(shape[length - r :], ramp_down)
        env[s:e] = accent * decay * shape
    return env


def normalize_peak(x: np.ndarray, peak: float = 0.5) -> np.ndarray:
    """Scale to the given peak (silence stays silence); returns float32."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    y = x * (peak / m) if m > 0 else x
    return y.astype(np.float32)


def override(voice: V, params: dict[str, Any]) -> V:
    """`dataclasses.replace(voice, **params)` with a clear error for an unknown field."""
    names = {f.name for f in fields(voice)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - names)
    if unknown:
        raise SynthError(
            f"unknown {type(voice).__name__} parameter(s) {unknown}; known: {sorted(names)}"
        )
    return replace(voice, **params)  # type: ignore[type-var]
