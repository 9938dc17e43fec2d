"""A 2-step training run on tiny data: checkpoint + config, resume, export, fine-tune."""

import json

import numpy as np
import pytest

from data_gen import constants as C
from training.config import TrainConfig, apply_overrides
from training.train import mrr_at_k, train

TINY = ["data.batch_size=4", "schedule.steps_per_epoch=2", "schedule.epochs=1", "data.shuffle_buffer=16",
        "optim.warmup_steps=1", "schedule.checkpoint_every_steps=1", "encoder.channels=[4,8,8,8]",
        "encoder.temporal_channels=[16]"]


@pytest.fixture(scope="module")
def tiny_run(tiny_data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    cfg = apply_overrides(TrainConfig(), TINY)
    result = train(tiny_data_dir, run, cfg)
    return run, cfg, result


def test_two_steps_write_checkpoint_and_config(tiny_run):
    run, cfg, result = tiny_run
    assert result.steps == 2
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index"))
    assert "ckpt-2.index" in ckpts
    saved = json.loads((run / "checkpoints" / "ckpt-2.config.json").read_text())
    assert TrainConfig.from_dict(saved) == cfg
    assert (run / "best" / "encoder.weights.h5").is_file()
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [0, 1] and "val_mrr@10" in hist[-1]


def test_resume_continues_from_the_checkpoint(tiny_data_dir, tiny_run, tmp_path):
    import shutil

    run, cfg, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    more = apply_overrides(cfg, ["schedule.epochs=2"])
    result = train(tiny_data_dir, copy, more)
    assert result.steps == 4
    hist = [json.loads(x) for x in (copy / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 2, 4]  # no re-run of step 0..2


def test_a_run_stopped_mid_epoch_resumes_at_its_step_and_keeps_its_weights(tiny_data_dir, tmp_path):
    """A run stopped (killed) after step 1 of a 2-step epoch: the rerun restores that checkpoint
    (weights, optimizer, step) instead of starting over or re-applying --init-from."""
    from training.export import load_run_encoder

    run = tmp_path / "run"
    cfg = apply_overrides(TrainConfig(), TINY)
    first = train(tiny_data_dir, run, apply_overrides(cfg, ["schedule.stop_at_step=1"]))
    assert first.steps == 1
    assert (run / "checkpoints" / "ckpt-1.index").is_file()
    at_1 = [w.copy() for w in load_run_encoder(run, which="last")[0].get_weights()]
    other = tmp_path / "other"
    train(tiny_data_dir, other, apply_overrides(cfg, ["schedule.stop_at_step=1", "seed=99"]))
    import shutil

    shutil.copytree(run, tmp_path / "copy")
    result = train(tiny_data_dir, tmp_path / "copy", cfg)
    assert result.steps == 2
    hist = [json.loads(x) for x in (tmp_path / "copy" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 2]  # step 0 validated once, the epoch finished at 2
    # the resumed run started from step 1's weights: one more step moves them only a little
    resumed = load_run_encoder(tmp_path / "copy", which="last")[0].get_weights()
    fresh = load_run_encoder(other, which="last")[0].get_weights()
    moved = sum(float(np.abs(a - b).sum()) for a, b in zip(resumed, at_1))
    apart = sum(float(np.abs(a - b).sum()) for a, b in zip(fresh, at_1))
    assert moved < apart


def test_export_reload_matches_keras_and_init_from_restores_exactly(tiny_data_dir, tiny_run, tmp_path):
    from serving.embedder import Embedder
    from training.export import export_run, load_keras_encoder, load_run_encoder

    run, cfg, _ = tiny_run
    model_dir = export_run(run, tmp_path / "model")
    keras_model, _ = load_run_encoder(run)
    audio = np.random.default_rng(0).normal(0, 0.1, (3, C.WINDOW_SAMPLES)).astype(np.float32)
    served = Embedder(model_dir).embed_windows(audio)
    np.testing.assert_allclose(served, keras_model(audio, training=False).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["training_data"]["train"]["examples"] == 12 and "val_mrr@10_history" in meta["metrics"]
    restored, enc_cfg = load_keras_encoder(model_dir)
    assert enc_cfg == cfg.encoder
    for a, b in zip(restored.get_weights(), keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Fine-tuning starts from exactly those weights (0 steps: the run's weights equal the export's).
    ft = train(tiny_data_dir, tmp_path / "ft", apply_overrides(TrainConfig(), ["schedule.epochs=0"]),
               init_from=model_dir)
    assert ft.steps == 0
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["encoder"]["channels"] == [4, 8, 8, 8]


def test_mrr_at_k_by_melody():
    q = np.eye(3, dtype=np.float32)
    m = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 0.5, 0]], np.float32)
    m_ids = np.array(["a", "b", "c", "b"])
    rr = mrr_at_k(q, m, np.array(["a", "b", "c"]), m_ids, k=10)
    # q0: a=1, b=0.9 -> rank 1. q1: b=max(0.1, 0.5)=0.5 -> rank 1. q2: c=1 -> rank 1.
    np.testing.assert_allclose(rr, [1, 1, 1])
    rr = mrr_at_k(q, m, np.array(["b", "a", "b"]), m_ids, k=1)
    np.testing.assert_allclose(rr, [0.0, 0.0, 0.0])
    rr = mrr_at_k(q, m, np.array(["b", "a", "b"]), m_ids, k=10)
    np.testing.assert_allclose(rr, [0.5, 0.5, 0.5])  # each true melody is second


def test_grow_adds_identity_blocks_and_keeps_the_shared_weights(tiny_data_dir, tiny_run, tmp_path):
    """--grow: residual dilated blocks start as the identity, so the grown model embeds exactly as
    the model it grew from; every shared layer keeps its weights."""
    from training.encoder import body_of
    from training.export import ExportError, export_run, load_keras_encoder
    from training.train import transfer_weights

    run, cfg, _ = tiny_run
    model_dir = export_run(run, tmp_path / "model")
    grown_cfg = apply_overrides(cfg, ["encoder.temporal_dilations=[2,4]", "schedule.epochs=0"])
    ft = train(tiny_data_dir, tmp_path / "grown", grown_cfg, init_from=model_dir, grow=True)
    assert ft.steps == 0
    saved = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert saved["encoder"]["temporal_dilations"] == [2, 4]

    from training.encoder import build_encoder

    base, _ = load_keras_encoder(model_dir)
    grown = build_encoder(grown_cfg.encoder, seed=5)
    assert transfer_weights(body_of(base), body_of(grown)) == ["rconv0", "rbn0", "rconv1", "rbn1"]
    audio = np.random.default_rng(1).normal(0, 0.1, (2, C.WINDOW_SAMPLES)).astype(np.float32)
    np.testing.assert_allclose(grown(audio, training=False).numpy(), base(audio, training=False).numpy(),
                               atol=1e-6)
    # Another front-end is refused: the copied layers were trained on the init model's spectrograms.
    other_fe = apply_overrides(grown_cfg, ["encoder.frontend.floor_db=40.0"])
    with pytest.raises(ExportError, match="front-end"):
        train(tiny_data_dir, tmp_path / "other_fe", other_fe, init_from=model_dir, grow=True)
    # A layer whose shape changed is refused, not silently re-initialised.
    wider = build_encoder(apply_overrides(cfg, ["encoder.temporal_channels=[32]"]).encoder)
    with pytest.raises(ExportError, match="tconv0"):
        transfer_weights(body_of(base), body_of(wider))
