"""A compact convolutional encoder: raw audio window -> 128-d unit-norm embedding.

    audio [batch, WINDOW_SAMPLES]
      -> "frontend" (SpectrogramFrontend)        [batch, frames, bins, 1]
      -> "body" (a Keras sub-model):
           conv blocks (3x3 conv, batch norm, ReLU, max-pool by `pools[i]` in (time, freq))
           -> max over the remaining frequency axis  [batch, frames', channels]
              (with the semitone-spaced front-end this makes the features (nearly) invariant to
              transposition: the same interval pattern anywhere on the axis gives the same value)
           -> 1-D convs over time (the melodic sequence)  [batch, frames', temporal_channels]
           -> residual dilated 1-D convs (`temporal_dilations`): the receptive field spans the
              whole window, so the embedding encodes the order of the melody's figures, not
              only a bag of ~1 s fragments
           -> mean and max over time, dropout, dense projection, L2 normalisation
      -> [batch, embedding_dim] unit-norm

The body is a separate sub-model so training can feed it cached, augmented spectrograms while the
exported model always runs the front-end on raw audio (`body_of(encoder)`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import keras

from data_gen import constants as C
from training.frontend import FrontendConfig, SpectrogramFrontend


@dataclass(frozen=True)
class EncoderConfig:
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    channels: tuple[int, ...] = (16, 32, 48, 64)
    pools: tuple[tuple[int, int], ...] = ((2, 1), (2, 2), (2, 1), (1, 1))  # (time, freq) per block
    freq_pooling: str = "max"  # "max" (key-invariant) or "flatten" (keeps absolute pitch)
    temporal_channels: tuple[int, ...] = (128,)
    temporal_dilations: tuple[int, ...] = ()  # residual blocks after temporal_channels, e.g. (2, 4)
    embedding_dim: int = C.EMBEDDING_DIM
    dropout: float = 0.1

    def __post_init__(self):
        if len(self.pools) != len(self.channels):
            raise ValueError(f"pools ({len(self.pools)}) and channels ({len(self.channels)}) differ in length")
        if self.temporal_dilations and not self.temporal_channels:
            raise ValueError("temporal_dilations needs at least one entry in temporal_channels")
        if any(d < 1 for d in self.temporal_dilations):
            raise ValueError(f"temporal_dilations must be >= 1, not {self.temporal_dilations}")
        if self.freq_pooling not in ("max", "flatten"):
            raise ValueError(f"freq_pooling must be 'max' or 'flatten', not {self.freq_pooling!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "EncoderConfig":
        d = dict(d)
        d["frontend"] = FrontendConfig(**d.get("frontend", {}))
        for k in ("channels", "temporal_channels", "temporal_dilations"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        if "pools" in d:
            d["pools"] = tuple(tuple(int(v) for v in p) for p in d["pools"])
        return EncoderConfig(**d)


def build_body(cfg: EncoderConfig) -> keras.Model:
    """Spectrogram [batch, frames, bins, 1] -> unit-norm embedding [batch, embedding_dim]."""
    fe = cfg.frontend
    spec = keras.Input((fe.window_frames, fe.bins, 1), name="spectrogram")
    x = spec
    for i, (ch, pool) in enumerate(zip(cfg.channels, cfg.pools)):
        x = keras.layers.Conv2D(ch, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if tuple(pool) != (1, 1):
            x = keras.layers.MaxPooling2D(tuple(pool), padding="same", name=f"pool{i}")(x)
    if cfg.freq_pooling == "max":
        x = keras.layers.Lambda(lambda t: keras.ops.max(t, axis=2), name="freq_max")(x)
    else:
        x = keras.layers.Reshape((x.shape[1], x.shape[2] * x.shape[3]), name="freq_flatten")(x)
    for i, ch in enumerate(cfg.temporal_channels):
        x = keras.layers.Conv1D(ch, 3, padding="same", use_bias=False, name=f"tconv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"tbn{i}")(x)
        x = keras.layers.ReLU(name=f"trelu{i}")(x)
    for i, dilation in enumerate(cfg.temporal_dilations):
        # x + BN(conv(x)) with BN's scale starting at 0: a new block starts as the identity, so a
        # model grown from a trained one (train --grow) starts exactly where that model was
        y = keras.layers.Conv1D(x.shape[-1], 3, padding="same", dilation_rate=dilation, use_bias=False,
                                name=f"rconv{i}")(x)
        y = keras.layers.BatchNormalization(gamma_initializer="zeros", name=f"rbn{i}")(y)
        x = keras.layers.ReLU(name=f"rrelu{i}")(keras.layers.Add(name=f"radd{i}")([x, y]))
    x = keras.layers.Concatenate(name="time_pool")(
        [keras.layers.GlobalAveragePooling1D(name="time_mean")(x),
         keras.layers.GlobalMaxPooling1D(name="time_max")(x)])
    x = keras.layers.Dropout(cfg.dropout, name="dropout")(x)
    x = keras.layers.Dense(cfg.embedding_dim, name="projection")(x)
    emb = keras.layers.UnitNormalization(name="embedding")(x)
    return keras.Model(spec, emb, name="body")


def body_flops(cfg: EncoderConfig) -> int:
    """Floating-point operations (two per multiply-add) of one window through the body's convolutions
    and projection: the work that bounds its speed (batch norm, ReLU, pooling and the normalisations
    add a few percent). `earworm bench-query` divides it by the body's time, so that figures taken on
    machines of different speed can be told apart from changes in the code."""
    total = 0
    for layer in build_body(cfg).layers:
        if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)):
            positions = math.prod(layer.output.shape[1:-1])  # time (x frequency) steps; 1 for Dense
            total += 2 * positions * math.prod(layer.kernel.shape)
    return total


def build_encoder(cfg: EncoderConfig = EncoderConfig(), seed: int = 0) -> keras.Model:
    """Raw audio [batch, WINDOW_SAMPLES] -> unit-norm embedding [batch, embedding_dim]."""
    keras.utils.set_random_seed(seed)
    audio = keras.Input((C.WINDOW_SAMPLES,), name="audio")
    spec = SpectrogramFrontend(**cfg.frontend.to_dict(), name="frontend")(audio)
    emb = build_body(cfg)(spec)
    return keras.Model(audio, emb, name="earworm_encoder")


def body_of(encoder: keras.Model) -> keras.Model:
    """The trainable spectrogram -> embedding sub-model of an encoder built by `build_encoder`."""
    return encoder.get_layer("body")
