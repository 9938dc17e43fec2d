"""Training throughput on this machine: the encoder's train step and the input pipeline, separately.

    .venv/bin/python -m training.bench [--config FILE] [--set KEY=VALUE ...] [--data DIR ...] [--steps 20]

Prints pairs/s of (a) the optimizer step alone on random spectrogram batches (query + master
windows through the body, loss, backward, AdamW), and (b) with --data, the tf.data pipeline alone
(cached spectrograms -> augmented, normalised batches) after its first (caching) pass.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--data", nargs="+")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    from training.config import apply_overrides, load_config
    from training.encoder import body_of, build_encoder
    from training.losses import combined_loss

    cfg = apply_overrides(load_config(args.config), args.overrides)
    fe = cfg.encoder.frontend
    b = cfg.data.batch_size
    body = body_of(build_encoder(cfg.encoder, cfg.seed))
    opt = keras.optimizers.AdamW(1e-3)
    x = tf.random.normal([b, fe.window_frames, fe.bins, 1])
    labels = tf.range(b, dtype=tf.int64)

    @tf.function
    def step(q, m):
        with tf.GradientTape() as tape:
            e = body(tf.concat([q, m], 0), training=True)
            eq, em = tf.split(e, 2)
            loss = combined_loss(eq, em, labels, cfg.loss)["loss"]
        g = tape.gradient(loss, body.trainable_variables)
        opt.apply_gradients(zip(g, body.trainable_variables))
        return loss

    step(x, x)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(x, x)
    dt = time.perf_counter() - t0
    print(f"train step: batch {b} pairs, {dt / args.steps * 1000:.0f} ms/step, {b * args.steps / dt:.1f} pairs/s "
          f"({body.count_params()} parameters, {os.cpu_count()} CPUs, GPUs: {len(tf.config.list_physical_devices('GPU'))})")
    if args.data:
        from training.dataset import training_dataset

        it = iter(training_dataset(args.data, cfg))
        t0 = time.perf_counter()
        n = 0
        while True:  # first pass fills the cache; time a second stretch of the same length
            next(it)
            n += 1
            if n >= args.steps:
                break
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            next(it)
        dt = time.perf_counter() - t0
        print(f"input pipeline: first {args.steps} batches {b * args.steps / first:.1f} pairs/s (decode + STFT + "
              f"augment), then {b * args.steps / dt:.1f} pairs/s (augment from cache once warm)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
