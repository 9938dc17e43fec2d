"""Loading an exported encoder and embedding audio with it.

An exported model is a SavedModel directory with an `embed` signature
(`audio`: float32 [batch, WINDOW_SAMPLES] at SAMPLE_RATE -> `embedding`: float32 [batch, dim],
unit-norm) and a `metadata.json` beside `saved_model.pb` (see `training.export`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_gen import constants as C
from data_gen.windows import cut_master_windows, cut_query_views
from serving.retrieval import QueryEmbedding

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
MODEL_FORMAT = "earworm-encoder/1"
SIGNATURE = "embed"


class ModelError(RuntimeError):
    """The model directory is missing, incomplete or incompatible with this code."""


@dataclass(frozen=True)
class ModelMetadata:
    version: str
    sample_rate: int
    window_samples: int
    embedding_dim: int
    raw: dict

    @staticmethod
    def read(model_dir: str | Path) -> "ModelMetadata":
        path = Path(model_dir) / METADATA_FILE
        if not path.is_file():
            raise ModelError(f"{model_dir} is not an exported Earworm model: {METADATA_FILE} missing")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{path}: invalid JSON ({e})") from e
        if raw.get("format") != MODEL_FORMAT:
            raise ModelError(f"{path}: format {raw.get('format')!r}, expected {MODEL_FORMAT!r}")
        md = ModelMetadata(raw["version"], int(raw["sample_rate"]), int(raw["window_samples"]),
                           int(raw["embedding_dim"]), raw)
        if md.sample_rate != C.SAMPLE_RATE or md.window_samples != C.WINDOW_SAMPLES:
            raise ModelError(
                f"{model_dir}: model expects {md.window_samples} samples at {md.sample_rate} Hz; this "
                f"code uses {C.WINDOW_SAMPLES} at {C.SAMPLE_RATE} Hz"
            )
        return md


class Embedder:
    """Embeds windows with an exported model; thread-safe, loads the SavedModel once."""

    def __init__(self, model_dir: str | Path, batch_size: int = 64):
        import tensorflow as tf

        self.model_dir = Path(model_dir)
        self.metadata = ModelMetadata.read(self.model_dir)
        try:
            self._loaded = tf.saved_model.load(str(self.model_dir))
            self._fn = self._loaded.signatures[SIGNATURE]
        except (OSError, KeyError, ValueError) as e:
            raise ModelError(f"cannot load the SavedModel in {self.model_dir}: {e}") from e
        self.batch_size = batch_size
        self._lock = threading.Lock()
        log.info("loaded model %s from %s", self.version, self.model_dir)

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def dim(self) -> int:
        return self.metadata.embedding_dim

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """[n, WINDOW_SAMPLES] float32 -> [n, dim] float32 unit-norm embeddings."""
        import tensorflow as tf

        if windows.ndim != 2 or windows.shape[1] != C.WINDOW_SAMPLES:
            raise ValueError(f"windows must be [n, {C.WINDOW_SAMPLES}], got {windows.shape}")
        out = []
        for i in range(0, windows.shape[0], self.batch_size):
            batch = tf.constant(windows[i : i + self.batch_size], dtype=tf.float32)
            out.append(self._fn(audio=batch)["embedding"].numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    def embed_master(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole master [time] -> (embeddings [n, dim], window offsets in seconds [n])."""
        windows, offsets = cut_master_windows(audio)
        return self.embed_windows(windows), offsets

    def embed_query(self, audio: np.ndarray, tempo_rates: Sequence[float] = (1.0,)) -> QueryEmbedding:
        """Whole query [time] -> its windows in each tempo view (`cut_query_views`), embedded in one
        batch: QueryEmbedding(emb [n, dim], offsets_s [n], views [n])."""
        windows, offsets, views = cut_query_views(audio, tuple(tempo_rates))
        return QueryEmbedding(self.embed_windows(windows), offsets, views)
