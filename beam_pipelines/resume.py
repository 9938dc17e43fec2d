"""Resumable datagen: the shard plan, the inputs' fingerprint and the record of completed shards.

A datagen run is cut into shards of whole snippets before it starts (`plan_shards`: per split,
the snippets in a stable hash order dealt round-robin into ceil(n / snippets_per_shard) shards).
Each shard is made from start to end by one worker and completed atomically:

    OUT/<split>/.pairs-IIIII-of-NNNNN.tfrecord.gz.tmp-<uuid>   written, then renamed to
    OUT/<split>/pairs-IIIII-of-NNNNN.tfrecord.gz               and then its marker is written
    OUT/.datagen/done/<split>-IIIII.json                       (temp name + rename as well)

A shard counts as done only when its marker exists, names the shard's fingerprint and its shard
file is there; a run killed at any point loses at most the shards in flight (their temp files
are removed by the next run). `OUT/.datagen/state.json` holds the fingerprint of the whole run:
the arguments that shape the output (`DatagenConfig` less `out_dir` and `log_every`), every
snippet, and the size and modification time of every local input file. A rerun with the same
fingerprint skips the done shards; a different one is refused (`DatagenStateError`, saying what
changed) unless the caller restarts, which discards the old shards first. Old and new shards are
never mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from beam_pipelines.sources import Snippet, stable_hash

log = logging.getLogger(__name__)

SHARD_PREFIX = "pairs"
SHARD_SUFFIX = ".tfrecord.gz"
"""Shard files: OUT/<split>/pairs-IIIII-of-NNNNN.tfrecord.gz."""
STATE_DIR = ".datagen"
STATE_FILE = "state.json"
DONE_DIR = "done"
LOCK_FILE = "lock"
TMP_MARK = ".tmp-"
FORMAT = "earworm-datagen-shards-v1"
"""Changes whenever the meaning of a shard changes (its layout, how snippets are dealt)."""

CONFIG_IGNORED = ("out_dir", "log_every")
"""DatagenConfig fields that do not change what is written."""


class DatagenStateError(RuntimeError):
    """The output folder holds shards of a different run (or one still writing there)."""


@dataclass(frozen=True)
class ShardTask:
    """One shard to make: every snippet of it, and the fingerprint its marker must carry."""

    split: str
    index: int
    count: int
    snippets: tuple[Snippet, ...]
    fingerprint: str

    @property
    def key(self) -> str:
        return f"{self.split}-{self.index:05d}"


def _h(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_fields(config) -> dict:
    """The DatagenConfig fields that shape the output (JSON-able)."""
    d = dataclasses.asdict(config)
    for k in CONFIG_IGNORED:
        d.pop(k, None)
    return json.loads(json.dumps(d, default=str))


def _file_stat(path: str) -> list:
    """[size, mtime_ns] of a local file, ["missing"] when absent, [] for non-local paths (their
    contents are trusted by name)."""
    if not path or "://" in path:
        return []
    try:
        st = os.stat(path)
    except OSError:
        return ["missing"]
    return [st.st_size, st.st_mtime_ns]


def snippet_inputs(s: Snippet) -> dict:
    """A snippet's row plus the stat of every file it reads (performance or melody MIDI, masters)."""
    files = [s.performance] if s.performance else [s.generator_spec.get("midi", "")]
    files += list(s.master)
    return {"row": s.to_row(), "files": [[f, *_file_stat(f)] for f in files]}


def plan_shards(config, snippets: Sequence[Snippet], splits: Sequence[str]) -> list[ShardTask]:
    """Every shard of the run. Per split: snippets in stable-hash order, dealt round-robin into
    `config.num_shards(n)` shards (equal sizes, melodies mixed); a split without snippets gets
    one empty shard (so `-of-NNNNN` always names a complete set)."""
    settings = _h({"format": FORMAT, "config": config_fields(config)})
    tasks = []
    for split in splits:
        mine = sorted((s for s in snippets if s.split == split),
                      key=lambda s: (stable_hash("shard", s.snippet_id), s.snippet_id))
        n = config.num_shards(len(mine))
        for i in range(n):
            part = tuple(sorted(mine[i::n], key=lambda s: s.snippet_id))
            fp = _h({"settings": settings, "split": split, "index": i, "count": n,
                     "snippets": [snippet_inputs(s) for s in part]})
            tasks.append(ShardTask(split, i, n, part, fp))
    return tasks


def run_fingerprint(tasks: Iterable[ShardTask]) -> str:
    return _h([t.fingerprint for t in tasks])


# --- files ---------------------------------------------------------------------------------------
def _join(*parts: str) -> str:
    from beam_pipelines.outputs import join

    return join(*parts)


def shard_path(out_dir: str, split: str, index: int, count: int, prefix: str, suffix: str) -> str:
    from beam_pipelines.outputs import shard_name

    return _join(out_dir, split, shard_name(prefix, index, count, suffix))


def marker_path(out_dir: str, key: str) -> str:
    return _join(out_dir, STATE_DIR, DONE_DIR, f"{key}.json")


def temp_path(final: str) -> str:
    """A hidden sibling of `final` that no shard glob (`*.tfrecord.gz`) matches."""
    head, tail = posixpath.split(final)
    return posixpath.join(head, f".{tail}{TMP_MARK}{uuid.uuid4().hex}")


def atomic_write(path: str, data: bytes) -> None:
    """Write to a temp name beside `path`, then rename it into place."""
    from apache_beam.io.filesystems import FileSystems

    from beam_pipelines.outputs import write_bytes

    tmp = temp_path(path)
    write_bytes(tmp, data)
    if "://" not in path:
        os.replace(tmp, path)
    else:
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([tmp], [path])


def commit_file(tmp: str, final: str) -> None:
    """Move a finished temp file onto its final name (atomic on a local filesystem)."""
    from apache_beam.io.filesystems import FileSystems

    if "://" not in final:
        os.replace(tmp, final)
        return
    if FileSystems.exists(final):
        FileSystems.delete([final])
    FileSystems.rename([tmp], [final])


def read_json(path: str) -> dict | None:
    from apache_beam.io.filesystems import FileSystems

    from beam_pipelines.outputs import read_bytes

    try:
        if not FileSystems.exists(path):
            return None
        return json.loads(read_bytes(path).decode())
    except (OSError, ValueError):
        return None  # a torn or unreadable marker: the shard is redone


def _list(pattern: str) -> list[str]:
    from beam_pipelines.outputs import _list as list_files

    return list_files(pattern)


# --- the state of an output folder --------------------------------------------------------------
def describe_change(old: dict, new: dict) -> str:
    """What differs between two state.json records, for a person."""
    parts = []
    oc, nc = old.get("config", {}), new.get("config", {})
    changed = sorted(k for k in set(oc) | set(nc) if oc.get(k) != nc.get(k))
    if changed:
        parts.append("arguments " + ", ".join(f"{k}: {oc.get(k)!r} -> {nc.get(k)!r}" for k in changed))
    if old.get("snippets") != new.get("snippets"):
        parts.append(f"snippets: {old.get('snippets')} -> {new.get('snippets')}")
    elif old.get("inputs") != new.get("inputs"):
        parts.append("the input files (which snippets, or their files' sizes or modification times)")
    if old.get("format") != new.get("format"):
        parts.append(f"shard format {old.get('format')} -> {new.get('format')}")
    return "; ".join(p for p in parts if p) or "the inputs"


def prepare(out_dir: str, config, tasks: Sequence[ShardTask], snippets: Sequence[Snippet],
            restart: bool) -> tuple[list[ShardTask], dict[str, dict]]:
    """Check the output folder against this run and tidy it. Returns (shards still to make,
    markers of the shards already done by key).

    - OUT/.datagen/state.json of another run: DatagenStateError (what changed), or with
      `restart` every datagen output in OUT is removed first.
    - OUT holding shards but no state (written by an older datagen): the same.
    - temp files of killed runs are removed; shard files and markers this plan does not name
      (another shard count) are removed; a marker whose fingerprint or shard file does not match
      counts as not done.
    """
    from apache_beam.io.filesystems import FileSystems

    from beam_pipelines.outputs import delete_tree

    state_path = _join(out_dir, STATE_DIR, STATE_FILE)
    splits = sorted({t.split for t in tasks})
    new_state = {"format": FORMAT, "fingerprint": run_fingerprint(tasks), "config": config_fields(config),
                 "snippets": len(snippets), "inputs": _h([snippet_inputs(s) for s in snippets]),
                 "shards": {sp: next(t.count for t in tasks if t.split == sp) for sp in splits}}
    old = read_json(state_path)
    from beam_pipelines.options import SPLITS

    existing = [p for sp in SPLITS for p in _list(_join(out_dir, sp, "*.tfrecord.gz"))]
    foreign = old is None and existing
    differs = old is not None and old.get("fingerprint") != new_state["fingerprint"]
    if foreign or differs:
        what = ("shards without a datagen state (an older datagen wrote them)" if foreign
                else "shards of a different run: " + describe_change(old, new_state))
        if not restart:
            raise DatagenStateError(
                f"{out_dir} holds {what}. Rerun with the same arguments and inputs to continue "
                f"that run, use another --out, or pass --restart to discard its shards and start over.")
        log.warning("datagen --restart: discarding %s in %s", what, out_dir)
        for sp in SPLITS:
            delete_tree(_join(out_dir, sp))
        delete_tree(_join(out_dir, STATE_DIR, DONE_DIR))
        if FileSystems.exists(state_path):
            FileSystems.delete([state_path])
    FileSystems.mkdirs(_join(out_dir, STATE_DIR)) if not FileSystems.exists(_join(out_dir, STATE_DIR)) else None
    if old is None or foreign or differs:
        atomic_write(state_path, (json.dumps(new_state, indent=2, sort_keys=True) + "\n").encode())

    # Leftovers: temp files of killed runs, shards and markers of no planned shard.
    from beam_pipelines.outputs import shard_name

    planned = {t.key: t for t in tasks}
    names = {_join(out_dir, t.split, shard_name(SHARD_PREFIX, t.index, t.count, SHARD_SUFFIX)) for t in tasks}
    stale = [p for sp in SPLITS for p in _list(_join(out_dir, sp, "*")) if TMP_MARK in posixpath.basename(p)]
    stale += [p for sp in SPLITS for p in _list(_join(out_dir, sp, "*.tfrecord.gz")) if p not in names]
    stale += [p for p in _list(_join(out_dir, STATE_DIR, DONE_DIR, "*"))
              if TMP_MARK in posixpath.basename(p)
              or posixpath.basename(p).removesuffix(".json") not in planned]
    if stale:
        log.info("removing %d leftover file(s) of earlier runs", len(stale))
        FileSystems.delete(stale)

    done: dict[str, dict] = {}
    pending = []
    for t in tasks:
        marker = read_json(marker_path(out_dir, t.key))
        path = shard_path(out_dir, t.split, t.index, t.count, SHARD_PREFIX, SHARD_SUFFIX)
        if marker and marker.get("fingerprint") == t.fingerprint and FileSystems.exists(path):
            done[t.key] = marker
        else:
            pending.append(t)
    return pending, done


def lock_output(out_dir: str):
    """An exclusive lock on a local OUT (None for object stores): a second datagen writing into
    the same folder is refused instead of racing the first. Keep the returned handle open."""
    if "://" in out_dir:
        return None
    import fcntl

    folder = os.path.join(out_dir, STATE_DIR)
    os.makedirs(folder, exist_ok=True)
    handle = open(os.path.join(folder, LOCK_FILE), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        raise DatagenStateError(f"another datagen is writing into {out_dir}") from e
    return handle
