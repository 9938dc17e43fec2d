"""The catalogue and query-set contracts (CSV files) that every command reads and writes.

Catalogue manifest (`manifest.csv`): columns `track_id,title,artist,path[,melody_midi]`;
`path` and `melody_midi` are relative to the manifest's folder (absolute paths are accepted).
Query set: columns `query_id,path,track_id` (track_id empty for a song not in the catalogue),
optional extra columns kept as-is (e.g. `kind`, `duration_s`); paths relative to the CSV.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CATALOGUE_COLUMNS = ("track_id", "title", "artist", "path")
CATALOGUE_OPTIONAL = ("melody_midi",)
QUERY_COLUMNS = ("query_id", "path", "track_id")


class ManifestError(ValueError):
    """A manifest is malformed: missing columns, duplicate ids, empty ids, or missing files."""


@dataclass(frozen=True)
class Track:
    track_id: str
    title: str
    artist: str
    path: Path  # absolute
    melody_midi: Path | None = None  # absolute, when the catalogue has the symbolic melody


@dataclass(frozen=True)
class Query:
    query_id: str
    path: Path  # absolute
    track_id: str | None  # None: the song is not in the catalogue (open set)
    extra: dict[str, str] = field(default_factory=dict, compare=False)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (base / p).resolve()


def _read_rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ManifestError(
                f"{path}: missing column(s) {', '.join(missing)}; expected at least "
                f"{','.join(required)} (found {','.join(header) or 'no header'})"
            )
        rows = []
        for i, row in enumerate(reader, start=2):
            if None in row:
                raise ManifestError(f"{path}:{i}: more fields than the header has columns")
            rows.append({k.strip(): (v or "").strip() for k, v in row.items()})
    return rows


def read_catalogue(path: str | os.PathLike[str], *, check_files: bool = True) -> list[Track]:
    """Parse and validate a catalogue manifest. Raises `ManifestError` with file:line context."""
    path = Path(path).resolve()
    rows = _read_rows(path, CATALOGUE_COLUMNS)
    tracks: list[Track] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):
        tid = row["track_id"]
        if not tid:
            raise ManifestError(f"{path}:{i}: empty track_id")
        if tid in seen:
            raise ManifestError(f"{path}:{i}: duplicate track_id {tid!r}")
        seen.add(tid)
        if not row["path"]:
            raise ManifestError(f"{path}:{i}: empty path for track {tid!r}")
        audio = _resolve(path.parent, row["path"])
        if check_files and not audio.is_file():
            raise ManifestError(f"{path}:{i}: audio file for track {tid!r} not found: {audio}")
        midi = row.get("melody_midi") or ""
        midi_path = _resolve(path.parent, midi) if midi else None
        if check_files and midi_path is not None and not midi_path.is_file():
            raise ManifestError(f"{path}:{i}: melody MIDI for track {tid!r} not found: {midi_path}")
        tracks.append(Track(tid, row["title"], row["artist"], audio, midi_path))
    if not tracks:
        raise ManifestError(f"{path}: the catalogue has no tracks")
    return tracks


def read_queries(path: str | os.PathLike[str], *, check_files: bool = True) -> list[Query]:
    """Parse and validate a query set. Raises `ManifestError` with file:line context."""
    path = Path(path).resolve()
    rows = _read_rows(path, QUERY_COLUMNS)
    queries: list[Query] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):
        qid = row["query_id"]
        if not qid:
            raise ManifestError(f"{path}:{i}: empty query_id")
        if qid in seen:
            raise ManifestError(f"{path}:{i}: duplicate query_id {qid!r}")
        seen.add(qid)
        if not row["path"]:
            raise ManifestError(f"{path}:{i}: empty path for query {qid!r}")
        audio = _resolve(path.parent, row["path"])
        if check_files and not audio.is_file():
            raise ManifestError(f"{path}:{i}: audio file for query {qid!r} not found: {audio}")
        extra = {k: v for k, v in row.items() if k not in QUERY_COLUMNS}
        queries.append(Query(qid, audio, row["track_id"] or None, extra))
    if not queries:
        raise ManifestError(f"{path}: the query set has no queries")
    return queries


def _relative(p: Path, base: Path) -> str:
    try:
        return os.path.relpath(p, base)
    except ValueError:  # another drive
        return str(p)


def write_catalogue(path: str | os.PathLike[str], tracks: Iterable[Track]) -> None:
    """Write a manifest; paths are stored relative to the manifest's folder."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tracks = list(tracks)
    with_midi = any(t.melody_midi for t in tracks)
    columns = list(CATALOGUE_COLUMNS) + (["melody_midi"] if with_midi else [])
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for t in tracks:
            row = [t.track_id, t.title, t.artist, _relative(Path(t.path), path.parent)]
            if with_midi:
                row.append(_relative(Path(t.melody_midi), path.parent) if t.melody_midi else "")
            w.writerow(row)


def write_queries(path: str | os.PathLike[str], queries: Iterable[Query]) -> None:
    """Write a query set; extra columns are the union of the queries' `extra` keys."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    queries = list(queries)
    extra_cols = sorted({k for q in queries for k in q.extra})
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*QUERY_COLUMNS, *extra_cols])
        for q in queries:
            w.writerow(
                [q.query_id, _relative(Path(q.path), path.parent), q.track_id or "",
                 *(q.extra.get(k, "") for k in extra_cols)]
            )


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV as stripped strings; ManifestError naming the missing `required` columns."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in required if c not in header]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(header)})")
        return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in reader]
