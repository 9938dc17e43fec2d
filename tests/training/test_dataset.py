"""Reading the training-pair TFRecords: split purity, shapes, validation set."""

import numpy as np
import pytest

from training.config import TrainConfig, apply_overrides
from training.dataset import DatasetError, featurize_split, training_dataset, validation_set


def ids(data_dir, split):
    cfg = TrainConfig()
    return {ex["melody_id"].numpy().decode() for ex in featurize_split(data_dir, split, cfg.encoder.frontend)}


def test_splits_are_disjoint_by_melody(tiny_data_dir):
    train, val = ids(tiny_data_dir, "train"), ids(tiny_data_dir, "validation")
    assert len(train) == 6 and len(val) == 3
    assert not train & val


def test_a_record_in_the_wrong_folder_is_an_error(tiny_data_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_data_dir / "validation", bad / "validation")
    shutil.copytree(tiny_data_dir / "validation", bad / "train")  # validation records in train/
    with pytest.raises(DatasetError, match="another split"):
        validation_set(bad, TrainConfig(), split="train")


def test_missing_split_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="no"):
        validation_set(tmp_path, TrainConfig())


def test_training_batches(tiny_data_dir):
    cfg = apply_overrides(TrainConfig(), ["data.batch_size=4"])
    batch = next(iter(training_dataset(tiny_data_dir, cfg)))
    fe = cfg.encoder.frontend
    assert batch["query"].shape == (4, fe.window_frames, fe.bins, 1)
    assert batch["master"].shape == (4, fe.window_frames, fe.bins, 1)
    assert batch["label"].shape == (4,)
    assert np.all(np.isfinite(batch["query"].numpy()))


def test_validation_set(tiny_data_dir):
    val = validation_set(tiny_data_dir, TrainConfig())
    assert len(val) == 6 and set(val.melody_ids) == ids(tiny_data_dir, "validation")
    assert set(val.query_kinds) == {"hum", "whistle"}
