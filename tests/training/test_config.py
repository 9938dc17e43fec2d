"""TrainConfig: files, overrides and errors."""

import pytest

from training.config import ConfigError, TrainConfig, apply_overrides, load_config


def test_overrides_are_typed_and_nested():
    cfg = apply_overrides(TrainConfig(), ["loss.softmax_weight=0", "encoder.channels=[8,16,16,32]",
                                          "augment.enabled=false", "encoder.frontend.kind=logmel",
                                          "augment.query.pitch_semitones=6"])
    assert cfg.loss.softmax_weight == 0.0 and isinstance(cfg.loss.softmax_weight, float)
    assert cfg.encoder.channels == (8, 16, 16, 32)
    assert cfg.augment.enabled is False
    assert cfg.encoder.frontend.kind == "logmel"
    assert cfg.augment.query.pitch_semitones == 6.0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key loss.nope"):
        apply_overrides(TrainConfig(), ["loss.nope=1"])
    with pytest.raises(ConfigError):
        apply_overrides(TrainConfig(), ["data.batch_size=1.5"])
    with pytest.raises(ConfigError):
        apply_overrides(TrainConfig(), ["encoder.channels=[8,16]"])  # pools no longer match
    bad = tmp_path / "bad.toml"
    bad.write_text("[schedule]\nepochs = 'many'\n")
    with pytest.raises(ConfigError):
        load_config(bad)


def test_shipped_config_files_load():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.toml"))
    assert files, "training/configs/*.toml missing"
    for f in files:
        assert isinstance(load_config(f), TrainConfig)
