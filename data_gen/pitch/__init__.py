"""Pitch extraction: one `PitchTrack` type on the 10 ms grid, three interchangeable backends.

    from data_gen.pitch import default_extractor, make_extractor
    extractor = default_extractor()          # CREPE when its weights are found, else pYIN
    track = extractor.extract(audio)         # audio: float32 [samples] mono at SAMPLE_RATE
    track.f0_hz, track.confidence, track.voiced   # [1 + samples // PITCH_HOP] each

Backends: "crepe" (Keras 3 rebuild of CREPE + official weights), "spice" (TF Hub SavedModel,
needs a local copy offline), "pyin" (librosa, no model), "yin" (vectorised YIN, no model, ~10 ms per 10 s: the
service's melody check). Backend modules are imported lazily so
that importing this package does not import TensorFlow.
"""

from __future__ import annotations

import logging
from typing import Any

from data_gen.pitch.base import (
    CENTS_REFERENCE_HZ,
    PitchError,
    PitchExtractor,
    PitchModelUnavailableError,
    PitchTrack,
    cents_to_hz,
    frame_times,
    held_notes,
    hz_to_cents,
    midi_to_hz,
    num_pitch_frames,
    resample_to_pitch_grid,
)

logger = logging.getLogger(__name__)

BACKENDS = ("crepe", "spice", "pyin", "yin")

__all__ = [
    "BACKENDS",
    "CENTS_REFERENCE_HZ",
    "PitchError",
    "PitchExtractor",
    "PitchModelUnavailableError",
    "PitchTrack",
    "cents_to_hz",
    "default_extractor",
    "frame_times",
    "held_notes",
    "hz_to_cents",
    "make_extractor",
    "midi_to_hz",
    "num_pitch_frames",
    "resample_to_pitch_grid",
]


def make_extractor(name: str, **options: Any) -> PitchExtractor:
    """Build the backend `name` ("crepe" | "spice" | "pyin" | "yin") with its config options.

    Options are the fields of CrepeConfig (capacity, weights_path, decoder, voicing_threshold,
    batch_size, viterbi_max_jump_bins), SpiceConfig (model, voicing_threshold), PyinConfig
    (fmin, fmax, frame_length) or YinConfig (fmin, fmax, frame_length, threshold, floor_db). Raises PitchModelUnavailableError when the model is missing,
    ValueError for an unknown name or option.
    """
    key = name.strip().lower()
    if key == "crepe":
        from data_gen.pitch.crepe import CrepeConfig, CrepeExtractor

        return CrepeExtractor(_config(CrepeConfig, options))
    if key == "spice":
        from data_gen.pitch.spice import SpiceConfig, SpiceExtractor

        return SpiceExtractor(_config(SpiceConfig, options))
    if key == "pyin":
        from data_gen.pitch.pyin import PyinConfig, PyinExtractor

        return PyinExtractor(_config(PyinConfig, options))
    if key == "yin":
        from data_gen.pitch.yin import YinConfig, YinExtractor

        return YinExtractor(_config(YinConfig, options))
    raise ValueError(f"unknown pitch backend {name!r}; choose from {', '.join(BACKENDS)}")


def _config(config_type: type, options: dict[str, Any]) -> Any:
    try:
        return config_type(**options)
    except TypeError as e:
        raise ValueError(f"bad option for {config_type.__name__}: {e}") from e


def default_extractor(**crepe_options: Any) -> PitchExtractor:
    """CREPE (tiny unless `capacity` says otherwise) when its weights can be found, else pYIN."""
    from data_gen.pitch.crepe import crepe_weights_available

    capacity = crepe_options.get("capacity", "tiny")
    if crepe_options.get("weights_path") is not None or crepe_weights_available(capacity):
        logger.info("pitch extractor: CREPE %s", capacity)
        return make_extractor("crepe", **crepe_options)
    logger.warning("pitch extractor: pYIN (no CREPE %s weights found)", capacity)
    return make_extractor("pyin")
