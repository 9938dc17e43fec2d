"""The `earworm` console command: one entry point above every package.

It imports each package's command module explicitly (an import that fails is an error with its
cause, never a missing command) and lets each `register(subparsers)` add its subcommands and set
`func` on them (a callable taking the parsed args and returning an exit code). Command modules keep
heavy imports (TensorFlow, Beam, ScaNN) inside their run functions so that `earworm --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from beam_pipelines import cli as beam_cli
from data_gen import cli_catalogue, cli_leads, cli_pitch, cli_queries, cli_realism
from serving import cli as serving_cli
from serving.apps import cli as apps_cli
from training import cli as training_cli
from training.evaluation import cli as evaluation_cli

COMMAND_MODULES = (
    cli_catalogue,  # earworm catalogue build
    cli_queries,  # earworm queries make
    cli_leads,  # earworm mir1k-leads
    cli_pitch,  # earworm pitch bench
    cli_realism,  # earworm hum-stats
    beam_cli,  # earworm datagen / index / index-remove
    training_cli,  # earworm train / export
    evaluation_cli,  # earworm eval / eval-suite / benchset
    serving_cli,  # earworm serve / identify / calibrate / gate-check
    apps_cli,  # earworm demo / bench-*
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="earworm",
        description="Earworm: identify a song from a hum, whistle or sung snippet.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
