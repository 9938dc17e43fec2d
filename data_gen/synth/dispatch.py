"""Which synthesizer renders which query kind: `synthesize` (seeded, one call) and
`sample_voice` + `render` (explicit voice, used by `deviations.perform` to log the voice)."""

from __future__ import annotations

from typing import Any

import numpy as np

from data_gen.synth.contour import Contour, SynthError
from data_gen.synth.hum import HumVoice, render_hum, synthesize_hum
from data_gen.synth.sung import SungVoice, render_sung, synthesize_sung
from data_gen.synth.tone import ToneVoice, render_tone, synthesize_tone
from data_gen.synth.whistle import WhistleVoice, render_whistle, synthesize_whistle

KINDS = ("hum", "whistle", "tone", "sung")
VOICES: dict[str, type] = {"hum": HumVoice, "whistle": WhistleVoice, "tone": ToneVoice, "sung": SungVoice}
_SYNTHESIZERS = {"hum": synthesize_hum, "whistle": synthesize_whistle, "tone": synthesize_tone, "sung": synthesize_sung}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise SynthError(f"unknown query kind {kind!r}; known: {', '.join(KINDS)}")


def synthesize(kind: str, contour: Contour, seed: int = 0, **params: Any) -> np.ndarray:
    """Render `contour` as `kind` ("hum", "whistle", "tone", "sung") with a random voice drawn
    from `seed` (fields overridable by `params`). Returns float32 [contour.n_samples], peak 0.5."""
    _check_kind(kind)
    return _SYNTHESIZERS[kind](contour, seed, **params)


def sample_voice(kind: str, rng: np.random.Generator) -> Any:
    """A random voice dataclass for `kind`."""
    _check_kind(kind)
    return VOICES[kind].sample(rng)


def render(kind: str, contour: Contour, voice: Any, rng: np.random.Generator, *, whistle_octave_shift: int = 0) -> np.ndarray:
    """Render `contour` with an explicit voice (see `sample_voice`); whistles are moved up
    `whistle_octave_shift` octaves (the caller decides, e.g. with `whistle_octaves`)."""
    _check_kind(kind)
    if kind == "hum":
        return render_hum(contour, voice, rng)
    if kind == "whistle":
        return render_whistle(contour, voice, rng, whistle_octave_shift)
    if kind == "tone":
        return render_tone(contour, voice, rng)
    return render_sung(contour, voice, rng)
