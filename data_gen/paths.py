"""Where the repository, the shared data/models and build artefacts live."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """The read-only shared folder (`../shared` beside the repository, or $EARWORM_SHARED)."""
    return Path(os.environ.get("EARWORM_SHARED", REPO_ROOT.parent / "shared")).resolve()


def shared_data_dir() -> Path:
    return shared_dir() / "data"


def crepe_tiny_weights() -> Path:
    return shared_dir() / "models" / "crepe" / "model-tiny.h5"


def artifacts_dir() -> Path:
    """Build outputs (demo catalogue, indexes, benchmark sets); ignored by git."""
    return Path(os.environ.get("EARWORM_ARTIFACTS", REPO_ROOT / "artifacts")).resolve()
