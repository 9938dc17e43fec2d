"""Helpers shared by the baselines: per-track disk caches keyed by file identity."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def file_key(path: Path, *salt: object) -> str:
    """A key that changes when the file (path, size, mtime) or any `salt` changes."""
    st = Path(path).stat()
    text = "|".join([str(Path(path).resolve()), str(st.st_size), str(st.st_mtime_ns), *map(str, salt)])
    return hashlib.sha1(text.encode()).hexdigest()


class ArrayCache:
    """One .npy file per key under `folder` (created on first write)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self._path(key)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:  # a torn write from an interrupted run: recompute
            log.warning("ignoring unreadable cache file %s (%s)", p, e)
            return None

    def put(self, key: str, value: np.ndarray) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp.npy")
        np.save(tmp, value, allow_pickle=False)
        tmp.replace(p)
