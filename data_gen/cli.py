"""The `earworm` console command: one entry point, subcommands registered by each package.

Each module in `COMMAND_MODULES` exposes `register(subparsers)`, which adds its subcommand(s)
and sets `func` on them (a callable taking the parsed args and returning an exit code). Command
modules keep heavy imports (TensorFlow, Beam, ScaNN) inside their run functions so that
`earworm --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "data_gen.cli_catalogue",  # earworm catalogue build
    "data_gen.cli_queries",  # earworm queries make
    "data_gen.cli_leads",  # earworm mir1k-leads
    "data_gen.cli_pitch",  # earworm pitch bench
    "data_gen.cli_realism",  # earworm hum-stats
    "beam_pipelines.cli",  # earworm datagen / index
    "training.cli",  # earworm train / export
    "training.evaluation.cli",  # earworm eval / benchset
    "serving.cli",  # earworm serve / identify / calibrate / gate-check / demo / bench-*
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="earworm",
        description="Earworm: identify a song from a hum, whistle or sung snippet.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # a broken import is an error with its cause, never a missing command
            raise ImportError(f"earworm: the commands of {name} cannot be loaded: {e}") from e
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
