"""A compact convolutional encoder: raw audio window -> 128-d unit-norm embedding.

[batch, WINDOW_SAMPLES] -> front-end [batch, frames, bins, 1] -> conv blocks -> pooling ->
dense -> L2-normalised [batch, EMBEDDING_DIM].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import keras

from data_gen import constants as C
from training.frontend import FrontendConfig, SpectrogramFrontend


@dataclass(frozen=True)
class EncoderConfig:
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    channels: tuple[int, ...] = (32, 64, 96, 128)
    embedding_dim: int = C.EMBEDDING_DIM
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "EncoderConfig":
        d = dict(d)
        d["frontend"] = FrontendConfig(**d.get("frontend", {}))
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return EncoderConfig(**d)


def build_encoder(cfg: EncoderConfig = EncoderConfig(), seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    audio = keras.Input((C.WINDOW_SAMPLES,), name="audio")
    x = SpectrogramFrontend(**asdict(cfg.frontend), name="frontend")(audio)
    for i, ch in enumerate(cfg.channels):
        x = keras.layers.Conv2D(ch, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = keras.layers.Dropout(cfg.dropout)(x)
    x = keras.layers.Dense(cfg.embedding_dim, name="projection")(x)
    emb = keras.layers.UnitNormalization(name="embedding")(x)
    return keras.Model(audio, emb, name="earworm_encoder")
