"""The training configuration: one frozen dataclass tree, loadable from TOML/JSON, with overrides.

`TrainConfig` holds every default of `earworm train` in one place. A config file (TOML or JSON, see
training/configs/) only needs the keys it changes; command-line overrides are dotted
`section.key=value` pairs whose values are parsed as TOML literals (`loss.softmax_weight=0`,
`encoder.channels=[16,32,48,64]`, `augment.enabled=false`). The resolved config is written beside
every checkpoint as JSON.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from training.augment import AugmentConfig
from training.encoder import EncoderConfig
from training.losses import LossConfig


class ConfigError(ValueError):
    """A config file or override names an unknown key or has a bad value."""


@dataclass(frozen=True)
class DataConfig:
    batch_size: int = 64  # (query, master) pairs per step; the in-batch negatives are the other pairs
    shuffle_buffer: int = 8192
    cache: str = "memory"  # "memory", "disk" (RUN_DIR/cache/) or "none": where decoded spectrograms live
    max_train_examples: int = 0  # 0: all
    max_val_examples: int = 2000  # validation queries (and their masters) used for MRR@10 each epoch
    parallel_calls: int = 2


@dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05  # cosine decay to learning_rate * min_lr_ratio at the last step
    weight_decay: float = 1e-4
    clipnorm: float = 5.0


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = 30
    steps_per_epoch: int = 200
    checkpoint_every_steps: int = 100  # also checkpointed at every epoch end
    keep_checkpoints: int = 3
    max_minutes: float = 0.0  # stop (checkpointed, resumable) after this much wall time; 0: no limit
    stop_at_step: int = 0  # stop (checkpointed) at this global step without changing the LR schedule; 0: none
    log_every_steps: int = 20


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "TrainConfig":
        return _merge(TrainConfig(), d, "")

    @property
    def total_steps(self) -> int:
        return self.schedule.epochs * self.schedule.steps_per_epoch


def _coerce(default: Any, value: Any, path: str) -> Any:
    """Convert a TOML/JSON value to the type of the dataclass field's current value."""
    if is_dataclass(default):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        return _merge(default, value, path + ".")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if default and isinstance(default[0], tuple):
            return tuple(tuple(int(v) for v in item) for item in value)
        return tuple(type(default[0])(v) if default else v for v in value)
    if isinstance(default, (int, float)) and not isinstance(value, bool) and isinstance(value, (int, float)):
        if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return type(default)(value)
    if isinstance(default, str) and isinstance(value, str):
        return value
    raise ConfigError(f"{path}: expected {type(default).__name__}, got {value!r}")


def _merge(base: Any, d: dict, prefix: str) -> Any:
    names = {f.name for f in fields(base)}
    changes = {}
    for k, v in d.items():
        if k not in names:
            raise ConfigError(f"unknown config key {prefix}{k!s} (known: {', '.join(sorted(names))})")
        changes[k] = _coerce(getattr(base, k), v, prefix + k)
    try:
        return replace(base, **changes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from e


def load_config(path: str | Path | None) -> TrainConfig:
    """Defaults updated by a TOML (.toml) or JSON (.json) file; None gives the defaults."""
    if path is None:
        return TrainConfig()
    path = Path(path)
    try:
        text = path.read_text()
        d = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    return TrainConfig.from_dict(d)


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply `section.key=value` overrides (values are TOML literals; bare words are strings)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        cfg = _merge(cfg, nested, "")
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
