"""pYIN pitch tracker (Mauch & Dixon, 2014) via librosa: the dependency-free fallback.

No model file is needed, so this backend always works; it is slower than CREPE on CPU and less
robust on breathy or noisy singing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from data_gen import constants as C
from data_gen.pitch.base import PitchExtractor, PitchTrack, check_audio, num_pitch_frames

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PyinConfig:
    """Options of `PyinExtractor`.

    fmin, fmax: search range in Hz (50 Hz ~ G1 covers low hums, 2000 Hz covers whistles).
    frame_length: analysis window in samples (must hold two periods of fmin: 2048 at 16 kHz
        allows fmin down to ~16 Hz; 1024 is faster but needs fmin >= ~32 Hz).
    """

    fmin: float = 50.0
    fmax: float = 2000.0
    frame_length: int = 2048

    def __post_init__(self) -> None:
        if not 0 < self.fmin < self.fmax < C.SAMPLE_RATE / 2:
            raise ValueError(f"need 0 < fmin < fmax < Nyquist, got fmin={self.fmin}, fmax={self.fmax}")


class PyinExtractor(PitchExtractor):
    """librosa.pyin on the 10 ms grid; confidence = pYIN's voicing probability."""

    name = "pyin"

    def __init__(self, config: PyinConfig | None = None, **options: Any) -> None:
        config = config or PyinConfig()
        self.config = dataclasses.replace(config, **options) if options else config

    def extract(self, audio: np.ndarray) -> PitchTrack:
        import librosa

        audio = check_audio(audio)
        f0, voiced, probability = librosa.pyin(
            audio,
            fmin=self.config.fmin,
            fmax=self.config.fmax,
            sr=C.SAMPLE_RATE,
            frame_length=self.config.frame_length,
            hop_length=C.PITCH_HOP,
            center=True,
            fill_na=None,  # unvoiced frames keep the best-guess pitch instead of NaN
        )
        frames = num_pitch_frames(len(audio))
        f0 = np.nan_to_num(np.asarray(f0, dtype=np.float64)[:frames], nan=self.config.fmin)
        return PitchTrack(
            f0_hz=np.clip(f0, self.config.fmin, self.config.fmax).astype(np.float32),
            confidence=np.asarray(probability, dtype=np.float32)[:frames],
            voiced=np.asarray(voiced, dtype=bool)[:frames],
        )
