"""CREPE pitch tracker (Kim et al., 2018) rebuilt in Keras 3 and fed the official weights.

The network maps one 1024-sample frame at 16 kHz (normalised to zero mean, unit std) to 360
sigmoid "salience" bins 20 cents apart (bin 0 = 1997.38 cents above 10 Hz, about 31.7 Hz):
six blocks of Conv2D (kernel [width, 1], widths 512 then 64, first stride 4) + BatchNorm +
MaxPool(2) + Dropout(0.25), then a dense 360-way sigmoid classifier.

The official weights are Keras-2 HDF5 files holding weights only. Keras 3 cannot load them by
topology, so `load_crepe_weights` reads the file with h5py and assigns each layer's arrays by
layer name (conv1..conv6, conv1-BN..conv6-BN, classifier) and weight role (kernel, bias, gamma...).

Weights are looked up (`find_crepe_weights`) in this order: an explicit path; the model file of an
installed `crepe` package (`<package>/model-<capacity>.h5`); the shared tiny weights
(`data_gen.paths.crepe_tiny_weights()`, tiny capacity only).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from data_gen import constants as C
from data_gen import paths
from data_gen.pitch.base import (
    PitchError,
    PitchExtractor,
    PitchModelUnavailableError,
    PitchTrack,
    cents_to_hz,
    check_audio,
    num_pitch_frames,
)

logger = logging.getLogger(__name__)

CREPE_SAMPLE_RATE = 16_000
FRAME_LENGTH = 1024
NUM_BINS = 360
CENTS_PER_BIN = 20.0
BIN0_CENTS = 1997.3794084376191
BIN_CENTS = BIN0_CENTS + CENTS_PER_BIN * np.arange(NUM_BINS, dtype=np.float64)
"""Cents above 10 Hz of each of the 360 output bins: float64 [360]."""

CAPACITY_MULTIPLIERS = {"tiny": 4, "small": 8, "medium": 16, "large": 24, "full": 32}
_BASE_FILTERS = (32, 4, 4, 4, 8, 16)
_KERNEL_WIDTHS = (512, 64, 64, 64, 64, 64)
_STRIDES = (4, 1, 1, 1, 1, 1)
_WEIGHT_ROLES = {
    "conv": ("kernel", "bias"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}
DECODERS = ("viterbi", "average")


@dataclasses.dataclass(frozen=True)
class CrepeConfig:
    """Options of `CrepeExtractor` (the single place their defaults live).

    capacity: model size ("tiny", "small", "medium", "large", "full"); must match the weights.
    weights_path: explicit HDF5 weights file; None = look up (installed crepe package, then shared).
    decoder: "viterbi" (HMM smoothing over the 360 bins) or "average" (per-frame weighted average).
    voicing_threshold: a frame is voiced when its confidence (max activation) exceeds this.
    batch_size: frames per forward pass.
    viterbi_max_jump_bins: the transition prior allows moves of fewer than this many bins per frame
        (12 bins = 240 cents per 10 ms), weighted triangularly (smaller jumps are likelier).
    """

    capacity: str = "tiny"
    weights_path: str | None = None
    decoder: str = "viterbi"
    voicing_threshold: float = 0.5
    batch_size: int = 512
    viterbi_max_jump_bins: int = 12

    def __post_init__(self) -> None:
        if self.capacity not in CAPACITY_MULTIPLIERS:
            raise ValueError(
                f"unknown CREPE capacity {self.capacity!r}; choose from {sorted(CAPACITY_MULTIPLIERS)}"
            )
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown CREPE decoder {self.decoder!r}; choose from {DECODERS}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.viterbi_max_jump_bins < 1:
            raise ValueError("viterbi_max_jump_bins must be >= 1")


def installed_crepe_weights(capacity: str) -> Path | None:
    """`<crepe package>/model-<capacity>.h5` of an installed `crepe` package, if it exists."""
    try:
        spec = importlib.util.find_spec("crepe")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders = [os.path.dirname(spec.origin)]
    for folder in folders:
        candidate = Path(folder) / f"model-{capacity}.h5"
        if candidate.is_file():
            return candidate
    return None


def find_crepe_weights(capacity: str = "tiny", weights_path: str | os.PathLike[str] | None = None) -> Path:
    """Locate CREPE weights for `capacity`; raises PitchModelUnavailableError saying where it looked."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise PitchModelUnavailableError(
                f"CREPE weights file not found: {path} (pass the path of an official "
                f"model-{capacity}.h5 file)"
            )
        return path
    looked = []
    installed = installed_crepe_weights(capacity)
    if installed is not None:
        return installed
    looked.append(f"an installed `crepe` package's model-{capacity}.h5 (none found)")
    if capacity == "tiny":
        shared = paths.crepe_tiny_weights()
        if shared.is_file():
            return shared
        looked.append(f"{shared} (missing)")
    else:
        looked.append(f"the shared folder only holds tiny weights ({paths.crepe_tiny_weights()})")
    raise PitchModelUnavailableError(
        f"no CREPE {capacity} weights available; looked in: " + "; ".join(looked)
        + ". Pass weights_path=/path/to/model-" + capacity + ".h5 (or --crepe-weights)."
    )


def crepe_weights_available(capacity: str = "tiny") -> bool:
    """True when `find_crepe_weights(capacity)` would succeed."""
    try:
        find_crepe_weights(capacity)
    except PitchModelUnavailableError:
        return False
    return True


def build_crepe_model(capacity: str = "tiny") -> Any:
    """The CREPE network as a Keras 3 functional model: [batch, 1024] -> [batch, 360] sigmoid."""
    import keras

    multiplier = CAPACITY_MULTIPLIERS[capacity]
    inputs = keras.Input(shape=(FRAME_LENGTH,), name="input", dtype="float32")
    x = keras.layers.Reshape((FRAME_LENGTH, 1, 1), name="input-reshape")(inputs)
    for index, (base, width, stride) in enumerate(zip(_BASE_FILTERS, _KERNEL_WIDTHS, _STRIDES), 1):
        layer = f"conv{index}"
        x = keras.layers.Conv2D(
            base * multiplier,
            (width, 1),
            strides=(stride, 1),
            padding="same",
            activation="relu",
            name=layer,
        )(x)
        x = keras.layers.BatchNormalization(name=f"{layer}-BN")(x)
        x = keras.layers.MaxPooling2D(pool_size=(2, 1), strides=(2, 1), padding="valid", name=f"{layer}-maxpool")(x)
        x = keras.layers.Dropout(0.25, name=f"{layer}-dropout")(x)
    x = keras.layers.Permute((2, 1, 3), name="transpose")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(NUM_BINS, activation="sigmoid", name="classifier")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name=f"crepe_{capacity}")


def _read_layer_arrays(group: Any, roles: tuple[str, ...], layer_name: str, path: Path) -> list[np.ndarray]:
    """The arrays of one HDF5 layer group, ordered by `roles` (matched on the dataset name)."""
    import h5py

    datasets: dict[str, np.ndarray] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            role = name.rsplit("/", 1)[-1].split(":", 1)[0]
            datasets[role] = np.asarray(obj[()])

    group.visititems(visit)
    missing = [role for role in roles if role not in datasets]
    if missing:
        raise PitchModelUnavailableError(
            f"{path}: layer {layer_name!r} lacks weights {missing} (found {sorted(datasets)}); "
            "is this an official CREPE weights file?"
        )
    return [datasets[role] for role in roles]


def load_crepe_weights(model: Any, path: str | os.PathLike[str]) -> None:
    """Assign official CREPE HDF5 weights to `build_crepe_model`'s layers, by layer name.

    Raises PitchModelUnavailableError when the file is unreadable, lacks a layer, or its shapes do
    not match the model (e.g. "full" weights given to a "tiny" model).
    """
    import h5py

    path = Path(path)
    layer_kinds = {f"conv{i}": "conv" for i in range(1, 7)}
    layer_kinds.update({f"conv{i}-BN": "bn" for i in range(1, 7)})
    layer_kinds["classifier"] = "dense"
    try:
        handle = h5py.File(path, "r")
    except OSError as e:
        raise PitchModelUnavailableError(f"cannot read CREPE weights file {path}: {e}") from e
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        for layer_name, kind in layer_kinds.items():
            if layer_name not in root:
                raise PitchModelUnavailableError(
                    f"{path}: no layer {layer_name!r} in the weights file; is this an official CREPE model?"
                )
            arrays = _read_layer_arrays(root[layer_name], _WEIGHT_ROLES[kind], layer_name, path)
            layer = model.get_layer(layer_name)
            expected = [tuple(w.shape) for w in layer.get_weights()]
            found = [tuple(a.shape) for a in arrays]
            if expected != found:
                raise PitchModelUnavailableError(
                    f"{path}: layer {layer_name!r} has weight shapes {found}, the {model.name} model "
                    f"expects {expected} (wrong capacity for these weights?)"
                )
            layer.set_weights(arrays)
    logger.debug("loaded CREPE weights from %s", path)


def normalized_frames(audio: np.ndarray, start: int, stop: int, hop: int = C.PITCH_HOP) -> np.ndarray:
    """Frames `start..stop-1` of the centred framing of `audio`, each zero-mean unit-std.

    audio: float32 [samples] at 16 kHz, already padded by FRAME_LENGTH // 2 on both sides.
    Returns float32 [stop - start, 1024]; frame i covers padded samples [i*hop, i*hop + 1024).
    """
    view = np.lib.stride_tricks.sliding_window_view(audio, FRAME_LENGTH)[::hop]
    frames = np.array(view[start:stop], dtype=np.float32)
    frames -= frames.mean(axis=1, keepdims=True)
    frames /= np.clip(frames.std(axis=1, keepdims=True), 1e-8, None)
    return frames


def local_average_cents(activation: np.ndarray, centers: np.ndarray | None = None, radius: int = 4) -> np.ndarray:
    """Activation-weighted mean of bin cents within ±`radius` bins of each frame's centre bin.

    activation: [frames, 360]; centers: int [frames] (default: the argmax of each frame).
    Returns float64 cents above 10 Hz [frames]. Sub-bin resolution from the neighbouring bins.
    """
    activation = np.asarray(activation, dtype=np.float64)
    if centers is None:
        centers = np.argmax(activation, axis=1)
    offsets = np.arange(-radius, radius + 1)
    index = np.asarray(centers, dtype=np.int64)[:, None] + offsets[None, :]
    inside = (index >= 0) & (index < NUM_BINS)
    index = np.clip(index, 0, NUM_BINS - 1)
    weights = np.take_along_axis(activation, index, axis=1) * inside
    total = weights.sum(axis=1)
    cents = (weights * BIN_CENTS[index]).sum(axis=1) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, cents, BIN_CENTS[np.asarray(centers, dtype=np.int64)])


def transition_matrix(max_jump_bins: int) -> np.ndarray:
    """HMM transition prior over the 360 bins: P(j | i) ∝ max(max_jump - |i - j|, 0). [360, 360]."""
    distance = np.abs(np.arange(NUM_BINS)[:, None] - np.arange(NUM_BINS)[None, :])
    weights = np.maximum(max_jump_bins - distance, 0).astype(np.float64)
    return weights / weights.sum(axis=1, keepdims=True)


def viterbi_bins(activation: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """Most likely bin path through the activations under the transition prior: int [frames].

    The per-frame observation likelihood is the activation renormalised to sum to one (with a
    small floor so no bin is impossible), so confident frames pin the path and weak ones follow
    their neighbours.
    """
    import librosa

    activation = np.asarray(activation, dtype=np.float64)
    if activation.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    likelihood = activation + 1e-4
    likelihood /= likelihood.sum(axis=1, keepdims=True)
    path = librosa.sequence.viterbi(likelihood.T, transition)
    return np.asarray(path, dtype=np.int64)


class CrepeExtractor(PitchExtractor):
    """CREPE on the 10 ms grid. The model is built and its weights loaded once, in __init__."""

    name = "crepe"

    def __init__(self, config: CrepeConfig | None = None, **options: Any) -> None:
        if C.SAMPLE_RATE != CREPE_SAMPLE_RATE:
            raise PitchError(
                f"CREPE needs {CREPE_SAMPLE_RATE} Hz audio but SAMPLE_RATE is {C.SAMPLE_RATE}"
            )
        config = config or CrepeConfig()
        self.config = dataclasses.replace(config, **options) if options else config
        self.weights_path = find_crepe_weights(self.config.capacity, self.config.weights_path)
        self.model = build_crepe_model(self.config.capacity)
        load_crepe_weights(self.model, self.weights_path)
        self._transition = transition_matrix(self.config.viterbi_max_jump_bins)
        self._forward = self._compile_forward()
        logger.info("CREPE %s ready (weights %s)", self.config.capacity, self.weights_path)

    def _compile_forward(self) -> Any:
        import tensorflow as tf

        model = self.model

        @tf.function(input_signature=[tf.TensorSpec([None, FRAME_LENGTH], tf.float32)])
        def forward(frames: tf.Tensor) -> tf.Tensor:
            return model(frames, training=False)

        return forward

    def activations(self, audio: np.ndarray) -> np.ndarray:
        """Raw network output on the 10 ms grid: float32 [1 + samples // PITCH_HOP, 360]."""
        audio = check_audio(audio)
        padded = np.pad(audio, FRAME_LENGTH // 2)
        frames_total = num_pitch_frames(len(audio))
        out = np.empty((frames_total, NUM_BINS), dtype=np.float32)
        for start in range(0, frames_total, self.config.batch_size):
            stop = min(start + self.config.batch_size, frames_total)
            out[start:stop] = self._forward(normalized_frames(padded, start, stop)).numpy()
        return out

    def decode(self, activation: np.ndarray) -> PitchTrack:
        """Activations [frames, 360] -> PitchTrack with the configured decoder and threshold."""
        activation = np.asarray(activation, dtype=np.float32)
        confidence = activation.max(axis=1) if activation.size else np.zeros(0, np.float32)
        if self.config.decoder == "viterbi":
            cents = local_average_cents(activation, viterbi_bins(activation, self._transition))
        else:
            cents = local_average_cents(activation)
        return PitchTrack(
            f0_hz=cents_to_hz(cents).astype(np.float32),
            confidence=confidence,
            voiced=confidence > self.config.voicing_threshold,
        )

    def extract(self, audio: np.ndarray) -> PitchTrack:
        return self.decode(self.activations(audio))
