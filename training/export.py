"""Exporting an encoder as a SavedModel with an `embed` signature over raw 16 kHz audio.

Layout of MODEL_DIR: the SavedModel files plus `metadata.json` (format, version, creation time,
sample rate, window, embedding size, encoder config, training-data summary, metrics). The version is
`<name>-<hash of the weights>`, so two different models never share a version, and an index built
with one refuses to serve with another.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from data_gen import constants as C
from serving.embedder import METADATA_FILE, MODEL_FORMAT, SIGNATURE
from training.encoder import EncoderConfig, build_encoder


class _Exportable(tf.Module):
    def __init__(self, model: keras.Model):
        super().__init__()
        self.model = model
        self.embed = tf.function(
            self._embed,
            input_signature=[tf.TensorSpec([None, C.WINDOW_SAMPLES], tf.float32, name="audio")],
        )

    def _embed(self, audio):
        return {"embedding": self.model(audio, training=False)}


def weights_digest(model: keras.Model) -> str:
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(w.numpy()).tobytes())
    return h.hexdigest()[:12]


def export_model(
    model: keras.Model,
    out_dir: str | Path,
    *,
    name: str,
    config: EncoderConfig,
    training_data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the SavedModel + metadata.json to `out_dir` (replaced if present). Returns out_dir."""
    out_dir = Path(out_dir)
    module = _Exportable(model)
    tf.saved_model.save(module, str(out_dir), signatures={SIGNATURE: module.embed,
                                                          "serving_default": module.embed})
    metadata = {
        "format": MODEL_FORMAT,
        "version": f"{name}-{weights_digest(model)}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sample_rate": C.SAMPLE_RATE,
        "window_seconds": C.WINDOW_SECONDS,
        "window_samples": C.WINDOW_SAMPLES,
        "embedding_dim": int(model.output_shape[-1]),
        "config": config.to_dict(),
        "training_data": training_data or {},
        "metrics": metrics or {},
    }
    (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return out_dir


def export_untrained(out_dir: str | Path, seed: int = 0, config: EncoderConfig = EncoderConfig()) -> Path:
    """An untrained (randomly initialised) encoder: for tests and for pipelines before training."""
    model = build_encoder(config, seed=seed)
    return export_model(model, out_dir, name="untrained", config=config,
                        training_data={"note": "randomly initialised, not trained"})
