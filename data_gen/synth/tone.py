"""Plain tones: a sine or a band-limited triangle wave on the contour (the simplest "query")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_gen.synth import dsp
from data_gen.synth.contour import Contour, SynthError

WAVEFORMS = ("sine", "triangle")


@dataclass(frozen=True)
class ToneVoice:
    waveform: str = "sine"
    attack_s: float = 0.01
    release_s: float = 0.02

    @classmethod
    def sample(cls, rng: np.random.Generator) -> ToneVoice:
        return cls(
            waveform=str(rng.choice(WAVEFORMS)),
            attack_s=float(rng.uniform(0.005, 0.03)),
            release_s=float(rng.uniform(0.01, 0.05)),
        )


def render_tone(contour: Contour, voice: ToneVoice, rng: np.random.Generator) -> np.ndarray:
    """[contour.n_samples] float32 tone of `contour`, peak 0.5."""
    if voice.waveform not in WAVEFORMS:
        raise SynthError(f"waveform must be one of {WAVEFORMS}, got {voice.waveform!r}")
    if contour.n_frames == 0:
        raise SynthError("cannot synthesize an empty contour")
    f0 = contour.filled_f0()
    env = dsp.note_envelope(contour, rng, attack_s=voice.attack_s, release_s=voice.release_s)
    if voice.waveform == "sine":
        levels, phases = np.ones(1), np.zeros(1)
    else:  # triangle: odd harmonics at 1/k^2 with alternating sign
        k = np.arange(1, 2 * 40, dtype=np.float64)
        levels = np.where(k % 2 == 1, 1.0 / k**2, 0.0)
        phases = np.where(k % 4 == 3, np.pi, 0.0)
    out = dsp.harmonic_signal(f0, env[:, None] * levels[None, :], phases=phases)
    return dsp.normalize_peak(out)


def synthesize_tone(contour: Contour, seed: int = 0, **params: object) -> np.ndarray:
    """Render `contour` as a plain tone (random `ToneVoice` from `seed`, fields overridable by
    `params`, e.g. waveform="triangle"). Returns [contour.n_samples] float32, peak 0.5."""
    rng = np.random.default_rng(seed)
    voice = dsp.override(ToneVoice.sample(rng), params)
    return render_tone(contour, voice, rng)
