"""Exporting an encoder as a SavedModel with an `embed` signature over raw 16 kHz audio.

Layout of MODEL_DIR: the SavedModel files (signature `embed`: audio float32 [None, WINDOW_SAMPLES]
-> {"embedding": [None, EMBEDDING_DIM] unit-norm}; also `serving_default`), `metadata.json`
(format, version, creation time, sample rate, window, embedding size, encoder config, training
config, training-data summary, metrics) and `keras/` (encoder.weights.h5 + encoder_config.json:
the exact Keras weights, so `earworm train --init-from MODEL_DIR` can fine-tune the model). The
version is `<name>-<hash of the weights>`, so two different models never share a version, and an
index built with one refuses to serve with another.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from data_gen import constants as C
from serving.embedder import (BODY_TFLITE_FILE, EMBED_LOG_POWER_SIGNATURE, LOG_POWER_SIGNATURE, METADATA_FILE,
                              MODEL_FORMAT, SIGNATURE)
from training.encoder import EncoderConfig, build_encoder
from training.frontend import log_power, normalize

log = logging.getLogger(__name__)

KERAS_DIR = "keras"
WEIGHTS_FILE = "encoder.weights.h5"
ENCODER_CONFIG_FILE = "encoder_config.json"


class ExportError(RuntimeError):
    """The run directory has nothing to export (no config or no trained weights)."""


class _Exportable(tf.Module):
    """The exported signatures: `embed` (raw windows -> embeddings) and its two halves,
    `log_power` (audio of any length -> log filterbank power, the front-end's un-normalised output) and
    `embed_log_power` (log power of windows -> embeddings), so a server can compute one spectrogram
    per query view and slice its windows from it (frames have no end padding: a crop that starts on a
    hop boundary is exactly the window's own spectrogram)."""

    def __init__(self, model: keras.Model):
        super().__init__()
        self.model = model
        self.frontend = model.get_layer("frontend")
        self.body = model.get_layer("body")
        fcfg = self.frontend.cfg
        self.embed = tf.function(
            self._embed,
            input_signature=[tf.TensorSpec([None, C.WINDOW_SAMPLES], tf.float32, name="audio")],
        )
        self.log_power = tf.function(
            self._log_power, input_signature=[tf.TensorSpec([None, None], tf.float32, name="audio")])
        self.embed_log_power = tf.function(
            self._embed_log_power,
            input_signature=[tf.TensorSpec([None, fcfg.window_frames, fcfg.bins], tf.float32, name="log_power")])

    def _embed(self, audio):
        return {"embedding": self.model(audio, training=False)}

    def _log_power(self, audio):
        return {"log_power": log_power(audio, self.frontend.cfg, self.frontend._fb)}

    def _embed_log_power(self, logp):
        spec = normalize(logp, self.frontend.cfg.floor_db)[..., tf.newaxis]
        return {"embedding": self.body(spec, training=False)}


def _save_signatures(model: keras.Model, out: Path) -> None:
    module = _Exportable(model)
    tf.saved_model.save(module, str(out), signatures={SIGNATURE: module.embed, "serving_default": module.embed,
                                                      LOG_POWER_SIGNATURE: module.log_power,
                                                      EMBED_LOG_POWER_SIGNATURE: module.embed_log_power})
    add_tflite_body(out)  # from the saved signature: converting the live Keras module loses its weights


def add_tflite_body(model_dir: str | Path) -> Path:
    """Write `BODY_TFLITE_FILE` (the body half, `embed_log_power`, as a LiteRT flatbuffer with int8
    weights: dynamic-range quantization, activations quantized row by row inside the int8 kernels)
    from the export's own signature; nothing else changes (same SavedModel, same version). Every
    export calls it; `--add-tflite` adds the file to an export made before it existed."""
    model_dir = Path(model_dir)
    loaded = tf.saved_model.load(str(model_dir))
    if EMBED_LOG_POWER_SIGNATURE not in loaded.signatures:
        raise ExportError(f"{model_dir} has no {EMBED_LOG_POWER_SIGNATURE!r} signature: run "
                          "training.export.refresh_signatures on it first")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([loaded.signatures[EMBED_LOG_POWER_SIGNATURE]], loaded)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    blob = converter.convert()
    path = model_dir / BODY_TFLITE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)
    return path


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
    train_config: dict[str, Any] | None = None,
) -> Path:
    """Write the SavedModel + metadata.json + keras/ to `out_dir` (replaced if present). Returns out_dir."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp-export")
    if tmp.exists():
        shutil.rmtree(tmp)
    _save_signatures(model, tmp)
    (tmp / KERAS_DIR).mkdir()
    model.save_weights(str(tmp / KERAS_DIR / WEIGHTS_FILE))
    (tmp / KERAS_DIR / ENCODER_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    metadata = {
        "format": MODEL_FORMAT,
        "version": f"{name}-{weights_digest(model)}",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sample_rate": C.SAMPLE_RATE,
        "window_seconds": C.WINDOW_SECONDS,
        "window_samples": C.WINDOW_SAMPLES,
        "embedding_dim": int(model.output_shape[-1]),
        "config": config.to_dict(),
        "train_config": train_config or {},
        "training_data": training_data or {},
        "metrics": metrics or {},
        "parameters": int(model.count_params()),
    }
    (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def refresh_signatures(model_dir: str | Path) -> Path:
    """Re-save an export's SavedModel from its keras/ weights with this code's signatures, keeping
    metadata.json and keras/ as they are (same weights, same version): for models exported before a
    signature was added. Refuses when the rebuilt weights do not hash to the export's version."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    model, _cfg = load_keras_encoder(model_dir)
    digest = weights_digest(model)
    if not str(meta["version"]).endswith("-" + digest):
        raise ExportError(f"{model_dir}: keras/ weights hash to {digest}, the export is {meta['version']}")
    tmp = model_dir.with_name(model_dir.name + ".tmp-refresh")
    if tmp.exists():
        shutil.rmtree(tmp)
    _save_signatures(model, tmp)
    shutil.copy2(model_dir / METADATA_FILE, tmp / METADATA_FILE)
    shutil.copytree(model_dir / KERAS_DIR, tmp / KERAS_DIR)
    old = model_dir.with_name(model_dir.name + ".old-refresh")
    model_dir.rename(old)
    tmp.rename(model_dir)
    shutil.rmtree(old)
    return model_dir


def export_untrained(out_dir: str | Path, seed: int = 0, config: EncoderConfig = EncoderConfig()) -> Path:
    """An untrained (randomly initialised) encoder: for tests and for pipelines before training."""
    model = build_encoder(config, seed=seed)
    return export_model(model, out_dir, name="untrained", config=config,
                        training_data={"note": "randomly initialised, not trained"})


def load_keras_encoder(model_dir: str | Path) -> tuple[keras.Model, EncoderConfig]:
    """The Keras encoder (exact weights) kept inside an export's keras/ folder."""
    kdir = Path(model_dir) / KERAS_DIR
    if not (kdir / WEIGHTS_FILE).is_file():
        raise ExportError(f"{model_dir} has no {KERAS_DIR}/{WEIGHTS_FILE}")
    cfg = EncoderConfig.from_dict(json.loads((kdir / ENCODER_CONFIG_FILE).read_text()))
    model = build_encoder(cfg)
    model.load_weights(str(kdir / WEIGHTS_FILE))
    return model, cfg


def load_run_encoder(run_dir: str | Path, which: str = "best") -> tuple[keras.Model, dict]:
    """Build the run's encoder with its `best` weights (best validation MRR@10) or `last` checkpoint.

    Returns (model, info) with info = {"weights": what was loaded, "metrics": ..., "config": TrainConfig}.
    `best` falls back to the last checkpoint when no epoch has finished yet.
    """
    from training.config import TrainConfig

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{run_dir} is not a training run (no config.json)")
    cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
    model = build_encoder(cfg.encoder, seed=cfg.seed)
    best = run_dir / "best" / WEIGHTS_FILE
    metrics: dict = {}
    if which == "best" and best.is_file():
        model.load_weights(str(best))
        metrics = json.loads((run_dir / "best" / "metrics.json").read_text())
        source = str(best)
    elif which in ("best", "last"):
        latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
        if latest is None:
            raise ExportError(f"{run_dir} has no checkpoint yet")
        tf.train.Checkpoint(model=model).restore(latest).expect_partial()
        source = latest
        hist = run_dir / "history.jsonl"
        if hist.is_file():
            lines = hist.read_text().splitlines()
            metrics = json.loads(lines[-1]) if lines else {}
    else:
        raise ExportError(f"which must be 'best' or 'last', not {which!r}")
    return model, {"weights": source, "metrics": metrics, "config": cfg}


def export_run(run_dir: str | Path, out_dir: str | Path, which: str = "best", name: str = "earworm") -> Path:
    """Export a training run (see `load_run_encoder`) with its data summary and metrics in metadata."""
    run_dir = Path(run_dir)
    model, info = load_run_encoder(run_dir, which)
    summary_path = run_dir / "data_summary.json"
    training_data = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    hist = run_dir / "history.jsonl"
    history = [json.loads(x) for x in hist.read_text().splitlines()] if hist.is_file() else []
    init = run_dir / "init_from.txt"
    if init.is_file():
        training_data["init_from"] = init.read_text().strip()
    metrics = {"selected": info["metrics"], "weights": Path(info["weights"]).name,
               "epochs_run": max((h.get("epoch", 0) for h in history), default=0),
               "steps": max((h.get("step", 0) for h in history), default=0),
               "val_mrr@10_history": [round(h.get("val_mrr@10", 0.0), 4) for h in history]}
    cfg = info["config"]
    out = export_model(model, out_dir, name=name, config=cfg.encoder, training_data=training_data,
                       metrics=metrics, train_config=cfg.to_dict())
    log.info("exported %s (%s) to %s", run_dir, info["weights"], out)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Maintenance of exported models (`earworm export` exports a run).")
    p.add_argument("--add-tflite", metavar="MODEL_DIR", required=True,
                   help=f"write {BODY_TFLITE_FILE} (the body with int8 weights, for the serving runtime) into an "
                        "older export")
    args = p.parse_args(argv)
    try:
        print(add_tflite_body(args.add_tflite))
    except (OSError, ExportError) as e:
        print(f"error: {args.add_tflite} is not an exported model with a SavedModel ({e})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
