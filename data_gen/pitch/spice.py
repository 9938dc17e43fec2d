"""SPICE pitch tracker (Gfeller et al., 2020) loaded with tensorflow_hub from a handle or local dir.

SPICE's SavedModel takes a 1-D float32 waveform at 16 kHz and returns, per 32 ms frame (hop of
512 samples, frame j centred at j * 32 ms), `pitch` (a normalised pitch in [0, 1]) and
`uncertainty` (in [0, 1]). The pitch output is mapped to Hz with the authors' published
calibration (`spice_pitch_to_hz`), confidence = 1 - uncertainty, and the frames are re-gridded onto
the 10 ms grid.

The model is not shipped with Earworm and cannot be downloaded on an offline machine: download
the TF Hub model `google/spice/2` elsewhere and pass its extracted folder (`model=DIR`,
`--spice-model DIR`, or the EARWORM_SPICE_MODEL environment variable).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Any

import numpy as np

from data_gen import constants as C
from data_gen.pitch.base import (
    PitchError,
    PitchExtractor,
    PitchModelUnavailableError,
    PitchTrack,
    check_audio,
    num_pitch_frames,
    resample_to_pitch_grid,
)

logger = logging.getLogger(__name__)

SPICE_SAMPLE_RATE = 16_000
SPICE_HOP = 512
SPICE_HOP_SECONDS = SPICE_HOP / SPICE_SAMPLE_RATE  # 32 ms
PT_OFFSET = 25.58
PT_SLOPE = 63.07
FMIN = 10.0
BINS_PER_OCTAVE = 12.0
SPICE_MODEL_ENV = "EARWORM_SPICE_MODEL"
SPICE_HUB_HANDLE = "https://tfhub.dev/google/spice/2"


@dataclasses.dataclass(frozen=True)
class SpiceConfig:
    """Options of `SpiceExtractor`.

    model: TF Hub handle or local SavedModel directory; None = $EARWORM_SPICE_MODEL, else error.
    voicing_threshold: voiced when confidence (1 - uncertainty) exceeds this (the SPICE authors'
        own example keeps frames with confidence >= 0.9).
    """

    model: str | None = None
    voicing_threshold: float = 0.9


def spice_pitch_to_hz(pitch: np.ndarray) -> np.ndarray:
    """SPICE's normalised pitch output -> Hz (published calibration). float64, same shape."""
    cqt_bin = np.asarray(pitch, dtype=np.float64) * PT_SLOPE + PT_OFFSET
    return FMIN * np.power(2.0, cqt_bin / BINS_PER_OCTAVE)


def spice_frame_times(num_frames: int) -> np.ndarray:
    """Centre time in seconds of each SPICE output frame: float64 [frames]."""
    return np.arange(num_frames, dtype=np.float64) * SPICE_HOP_SECONDS


def spice_to_track(
    pitch: np.ndarray, uncertainty: np.ndarray, num_samples: int, voicing_threshold: float
) -> PitchTrack:
    """SPICE outputs [spice_frames] for `num_samples` of audio -> PitchTrack on the 10 ms grid."""
    pitch = np.asarray(pitch, dtype=np.float64).reshape(-1)
    uncertainty = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
    if pitch.shape != uncertainty.shape:
        raise PitchError(f"SPICE returned {pitch.size} pitch but {uncertainty.size} uncertainty frames")
    if pitch.size == 0:
        raise PitchError("SPICE returned no frames")
    return resample_to_pitch_grid(
        spice_frame_times(pitch.size),
        spice_pitch_to_hz(pitch),
        np.clip(1.0 - uncertainty, 0.0, 1.0),
        num_pitch_frames(num_samples),
        voicing_threshold,
    )


def _unavailable_message(detail: str) -> str:
    return (
        f"no SPICE model is available offline ({detail}). SPICE is not bundled and cannot be "
        f"downloaded here: fetch the TF Hub model google/spice/2 ({SPICE_HUB_HANDLE}) on a connected "
        "machine, extract it, and point Earworm at the SavedModel folder with "
        f"make_extractor('spice', model=DIR), `--spice-model DIR`, or {SPICE_MODEL_ENV}=DIR"
    )


def _load_spice(handle: str) -> Any:
    """tensorflow_hub.load(handle) with failures turned into PitchModelUnavailableError."""
    is_local = os.path.exists(handle)
    if not is_local and "://" not in handle:
        raise PitchModelUnavailableError(_unavailable_message(f"{handle!r} is neither a folder nor a URL"))
    with warnings.catch_warnings():  # tensorflow_hub 0.16 imports the deprecated pkg_resources
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        try:
            import tensorflow_hub as hub
        except ImportError as e:
            raise PitchModelUnavailableError(_unavailable_message(
                "tensorflow-hub is not installed (it is the `spice` extra, which scripts/setup.sh installs: "
                "pip install -e '.[spice]')")) from e

    try:
        return hub.load(handle)
    except Exception as e:  # noqa: BLE001 - hub/TF raise many unrelated types for "cannot load"
        raise PitchModelUnavailableError(_unavailable_message(f"loading {handle!r} failed: {e}")) from e


class SpiceExtractor(PitchExtractor):
    """SPICE on the 10 ms grid. The SavedModel is loaded once, in __init__."""

    name = "spice"

    def __init__(self, config: SpiceConfig | None = None, **options: Any) -> None:
        config = config or SpiceConfig()
        self.config = dataclasses.replace(config, **options) if options else config
        handle = self.config.model or os.environ.get(SPICE_MODEL_ENV)
        if not handle:
            raise PitchModelUnavailableError(_unavailable_message("no model folder or handle was given"))
        if C.SAMPLE_RATE != SPICE_SAMPLE_RATE:
            raise PitchError(f"SPICE needs {SPICE_SAMPLE_RATE} Hz audio but SAMPLE_RATE is {C.SAMPLE_RATE}")
        self.handle = str(handle)
        self._model = _load_spice(self.handle)
        self._call = self._find_callable(self._model)
        logger.info("SPICE ready (%s)", self.handle)

    def _find_callable(self, model: Any) -> Any:
        """The model's serving signature, called with the waveform as its single input."""
        signatures = getattr(model, "signatures", None)
        if signatures is not None and "serving_default" in signatures:
            signature = signatures["serving_default"]
            _, kwargs = signature.structured_input_signature
            if len(kwargs) != 1:
                raise PitchModelUnavailableError(
                    f"{self.handle}: SPICE's serving signature should take one waveform input, "
                    f"it takes {sorted(kwargs)}"
                )
            (input_name,) = kwargs
            return lambda waveform: signature(**{input_name: waveform})
        if callable(model):
            return model
        raise PitchModelUnavailableError(
            f"{self.handle}: the SavedModel has no serving_default signature and is not callable"
        )

    def extract(self, audio: np.ndarray) -> PitchTrack:
        import tensorflow as tf

        audio = check_audio(audio)
        outputs = self._call(tf.constant(audio, dtype=tf.float32))
        try:
            pitch, uncertainty = outputs["pitch"], outputs["uncertainty"]
        except (KeyError, TypeError) as e:
            raise PitchError(f"{self.handle}: SPICE outputs must include 'pitch' and 'uncertainty'") from e
        return spice_to_track(
            np.asarray(pitch), np.asarray(uncertainty), len(audio), self.config.voicing_threshold
        )
