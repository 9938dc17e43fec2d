"""Where the repository, the shared data/models and build artefacts live."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file()
"""True when running from a source checkout; False for an installed wheel (REPO_ROOT is then
site-packages, where nothing may be written)."""


def shared_dir() -> Path:
    """The read-only shared folder (`../shared` beside the repository, or $EARWORM_SHARED)."""
    return Path(os.environ.get("EARWORM_SHARED", REPO_ROOT.parent / "shared")).resolve()


def shared_data_dir() -> Path:
    return shared_dir() / "data"


def crepe_tiny_weights() -> Path:
    return shared_dir() / "models" / "crepe" / "model-tiny.h5"


def artifacts_dir() -> Path:
    """Build outputs (demo catalogue, indexes, benchmark sets): $EARWORM_ARTIFACTS, else the checkout's
    artifacts/ (ignored by git), else (an installed wheel) ~/.cache/earworm."""
    default = REPO_ROOT / "artifacts" if IN_CHECKOUT else Path.home() / ".cache" / "earworm"
    return Path(os.environ.get("EARWORM_ARTIFACTS", default)).resolve()
