"""A whistled tune: a near-sinusoid high up (700-2500 Hz), breath noise around it, portamento.

Whistlers rarely whistle in the register a melody is written in: the contour is moved up by
whole octaves so its median lands near `WHISTLE_CENTRE_HZ`. Portamento comes from smoothing the
log-f0 trajectory (lips and tongue cannot jump), and the breath is a noise band that follows the
tone plus a faint broadband hiss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_gen import constants as C
from data_gen.synth import dsp
from data_gen.synth.contour import Contour, SynthError
from data_gen.synth.hum import apply_jitter

WHISTLE_LOW_HZ = 700.0
WHISTLE_HIGH_HZ = 2500.0
WHISTLE_CENTRE_HZ = math.sqrt(WHISTLE_LOW_HZ * WHISTLE_HIGH_HZ)  # ~1320 Hz
MAX_WHISTLE_OCTAVES = 3


@dataclass(frozen=True)
class WhistleVoice:
    h2_db: float = -30.0  # second harmonic relative to the fundamental
    h3_db: float = -42.0
    breath_db: float = -18.0  # noise band around the tone, relative to the tone
    breath_bandwidth_hz: float = 150.0  # sd of the Gaussian noise band around f0
    hiss_db: float = -36.0  # broadband breath hiss relative to the tone
    portamento_s: float = 0.03  # sd of the log-f0 smoothing (glides between notes)
    jitter_cents: float = 5.0
    shimmer: float = 0.1
    attack_s: float = 0.05
    release_s: float = 0.07
    sustain: float = 0.9
    accent_sd: float = 0.1

    @classmethod
    def sample(cls, rng: np.random.Generator) -> WhistleVoice:
        return cls(
            h2_db=float(rng.uniform(-38.0, -24.0)),
            h3_db=float(rng.uniform(-50.0, -36.0)),
            breath_db=float(rng.uniform(-26.0, -12.0)),
            breath_bandwidth_hz=float(rng.uniform(80.0, 250.0)),
            hiss_db=float(rng.uniform(-45.0, -30.0)),
            portamento_s=float(rng.uniform(0.015, 0.05)),
            jitter_cents=float(rng.uniform(2.0, 8.0)),
            shimmer=float(rng.uniform(0.04, 0.15)),
            attack_s=float(rng.uniform(0.02, 0.08)),
            release_s=float(rng.uniform(0.03, 0.1)),
            sustain=float(rng.uniform(0.75, 1.0)),
            accent_sd=float(rng.uniform(0.05, 0.15)),
        )


def whistle_octaves(contour: Contour) -> int:
    """Whole octaves (0..MAX_WHISTLE_OCTAVES) that bring the contour's median f0 closest to
    WHISTLE_CENTRE_HZ without pushing its 95th percentile beyond 3 kHz when avoidable."""
    if not contour.voiced.any():
        return 0
    f0 = contour.f0_hz[contour.voiced].astype(np.float64)
    median, top = float(np.median(f0)), float(np.percentile(f0, 95))
    best = int(np.clip(round(math.log2(WHISTLE_CENTRE_HZ / median)), 0, MAX_WHISTLE_OCTAVES))
    while best > 0 and top * 2**best > 3000.0:
        best -= 1
    return best


def _portamento(log_f0: np.ndarray, sd_frames: float) -> np.ndarray:
    if sd_frames <= 0.3:
        return log_f0
    half = int(4 * sd_frames) + 1
    t = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (t / sd_frames) ** 2)
    padded = np.pad(log_f0, half, mode="edge")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def render_whistle(contour: Contour, voice: WhistleVoice, rng: np.random.Generator, octaves: int = 0) -> np.ndarray:
    """[contour.n_samples] float32 whistle of `contour` moved up `octaves` octaves, peak 0.5."""
    if contour.n_frames == 0:
        raise SynthError("cannot synthesize an empty contour")
    n = contour.n_frames
    log_f0 = np.log(contour.filled_f0() * 2.0**octaves)
    f0 = np.exp(_portamento(log_f0, voice.portamento_s * C.PITCH_FRAME_RATE))
    f0 = apply_jitter(f0, voice.jitter_cents, rng)
    env = dsp.note_envelope(
        contour, rng, attack_s=voice.attack_s, release_s=voice.release_s,
        sustain=voice.sustain, accent_sd=voice.accent_sd, legato_dip=0.9,
    )
    env = env * np.clip(1.0 + voice.shimmer * dsp.smooth_noise(n, rng, 3.0), 0.2, 2.0)
    levels = np.array([1.0, 10 ** (voice.h2_db / 20), 10 ** (voice.h3_db / 20)])
    tone = dsp.harmonic_signal(f0, env[:, None] * levels[None, :], phases=rng.uniform(0, 2 * np.pi, 3))

    freqs = dsp.noise_bin_freqs()[None, :]
    band = np.exp(-0.5 * ((freqs - f0[:, None]) / voice.breath_bandwidth_hz) ** 2)
    breath = dsp.shaped_noise(env[:, None] * band, rng)
    hiss = dsp.shaped_noise(env[:, None] * (1.0 + freqs / 1000.0) ** -1.0 * np.ones((n, 1)), rng)
    out = tone + dsp.scale_to(tone, breath, voice.breath_db) + dsp.scale_to(tone, hiss, voice.hiss_db)
    return dsp.normalize_peak(out)


def synthesize_whistle(contour: Contour, seed: int = 0, octaves: int | None = None, **params: object) -> np.ndarray:
    """Whistle `contour`, moved up `octaves` octaves (default: `whistle_octaves(contour)`), with a
    random `WhistleVoice` from `seed` whose fields `params` may override.
    Returns [contour.n_samples] float32 mono at SAMPLE_RATE, peak 0.5."""
    rng = np.random.default_rng(seed)
    voice = dsp.override(WhistleVoice.sample(rng), params)
    shift = whistle_octaves(contour) if octaves is None else int(octaves)
    return render_whistle(contour, voice, rng, shift)
