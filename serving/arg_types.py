"""Argument types (and the token reader) shared by the `earworm` commands of serving (the server's and the benchmarks')."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "1", "yes"):
        return True
    if text.lower() in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"use on or off, got {text!r}")


def read_token(path: Path | None) -> str | None:
    """The bearer token: from the file at `path`, else $EARWORM_AUTH_TOKEN, else None. Never an
    argument: the command line of a process is visible to every user of the machine (`ps`)."""
    from serving.server import AUTH_TOKEN_ENV

    if path is None:
        return os.environ.get(AUTH_TOKEN_ENV, "").strip() or None
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise ValueError(f"cannot read the token file: {e}") from e
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token
