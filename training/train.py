"""The training loop: resumable, checkpointed, validated by MRR@10 every epoch.

RUN_DIR layout (written by `train`):
    config.json            the resolved TrainConfig (also beside every checkpoint as ckpt-N.config.json)
    data_summary.json      counts of the training / validation data (copied into exported metadata)
    checkpoints/           tf.train.CheckpointManager: model + optimizer + step (resume after a kill)
    best/encoder.weights.h5, best/metrics.json   the weights with the best validation MRR@10 so far
    history.jsonl          one line per epoch: losses, throughput, validation metrics
    tb/                    TensorBoard summaries
    init_from.txt          the model a fine-tuning run started from (if any)

Running `train` again on the same RUN_DIR continues from the latest checkpoint with the saved
config (the run's identity); only schedule.* (e.g. more epochs, a new time limit) may change.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from training.config import TrainConfig, save_config

log = logging.getLogger(__name__)

WEIGHTS_FILE = "encoder.weights.h5"  # same file name as inside an export's keras/ folder


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_val_mrr: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def mrr_at_k(q: np.ndarray, m: np.ndarray, q_ids: np.ndarray, m_ids: np.ndarray, k: int = 10) -> np.ndarray:
    """Reciprocal rank (0 beyond k) of each query's melody among all melodies of the master windows.

    q [nq, d], m [nm, d] unit-norm; q_ids [nq], m_ids [nm] melody ids. A melody's score for a query
    is its best window's cosine similarity. Returns [nq] reciprocal ranks; their mean is MRR@k.
    """
    melodies, col = np.unique(m_ids, return_inverse=True)
    sims = q @ m.T  # [nq, nm]
    order = np.argsort(col, kind="stable")
    starts = np.searchsorted(col[order], np.arange(melodies.size))
    per_mel = np.maximum.reduceat(sims[:, order], starts, axis=1)  # [nq, n_melodies]
    lookup = {mid: i for i, mid in enumerate(melodies)}
    rr = np.zeros(q.shape[0], np.float32)
    for i, mid in enumerate(q_ids):
        t = lookup.get(mid)
        if t is None:
            continue
        rank = 1 + int(np.sum(per_mel[i] > per_mel[i, t]))
        rr[i] = 1.0 / rank if rank <= k else 0.0
    return rr


def embed_arrays(body, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Run the body (spectrogram -> embedding) over [n, frames, bins, 1] in inference mode."""
    out = [body(x[i:i + batch], training=False).numpy() for i in range(0, x.shape[0], batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def validate(body, val, k: int = 10) -> dict:
    """MRR@k of validation queries against all validation master windows, overall and per kind/source."""
    q = embed_arrays(body, val.query)
    m = embed_arrays(body, val.master)
    rr = mrr_at_k(q, m, val.melody_ids, val.melody_ids, k)
    out = {f"val_mrr@{k}": float(rr.mean()), "val_top1": float(np.mean(rr == 1.0)),
           "val_queries": int(rr.size), "val_melodies": int(np.unique(val.melody_ids).size)}
    for name, groups in (("kind", val.query_kinds), ("source", val.sources)):
        for g in np.unique(groups):
            out[f"val_mrr@{k}/{name}={g}"] = float(rr[groups == g].mean())
    return out


def transfer_weights(src, dst) -> list[str]:
    """Copy the weights of every layer of `src` into the layer of `dst` with the same name.

    Returns the names of the layers of `dst` that have weights but no counterpart in `src`.
    A layer present in both with different weight shapes is an error (not a silent re-init).
    """
    from training.export import ExportError

    src_layers = {layer.name: layer for layer in src.layers}
    fresh = []
    for layer in dst.layers:
        if not layer.weights:
            continue
        old = src_layers.get(layer.name)
        if old is None:
            fresh.append(layer.name)
            continue
        old_w = old.get_weights()
        if [w.shape for w in old_w] != [tuple(w.shape) for w in layer.weights]:
            raise ExportError(f"layer {layer.name!r}: the init model's weights have shapes "
                              f"{[w.shape for w in old_w]}, this config's {[tuple(w.shape) for w in layer.weights]}")
        layer.set_weights(old_w)
    missing = sorted(set(n for n, l in src_layers.items() if l.weights) - {l.name for l in dst.layers})
    if missing:
        raise ExportError(f"the init model has layers this config lacks: {', '.join(missing)}")
    return fresh


def _resolve_config(run_dir: Path, cfg: TrainConfig) -> tuple[TrainConfig, bool]:
    """The config to use and whether this is a resumed run (RUN_DIR/config.json exists)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return cfg, False
    saved = TrainConfig.from_dict(json.loads(path.read_text()))
    if replace(saved, schedule=cfg.schedule) != cfg:
        log.warning("%s exists: resuming with its saved config (only schedule.* taken from the new one)", path)
    return replace(saved, schedule=cfg.schedule), True


def _load_init_model(init_from: str | Path, cfg: TrainConfig, grow: bool):
    """The exported model a fine-tuning run starts from, and the config to train with: the model's
    encoder config, or with `grow` cfg.encoder (which must keep the model's front-end)."""
    from training.export import ExportError, load_keras_encoder

    init_model, enc_cfg = load_keras_encoder(init_from)
    if not grow:
        cfg = replace(cfg, encoder=enc_cfg)
    elif cfg.encoder.frontend != enc_cfg.frontend:  # the copied layers were trained on its spectrograms
        raise ExportError(f"--grow keeps the front-end of {init_from}, but this config's differs: "
                          f"{cfg.encoder.frontend} vs {enc_cfg.frontend}")
    return cfg, init_model


def _build_model(cfg: TrainConfig, run_dir: Path, init_model, init_from: str | Path | None, grow: bool):
    """The encoder and its body (spectrogram -> embedding), with the init model's weights if any
    (all of them, or with `grow` those of the layers found by name: `transfer_weights`)."""
    from training.encoder import body_of, build_encoder

    encoder = build_encoder(cfg.encoder, seed=cfg.seed)
    body = body_of(encoder)
    if init_model is not None:
        if grow:
            fresh = transfer_weights(body_of(init_model), body)
            log.info("grown from %s; new layers (initialised afresh): %s", init_from, ", ".join(fresh) or "none")
        else:
            encoder.set_weights(init_model.get_weights())
            log.info("initialised from %s", init_from)
        (run_dir / "init_from.txt").write_text(f"{Path(init_from).resolve()}\n")
    return encoder, body


def _build_optimizer(cfg: TrainConfig, body):
    """AdamW on a cosine-decay learning rate after a linear warm-up, built for the body's variables."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if cfg.optim.warmup_steps else cfg.optim.learning_rate,
        decay_steps=max(cfg.total_steps - cfg.optim.warmup_steps, 1),
        alpha=cfg.optim.min_lr_ratio,
        warmup_target=cfg.optim.learning_rate if cfg.optim.warmup_steps else None,
        warmup_steps=cfg.optim.warmup_steps)
    opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.optim.weight_decay,
                                 clipnorm=cfg.optim.clipnorm or None)
    opt.build(body.trainable_variables)
    return opt


class _Checkpoints:
    """RUN_DIR/checkpoints: model, optimizer, global step and best validation MRR@10, restored from the
    latest checkpoint on resume; each checkpoint has the run's config beside it (ckpt-N.config.json)."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, encoder, opt) -> None:
        import tensorflow as tf

        self.dir, self.cfg = run_dir / "checkpoints", cfg
        self.step_var = tf.Variable(0, dtype=tf.int64, name="step")
        self.best_var = tf.Variable(-1.0, dtype=tf.float64, name="best_val_mrr")
        ckpt = tf.train.Checkpoint(model=encoder, optimizer=opt, step=self.step_var, best=self.best_var)
        self.manager = tf.train.CheckpointManager(ckpt, str(self.dir), max_to_keep=cfg.schedule.keep_checkpoints)
        if self.manager.latest_checkpoint:
            ckpt.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            log.info("resumed from %s at step %d", self.manager.latest_checkpoint, self.step)

    @property
    def step(self) -> int:
        return int(self.step_var.numpy())

    @property
    def best(self) -> float:
        return float(self.best_var.numpy())

    def save(self) -> None:
        """Checkpoint at the current step; drop the config files of checkpoints the manager deleted."""
        path = self.manager.save(checkpoint_number=self.step)
        save_config(self.cfg, f"{path}.config.json")
        kept = {Path(p).name for p in self.manager.checkpoints}
        for stale in self.dir.glob("ckpt-*.config.json"):
            if stale.name[: -len(".config.json")] not in kept:
                stale.unlink()


def _write_data_summary(data_dir, run_dir: Path) -> None:
    """RUN_DIR/data_summary.json (once per run): the data folders and the counts of both splits."""
    from training.dataset import data_dirs, summarize_split

    if not (run_dir / "data_summary.json").is_file():
        summary: dict = {"data_dirs": [str(d.resolve()) for d in data_dirs(data_dir)]}
        for split in ("train", "validation"):
            summary[split] = summarize_split(data_dir, split)
        (run_dir / "data_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("data: %s", (run_dir / "data_summary.json").read_text().replace("\n", " "))


def _datasets(data_dir, cfg: TrainConfig, run_dir: Path, start_step: int):
    """The validation set, and an endless iterator of training batches (shuffled by `start_step`)."""
    from training.dataset import training_dataset, validation_set

    val = validation_set(data_dir, cfg)
    log.info("validation: %d pairs, %d melodies", len(val), np.unique(val.melody_ids).size)
    ds = training_dataset(data_dir, cfg, cache_dir=run_dir / "cache", epoch_seed=start_step)
    return val, iter(ds)


def _make_train_step(body, opt, cfg: TrainConfig):
    """One optimiser step on a batch of (query, master) pairs, both embedded in one pass; returns the losses."""
    import tensorflow as tf

    from training.losses import combined_loss

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        with tf.GradientTape() as tape:
            x = tf.concat([batch["query"], batch["master"]], 0)
            e = body(x, training=True)
            q, m = tf.split(e, 2)
            losses = combined_loss(q, m, batch["label"], cfg.loss)
        grads = tape.gradient(losses["loss"], body.trainable_variables)
        opt.apply_gradients(zip(grads, body.trainable_variables))
        return losses

    return train_step


def _read_history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _append_history(path: Path, history: list[dict], rec: dict) -> None:
    history.append(rec)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")


@dataclass
class _EpochRun:
    """The steps one call of `_run_epoch` trained."""

    step: int  # the global step reached
    steps: int
    loss_sums: dict[str, float]
    seconds: float
    stopped: bool  # by schedule.max_minutes or schedule.stop_at_step


def _run_epoch(train_step, batches, step: int, cfg: TrainConfig, ckpts: _Checkpoints, writer, opt,
               deadline: float | None) -> _EpochRun:
    """Train from `step` to the end of its epoch (or of training, or a stop): losses and learning rate
    to TensorBoard every log_every_steps, a checkpoint every checkpoint_every_steps."""
    import tensorflow as tf
    from tqdm import tqdm

    spe = cfg.schedule.steps_per_epoch
    sums: dict[str, float] = {}
    n = 0
    stopped = False
    t0 = time.monotonic()
    bar = tqdm(total=spe, initial=step % spe, desc=f"epoch {step // spe + 1}/{cfg.schedule.epochs}", unit="step",
               mininterval=10.0)
    while True:
        losses = train_step(next(batches))
        step += 1
        ckpts.step_var.assign(step)
        n += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        bar.update(1)
        if step % cfg.schedule.log_every_steps == 0:
            with writer.as_default(step=step):
                for k, v in losses.items():
                    tf.summary.scalar(f"train/{k}", v)
                tf.summary.scalar("train/lr", opt.learning_rate)
            bar.set_postfix(loss=f"{sums['loss'] / n:.3f}")
        if step % cfg.schedule.checkpoint_every_steps == 0:
            ckpts.save()
        if (deadline is not None and time.monotonic() > deadline) or step == cfg.schedule.stop_at_step:
            stopped = True
            break
        if step % spe == 0 or step >= cfg.total_steps:
            break
    bar.close()
    return _EpochRun(step, n, sums, time.monotonic() - t0, stopped)


def _epoch_record(body, val, opt, epoch: int, run: _EpochRun, batch_size: int) -> dict:
    """The history line of an epoch: mean training losses, throughput, learning rate, validation metrics."""
    rate = run.steps * batch_size / max(run.seconds, 1e-9)
    metrics = validate(body, val)
    return {"epoch": epoch, "step": run.step, **{f"train_{k}": v / max(run.steps, 1) for k, v in run.loss_sums.items()},
            "pairs_per_s": rate, "lr": float(opt.learning_rate.numpy()), **metrics}


def _write_epoch_summaries(writer, rec: dict) -> None:
    """The epoch's validation metrics and throughput to TensorBoard."""
    import tensorflow as tf

    with writer.as_default(step=rec["step"]):
        for k, v in rec.items():
            if isinstance(v, float) and k.startswith("val_"):
                tf.summary.scalar(k.replace("@", "_at_").replace("=", "_"), v)
        tf.summary.scalar("train/pairs_per_s", rec["pairs_per_s"])


def _save_best(encoder, run_dir: Path, rec: dict, ckpts: _Checkpoints) -> None:
    """RUN_DIR/best: the weights and the history line of the best validation MRR@10 so far."""
    ckpts.best_var.assign(rec["val_mrr@10"])
    (run_dir / "best").mkdir(exist_ok=True)
    encoder.save_weights(str(run_dir / "best" / WEIGHTS_FILE))
    (run_dir / "best" / "metrics.json").write_text(json.dumps(rec, indent=2) + "\n")
    ckpts.save()


def train(data_dir, run_dir: str | Path, cfg: TrainConfig,
          init_from: str | Path | None = None, grow: bool = False) -> TrainResult:
    """Train (or resume training) an encoder; see the module docstring.

    data_dir: a data folder (train/, validation/ shards) or a list of them (one per datagen run).
    init_from: an exported model to start from. Its encoder config replaces cfg.encoder, unless
      `grow`: then cfg.encoder (e.g. with extra residual blocks) is built and every layer of the
      init model found there by name with the same weight shapes is copied (`transfer_weights`).
    """
    import tensorflow as tf

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg, resumed = _resolve_config(run_dir, cfg)
    init_model = None
    if init_from is not None and not resumed:
        cfg, init_model = _load_init_model(init_from, cfg, grow)
    save_config(cfg, run_dir / "config.json")
    encoder, body = _build_model(cfg, run_dir, init_model, init_from, grow)
    opt = _build_optimizer(cfg, body)
    ckpts = _Checkpoints(run_dir, cfg, encoder, opt)
    _write_data_summary(data_dir, run_dir)
    step = ckpts.step
    val, batches = _datasets(data_dir, cfg, run_dir, start_step=step)
    train_step = _make_train_step(body, opt, cfg)
    writer = tf.summary.create_file_writer(str(run_dir / "tb"))
    history_path = run_dir / "history.jsonl"
    history = _read_history(history_path)
    deadline = time.monotonic() + cfg.schedule.max_minutes * 60 if cfg.schedule.max_minutes > 0 else None

    if step == 0 and not history:
        metrics = validate(body, val)
        log.info("before training: %s", _fmt(metrics))
        _append_history(history_path, history, {"epoch": 0, "step": 0, **metrics})

    stopped = False
    while step < cfg.total_steps and not stopped:
        epoch = step // cfg.schedule.steps_per_epoch + 1
        run = _run_epoch(train_step, batches, step, cfg, ckpts, writer, opt, deadline)
        step, stopped = run.step, run.stopped
        ckpts.save()
        if stopped and step % cfg.schedule.steps_per_epoch != 0:
            log.info("stopped at step %d by schedule.max_minutes/stop_at_step (checkpointed; rerun to resume)", step)
            break
        rec = _epoch_record(body, val, opt, epoch, run, cfg.data.batch_size)
        _append_history(history_path, history, rec)
        _write_epoch_summaries(writer, rec)
        log.info("epoch %d step %d: %.1f pairs/s, %s", epoch, step, rec["pairs_per_s"], _fmt(rec))
        if rec["val_mrr@10"] > ckpts.best:
            _save_best(encoder, run_dir, rec, ckpts)
    writer.flush()
    return TrainResult(run_dir, step, ckpts.best, history, stopped)


def _fmt(d: dict) -> str:
    keys = [k for k in d if k.startswith(("val_mrr", "val_top1", "train_loss", "train_triplet", "train_softmax"))]
    return ", ".join(f"{k}={d[k]:.4f}" for k in keys)
