"""Recordings with no melody in them: what the service must answer "no melody heard" to.

Tried as a new user would, a steady 440 Hz sine, a constant signal and two samples declared at
1 Hz all came back as confident matches. These are those inputs and their relatives — noise,
clicks, coughs between silences, a held chord, speech — made deterministically from a seed, for
the melody gate's tests, `earworm calibrate` (false accepts on inputs with no melody) and
`earworm gate-check`.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np

from data_gen import constants as C

SPEECH = (
    "Hey, can you tell me what song this is? I heard it on the radio yesterday morning.",
    "The quick brown fox jumps over the lazy dog and runs far away into the forest.",
    "One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve.",
)
SPEECH_VOICES = ("en", "en+f3", "en+m3")


def _tone(hz: float, n: int, amplitude: float = 0.3) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(n) / C.SAMPLE_RATE)


def signals(seconds: float = 10.0, seed: int = 0) -> dict[str, np.ndarray]:
    """name -> mono float32 [time] at SAMPLE_RATE: tones, constants, noise, clicks, coughs; each
    `seconds` long."""

    rng = np.random.default_rng(seed)
    n = int(seconds * C.SAMPLE_RATE)
    t = np.arange(n) / C.SAMPLE_RATE
    clicks = np.zeros(n)
    clicks[:: C.SAMPLE_RATE // 2] = 0.9
    coughs = 0.001 * rng.standard_normal(n)
    burst = int(0.2 * C.SAMPLE_RATE)
    for start in range(C.SAMPLE_RATE // 2, n - burst, 2 * C.SAMPLE_RATE):
        coughs[start : start + burst] += 0.5 * rng.standard_normal(burst) * np.exp(-np.arange(burst) / 800)
    out = {
        "sine_440hz": _tone(440.0, n),
        "sine_220hz_vibrato": 0.3 * np.sin(2 * np.pi * 220 * t + 0.5 * np.sin(2 * np.pi * 5 * t)),
        "square_110hz": 0.2 * np.sign(np.sin(2 * np.pi * 110 * t)),
        "chord_c_major": (_tone(261.6, n, 0.1) + _tone(329.6, n, 0.1) + _tone(392.0, n, 0.1)),
        "constant": np.full(n, 0.3),
        "infrasound_0_5hz": 0.4 * np.sin(2 * np.pi * 0.5 * t),
        "white_noise": 0.1 * rng.standard_normal(n),
        "brown_noise": np.cumsum(rng.standard_normal(n)) * 0.001,
        "clicks_2hz": clicks,
        "coughs_in_silence": coughs,
    }
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def speech() -> dict[str, np.ndarray]:
    """Spoken sentences (espeak-ng, three voices): name -> audio. Empty when espeak-ng is absent;
    a sentence espeak-ng fails on is left out."""
    import soundfile as sf

    from data_gen.audio import resample

    if shutil.which("espeak-ng") is None:
        return {}
    out = {}
    for i, text in enumerate(SPEECH):
        for voice in SPEECH_VOICES:
            try:
                wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", text], capture_output=True,
                                     check=True, timeout=30).stdout
                x, rate = sf.read(io.BytesIO(wav), dtype="float32")
            except (subprocess.SubprocessError, OSError, RuntimeError):
                continue
            out[f"speech_{i}_{voice.replace('+', '_')}"] = resample(np.asarray(x, np.float32).reshape(-1), int(rate))
    return out


def no_melody_inputs(seconds: float = 10.0, seed: int = 0, with_speech: bool = True) -> dict[str, np.ndarray]:
    """`signals` and (where espeak-ng is installed) `speech`."""
    return {**signals(seconds, seed), **(speech() if with_speech else {})}


__all__ = ["no_melody_inputs", "signals", "speech"]
