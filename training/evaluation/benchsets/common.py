"""Helpers shared by the benchmark-set builders."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from data_gen import paths
from data_gen.manifest import ManifestError

BENCHSET_INFO = "benchset.json"


def default_source(name: str) -> Path:
    """../shared/data/<name> beside the repository (or under $EARWORM_SHARED)."""
    return paths.shared_data_dir() / name


def default_bench_dir() -> Path:
    return paths.artifacts_dir() / "benchsets"


def require_source(source: Path, name: str, manifest: str = "manifest.csv") -> Path:
    """The source folder's manifest, or a clear error saying what layout is expected."""
    source = Path(source).resolve()
    path = source / manifest
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} source not found: {path} is missing (pass --source DIR laid out like "
            f"../shared/data/{name}; see ../shared/data/README.md)"
        )
    return path


def seeded_rng(seed: int, *parts: object) -> np.random.Generator:
    digest = hashlib.sha1("|".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def write_info(out_dir: Path, info: dict[str, Any]) -> Path:
    path = Path(out_dir) / BENCHSET_INFO
    info = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    path.write_text(json.dumps(info, indent=2, default=str) + "\n")
    return path


def pad_with_distractors(tracks: list, distractors: Path | None) -> list:
    """`tracks` followed by the tracks of the `distractors` catalogue (ManifestError on an id clash)."""
    from data_gen.manifest import read_catalogue

    if distractors is None:
        return list(tracks)
    extra = read_catalogue(distractors)
    clash = {t.track_id for t in tracks} & {t.track_id for t in extra}
    if clash:
        raise ManifestError(f"{distractors}: track ids clash with the benchmark's own: {sorted(clash)[:5]}")
    return list(tracks) + extra
