"""A hummed "mmm"/"nnn" voice: glottal-like harmonic source, nasal formants, breath noise.

Source: additive harmonics up to Nyquist with a per-voice spectral tilt (the net slope of the
glottal source and lip radiation) and a random fixed phase per harmonic, with jitter (slow random
f0 wobble) and shimmer (slow random amplitude wobble). Filter: the nasal murmur of a closed
mouth: a strong first resonance around 300 Hz, a nasal pole/zero pair (the zero near 1 kHz for
/m/, near 1.35 kHz for /n/) and weaker, wide higher resonances, all scaled by a per-voice vocal
tract length factor. Breath: white noise shaped by the same filter, modulated pitch-synchronously
and by the note envelope."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_gen import constants as C
from data_gen.synth import dsp
from data_gen.synth.contour import Contour, SynthError

# (centre Hz, bandwidth Hz) of the nasal murmur's resonances and anti-resonances (adult male).
# Tuned so the long-term spectrum of synthetic hums matches the median of the real hums in
# ../shared/data/qbh_demo within ~5-9 dB per band from 150 Hz to 4 kHz
# (tests/data_gen/test_synth_voices.py::test_hum_long_term_spectrum_resembles_real_hums).
NASAL_FORMANTS = {
    "m": ((300.0, 220.0), (750.0, 300.0), (1350.0, 250.0), (2300.0, 350.0), (3000.0, 450.0), (3700.0, 500.0)),
    "n": ((300.0, 220.0), (800.0, 300.0), (1650.0, 250.0), (2450.0, 350.0), (3100.0, 450.0), (3800.0, 500.0)),
}
NASAL_ZEROS = {"m": ((1050.0, 250.0),), "n": ((1350.0, 400.0),)}
MAX_HARMONICS = 120


@dataclass(frozen=True)
class HumVoice:
    """Everything that makes one hummer sound different from another."""

    nasal: str = "m"  # "m" or "n"
    formant_scale: float = 1.0  # vocal-tract length factor: 1 adult male, ~1.15 female, ~1.3 child
    tilt_db_per_octave: float = 1.0  # net source+radiation slope (bigger = softer, darker)
    breath_db: float = -26.0  # aspiration noise relative to the voiced sound
    jitter_cents: float = 6.0  # sd of the slow random f0 wobble
    shimmer: float = 0.06  # sd of the relative amplitude wobble
    attack_s: float = 0.05
    release_s: float = 0.06
    sustain: float = 0.75  # level at a note's end relative to its start (natural decay)
    accent_sd: float = 0.12  # note-to-note loudness variation (log-normal sd)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> HumVoice:
        return cls(
            nasal=str(rng.choice(["m", "m", "n"])),
            formant_scale=float(rng.uniform(0.92, 1.25)),
            tilt_db_per_octave=float(rng.uniform(-4.0, 3.0)),
            breath_db=float(rng.uniform(-34.0, -20.0)),
            jitter_cents=float(rng.uniform(3.0, 10.0)),
            shimmer=float(rng.uniform(0.03, 0.1)),
            attack_s=float(rng.uniform(0.03, 0.09)),
            release_s=float(rng.uniform(0.03, 0.09)),
            sustain=float(rng.uniform(0.6, 0.95)),
            accent_sd=float(rng.uniform(0.05, 0.2)),
        )


def apply_jitter(f0: np.ndarray, cents: float, rng: np.random.Generator, smooth_frames: float = 1.5) -> np.ndarray:
    """Multiply f0 [frames] by a slow random wobble of sd `cents`."""
    if cents <= 0:
        return f0
    return f0 * 2.0 ** (cents * dsp.smooth_noise(f0.shape[0], rng, smooth_frames) / 1200.0)


def render_hum(contour: Contour, voice: HumVoice, rng: np.random.Generator) -> np.ndarray:
    """[contour.n_samples] float32 hum of `contour` with `voice`, peak 0.5."""
    if voice.nasal not in NASAL_FORMANTS:
        raise SynthError(f"nasal must be one of {sorted(NASAL_FORMANTS)}, got {voice.nasal!r}")
    n = contour.n_frames
    if n == 0:
        raise SynthError("cannot synthesize an empty contour")
    f0 = apply_jitter(contour.filled_f0(), voice.jitter_cents, rng)
    env = dsp.note_envelope(
        contour, rng, attack_s=voice.attack_s, release_s=voice.release_s,
        sustain=voice.sustain, accent_sd=voice.accent_sd,
    )
    env = env * np.clip(1.0 + voice.shimmer * dsp.smooth_noise(n, rng, 2.0), 0.2, 2.0)
    scale = voice.formant_scale
    poles = [(f * scale, b * scale) for f, b in NASAL_FORMANTS[voice.nasal]]
    zeros = [(f * scale, b * scale) for f, b in NASAL_ZEROS[voice.nasal]]

    k = int(min(MAX_HARMONICS, np.ceil(dsp.NYQUIST / max(float(f0.min()), 40.0))))
    harmonics = np.arange(1, k + 1, dtype=np.float64)
    hf = f0[:, None] * harmonics[None, :]
    source = harmonics ** (-voice.tilt_db_per_octave / 6.02)
    amps = env[:, None] * source[None, :] * dsp.formant_gain(hf, poles, zeros)
    phases = rng.uniform(0, 2 * np.pi, k)
    voiced_part = dsp.harmonic_signal(f0, amps, phases=phases)

    freqs = dsp.noise_bin_freqs()
    breath_shape = dsp.formant_gain(freqs, poles, zeros) * (1.0 + freqs / 500.0) ** -0.5
    breath = dsp.shaped_noise(env[:, None] * breath_shape[None, :], rng)
    # Aspiration is strongest while the glottis opens: modulate it pitch-synchronously.
    phase = 2 * np.pi * np.cumsum(dsp.upsample_frames(f0, breath.shape[0])) / C.SAMPLE_RATE
    breath *= 0.6 + 0.4 * np.cos(phase)
    return dsp.normalize_peak(dsp.mix_at_db(voiced_part, breath, voice.breath_db))


def synthesize_hum(contour: Contour, seed: int = 0, **params: object) -> np.ndarray:
    """Hum `contour`: a random `HumVoice` drawn from `seed`, with any of its fields overridden by
    `params`. Returns [contour.n_samples] float32 mono at SAMPLE_RATE, peak 0.5."""
    rng = np.random.default_rng(seed)
    voice = dsp.override(HumVoice.sample(rng), params)
    return render_hum(contour, voice, rng)

