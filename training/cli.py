"""`earworm train` and `earworm export`.

    earworm train --data DATA_DIR [DATA_DIR ...] --out RUN_DIR [--config FILE] [--init-from MODEL_DIR] [--set KEY=VALUE ...]
    earworm export --run RUN_DIR --out MODEL_DIR [--which best|last] [--name NAME]

Rerunning `earworm train` with the same --out resumes from its latest checkpoint. After
fine-tuning an exported model on new releases (`--init-from serving/default_model`), export it and
re-index the catalogue with the new model (embeddings of different models are not comparable):
    earworm index --catalogue CATALOGUE/manifest.csv --model NEW_MODEL --out NEW_INDEX
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train (or fine-tune / resume) the encoder on training-pair TFRecords",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", metavar="DIR",
                   help="folder(s) with train/ and validation/ *.tfrecord.gz shards (e.g. one per datagen run)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs); an existing one is resumed")
    p.add_argument("--config", help="TOML or JSON config file (see training/configs/)")
    p.add_argument("--init-from", help="exported model folder to fine-tune (its keras/ weights and encoder config)")
    p.add_argument("--grow", action="store_true",
                   help="with --init-from: keep this run's encoder config (e.g. added encoder.temporal_dilations) "
                        "and copy the init model's weights into the layers the two share")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set loss.softmax_weight=0 --set schedule.epochs=5 (repeatable)")
    p.add_argument("--epochs", type=int, help="shortcut for --set schedule.epochs=N")
    p.add_argument("--steps-per-epoch", type=int, help="shortcut for --set schedule.steps_per_epoch=N")
    p.add_argument("--batch-size", type=int, help="shortcut for --set data.batch_size=N")
    p.add_argument("--max-minutes", type=float, help="shortcut for --set schedule.max_minutes=M")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("export", help="export a training run as a SavedModel for serving")
    e.add_argument("--run", required=True, help="training run folder")
    e.add_argument("--out", required=True, help="model folder to write (replaced)")
    e.add_argument("--which", choices=("best", "last"), default="best",
                   help="weights with the best validation MRR@10 (default) or the last checkpoint")
    e.add_argument("--name", default="earworm", help="model name (version = NAME-<weights hash>)")
    e.set_defaults(func=run_export)


def run_train(args) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.WARNING)  # per-checkpoint "Sharding callback" chatter
    from training.config import ConfigError, apply_overrides, load_config
    from training.dataset import DatasetError
    from training.export import ExportError
    from training.train import train

    overrides = list(args.overrides)
    for flag, key in (("epochs", "schedule.epochs"), ("steps_per_epoch", "schedule.steps_per_epoch"),
                      ("batch_size", "data.batch_size"), ("max_minutes", "schedule.max_minutes")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.grow and not args.init_from:
        log.error("--grow needs --init-from MODEL_DIR")
        return 2
    try:
        cfg = apply_overrides(load_config(args.config), overrides)
        result = train(args.data, args.out, cfg, init_from=args.init_from, grow=args.grow)
    except (ConfigError, DatasetError, ExportError) as e:
        log.error("%s", e)
        return 2
    log.info("done: %d steps, best validation MRR@10 %.4f; export with: earworm export --run %s --out MODEL_DIR",
             result.steps, result.best_val_mrr, args.out)
    return 0


def run_export(args) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from training.export import ExportError, export_run

    try:
        out = export_run(args.run, args.out, which=args.which, name=args.name)
    except ExportError as e:
        log.error("%s", e)
        return 2
    print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m training.cli train|export ...`: the same commands without the other packages' CLIs."""
    parser = argparse.ArgumentParser(prog="python -m training.cli")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
