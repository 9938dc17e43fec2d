"""Inputs of the training-pair pipeline, normalised to one "snippet manifest" form.

A `Snippet` is one sung performance plus the master recording holding the same melody:

| field       | meaning                                                                              |
|-------------|--------------------------------------------------------------------------------------|
| snippet_id  | unique, stable id (`mir1k:<clip_id>`, `catalogue:<track_id>:<kind>`); seeds derive from it |
| melody_id   | the song/melody (MIR-1K song_id, catalogue melody_id): splits are by this id          |
| split       | train / validation / test, from `data_gen.melodies.split_of(melody_id)`              |
| source      | `mir1k` or `catalogue`                                                               |
| performance | path of a recorded performance, or "" when it is generated                           |
| generator   | "" or JSON `{"midi": path, "kind": "sung"|"hum"}`: render it with data_gen.synth.perform |
| master      | path(s) summed sample-by-sample into the master (MIR-1K: voice + accompaniment)      |
| alignment   | `sample`: the performance runs on the master's timeline from 0 (MIR-1K);             |
|             | `midi`: the performance follows the melody MIDI, which is timed like the master      |

Sources build these records in memory (`mir1k_snippets`, `catalogue_snippets`); the pipeline
writes them to `OUT/snippets.csv` so a run can be inspected and replayed (`read_snippets`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SNIPPET_COLUMNS = (
    "snippet_id", "melody_id", "split", "source", "performance", "generator", "master", "alignment",
)
MASTER_SEPARATOR = "|"
ALIGNMENTS = ("sample", "midi")


class SourceError(ValueError):
    """A source folder or snippet manifest is missing or malformed."""


@dataclass(frozen=True)
class Snippet:
    snippet_id: str
    melody_id: str
    split: str
    source: str
    performance: str
    generator: str
    master: tuple[str, ...]
    alignment: str = "sample"

    @property
    def generator_spec(self) -> dict:
        return json.loads(self.generator) if self.generator else {}

    def to_row(self) -> dict[str, str]:
        row = asdict(self)
        row["master"] = MASTER_SEPARATOR.join(self.master)
        return row

    @staticmethod
    def from_row(row: dict[str, str]) -> "Snippet":
        return Snippet(
            snippet_id=row["snippet_id"], melody_id=row["melody_id"], split=row["split"],
            source=row["source"], performance=row.get("performance", ""),
            generator=row.get("generator", ""),
            master=tuple(p for p in row["master"].split(MASTER_SEPARATOR) if p),
            alignment=row.get("alignment") or "sample",
        )


def split_of(melody_id: str) -> str:
    """The split of a song/melody id (the one rule every part of Earworm uses)."""
    from data_gen.melodies import split_of as _split_of

    return _split_of(melody_id)


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of the parts that is the same in every process and on every run
    (Python's `hash` is salted per process, so it must never decide shards or seeds)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode())
    return int.from_bytes(h.digest()[:8], "little")


def sample_limit(snippets: Sequence[Snippet], limit: int | None) -> list[Snippet]:
    """At most `limit` snippets: the first ones in a hash order of their ids, so a small sample
    spreads over songs and splits but is the same on every run; the result is sorted by id."""
    ordered = sorted(snippets, key=lambda s: s.snippet_id)
    if limit is not None and limit < len(ordered):
        ordered = sorted(ordered, key=lambda s: stable_hash("limit", s.snippet_id))[:limit]
    return sorted(ordered, key=lambda s: s.snippet_id)


def mir1k_snippets(root: str | os.PathLike[str],
                   leads_dir: str | os.PathLike[str] | None = None) -> list[Snippet]:
    """MIR-1K (layout: `manifest.csv` with clip_id,singer,song_id,...; `audio/<clip>.voice.ogg` and
    `audio/<clip>.accompaniment.ogg`, sample-aligned). The voice is the performance; the master is
    voice + accompaniment, or, with `leads_dir` (written by `earworm mir1k-leads`), the clip's
    instrument lead (`<clip>.lead.ogg`, the melody of its pitch labels) + accompaniment, a master
    that holds the melody but not the query's own voice. A missing lead file is reported by the
    pipeline's decode stage (errors output) like any unreadable master. The split follows the
    song_id, so every clip of a test song is in the test split only."""
    from data_gen.mir1k_leads import lead_path

    root = Path(root)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise SourceError(f"MIR-1K manifest not found: {manifest}")
    out: list[Snippet] = []
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"clip_id", "song_id"} - set(reader.fieldnames or ())
        if missing:
            raise SourceError(f"{manifest}: missing column(s) {sorted(missing)}")
        for row in reader:
            clip, song = row["clip_id"].strip(), row["song_id"].strip()
            if not clip or not song:
                raise SourceError(f"{manifest}: a row has an empty clip_id or song_id: {row}")
            voice = root / "audio" / f"{clip}.voice.ogg"
            accomp = root / "audio" / f"{clip}.accompaniment.ogg"
            out.append(Snippet(
                snippet_id=f"mir1k:{clip}", melody_id=song, split=split_of(song), source="mir1k",
                performance=str(voice), generator="",
                master=(str(lead_path(leads_dir, clip) if leads_dir else voice), str(accomp)),
                alignment="sample",
            ))
    if not out:
        raise SourceError(f"{manifest}: no clips")
    return out


CATALOGUE_INFO = "catalogue_info.jsonl"


def _catalogue_info(root: Path) -> dict[str, dict]:
    path = root / CATALOGUE_INFO
    if not path.is_file():
        raise SourceError(f"{root} has no {CATALOGUE_INFO} (write it with `earworm catalogue build`)")
    info: dict[str, dict] = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}:{i}: invalid JSON ({e})") from e
        if "track_id" not in rec or "melody_id" not in rec:
            raise SourceError(f"{path}:{i}: needs track_id and melody_id")
        info[str(rec["track_id"])] = rec
    return info


def catalogue_snippets(
    root: str | os.PathLike[str], performances: Iterable[str] = ("sung",)
) -> list[Snippet]:
    """A synthetic catalogue (manifest.csv with melody_midi + catalogue_info.jsonl): one snippet
    per (track, performance kind); the performance is rendered from the track's melody MIDI by
    `data_gen.synth.perform` inside the pipeline. The split follows the melody id."""
    from data_gen.manifest import ManifestError, read_catalogue

    root = Path(root)
    try:
        tracks = read_catalogue(root / "manifest.csv")
    except ManifestError as e:
        raise SourceError(str(e)) from e
    info = _catalogue_info(root)
    kinds = tuple(performances)
    out: list[Snippet] = []
    for t in tracks:
        if t.melody_midi is None:
            raise SourceError(f"catalogue track {t.track_id} has no melody_midi; cannot perform it")
        rec = info.get(t.track_id)
        if rec is None:
            raise SourceError(f"track {t.track_id} is missing from {root / CATALOGUE_INFO}")
        melody = str(rec["melody_id"])
        split = split_of(melody)
        if rec.get("split") and rec["split"] != split:
            raise SourceError(
                f"track {t.track_id}: {CATALOGUE_INFO} says split {rec['split']!r} but "
                f"split_of({melody!r}) is {split!r}"
            )
        for kind in kinds:
            out.append(Snippet(
                snippet_id=f"catalogue:{t.track_id}:{kind}", melody_id=melody, split=split,
                source="catalogue", performance="",
                generator=json.dumps({"midi": str(t.melody_midi), "kind": kind}, sort_keys=True),
                master=(str(t.path),), alignment="midi",
            ))
    return out


def write_snippets(path: str | os.PathLike[str], snippets: Iterable[Snippet]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=SNIPPET_COLUMNS)
        w.writeheader()
        for s in snippets:
            w.writerow(s.to_row())


def read_snippets(path: str | os.PathLike[str]) -> list[Snippet]:
    """Read a snippet manifest CSV (columns SNIPPET_COLUMNS; relative paths are relative to the
    CSV). The split column is recomputed check: it must equal split_of(melody_id)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise SourceError(f"snippet manifest not found: {path}")
    base = path.parent

    def resolve(p: str) -> str:
        return p if not p or Path(p).is_absolute() or "://" in p else str((base / p).resolve())

    out: list[Snippet] = []
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"snippet_id", "melody_id", "source", "master"} - set(reader.fieldnames or ())
        if missing:
            raise SourceError(f"{path}: missing column(s) {sorted(missing)}")
        for i, row in enumerate(reader, start=2):
            row = {k: (v or "").strip() for k, v in row.items()}
            sid = row["snippet_id"]
            if not sid or sid in seen:
                raise SourceError(f"{path}:{i}: empty or duplicate snippet_id {sid!r}")
            seen.add(sid)
            expected = split_of(row["melody_id"])
            if row.get("split") and row["split"] != expected:
                raise SourceError(
                    f"{path}:{i}: split {row['split']!r} but split_of({row['melody_id']!r}) is "
                    f"{expected!r}; splits are by melody id only"
                )
            row["split"] = expected
            row["performance"] = resolve(row.get("performance", ""))
            row["master"] = MASTER_SEPARATOR.join(
                resolve(p) for p in row["master"].split(MASTER_SEPARATOR) if p
            )
            if row.get("generator"):
                spec = json.loads(row["generator"])
                spec["midi"] = resolve(spec.get("midi", ""))
                row["generator"] = json.dumps(spec, sort_keys=True)
            snip = Snippet.from_row(row)
            if not snip.performance and not snip.generator:
                raise SourceError(f"{path}:{i}: needs a performance path or a generator spec")
            if snip.alignment not in ALIGNMENTS:
                raise SourceError(f"{path}:{i}: alignment must be one of {ALIGNMENTS}")
            out.append(snip)
    return out
