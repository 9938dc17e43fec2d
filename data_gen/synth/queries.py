"""Synthetic query sets: hum/whistle/tone/sung snippets of every catalogue track's melody.

`make_queries` reads a catalogue manifest (it needs the `melody_midi` column, whose timing equals
the rendered master's), performs a random window of each track's melody with human deviations
(`deviations.perform`), and writes `OUT/audio/<query_id>.wav`, `OUT/queries.csv` (the query-set
contract of `data_gen.manifest`, with extra columns kind, duration_s, start_s) and
`OUT/queries_info.jsonl` (every sampled parameter of every query, one JSON object per line).
Deterministic for a seed: each query's seed derives from (seed, track_id, index), so a query
does not change when `limit` or the catalogue's other tracks do.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_gen.audio import write_audio
from data_gen.manifest import Query, read_catalogue, write_queries
from data_gen.synth.contour import SynthError, notes_from_midi
from data_gen.synth.deviations import DeviationConfig, perform
from data_gen.synth.dispatch import KINDS

logger = logging.getLogger(__name__)

QUERIES_CSV = "queries.csv"
INFO_JSONL = "queries_info.jsonl"
AUDIO_DIR = "audio"


class QueryGenerationError(ValueError):
    """The catalogue cannot be turned into queries (no melody MIDI, unreadable melody...)."""


@dataclass(frozen=True)
class QuerySetConfig:
    """Defaults of `make_queries` and of `earworm queries make`."""

    kinds: tuple[str, ...] = KINDS
    per_track: int = 1
    seed: int = 0
    min_seconds: float = 5.0
    max_seconds: float = 10.0
    limit: int | None = None


DEFAULTS = QuerySetConfig()


def query_seed(seed: int, track_id: str, index: int) -> int:
    """A per-query seed that depends only on the set's seed, the track and the query's index."""
    entropy = [int(seed) & 0xFFFFFFFF, zlib.crc32(track_id.encode("utf-8")), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def query_id(track_id: str, kind: str, index: int) -> str:
    """A file-name-safe query id: `<track>-<kind>-<index>` (a hash is added when the track id
    needed sanitising, so that distinct tracks never collide)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", track_id).strip("._") or "track"
    if safe != track_id:
        safe = f"{safe}_{zlib.crc32(track_id.encode('utf-8')):08x}"
    return f"{safe}-{kind}-{index}"


def make_queries(
    catalogue_manifest: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    kinds: Sequence[str] = DEFAULTS.kinds,
    per_track: int = DEFAULTS.per_track,
    seed: int = DEFAULTS.seed,
    min_s: float = DEFAULTS.min_seconds,
    max_s: float = DEFAULTS.max_seconds,
    limit: int | None = DEFAULTS.limit,
    *,
    config: DeviationConfig | None = None,
    progress: bool = True,
) -> Path:
    """Write a synthetic query set for the catalogue; returns the path of `queries.csv`.

    kinds:     query kinds, cycled over the queries (track i's j-th query gets
               kinds[(i * per_track + j) % len(kinds)], so every kind is represented evenly).
    per_track: queries per track. limit: only the first `limit` tracks.
    min_s, max_s: query length range in seconds (override `config`'s).
    config:    deviation ranges (default `DeviationConfig()`).
    """
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if not kinds or bad:
        raise QueryGenerationError(f"unknown query kind(s) {bad or kinds}; choose from {', '.join(KINDS)}")
    if per_track < 1:
        raise QueryGenerationError(f"per_track must be at least 1, got {per_track}")
    if limit is not None and limit < 1:
        raise QueryGenerationError(f"limit must be at least 1, got {limit}")
    try:
        config = replace(config or DeviationConfig(), min_seconds=float(min_s), max_seconds=float(max_s))
    except SynthError as e:
        raise QueryGenerationError(str(e)) from e

    manifest = Path(catalogue_manifest)
    tracks = read_catalogue(manifest, check_files=False)
    if limit is not None:
        tracks = tracks[:limit]
    missing = [t.track_id for t in tracks if t.melody_midi is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise QueryGenerationError(
            f"{manifest}: synthetic queries need each track's melody MIDI (the manifest's "
            f"melody_midi column), but {len(missing)} track(s) have none: {shown}"
        )
    absent = [str(t.melody_midi) for t in tracks if t.melody_midi is not None and not t.melody_midi.is_file()]
    if absent:
        raise QueryGenerationError(f"{manifest}: melody MIDI file(s) not found: {', '.join(absent[:5])}")

    out = Path(out_dir)
    (out / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    queries: list[Query] = []
    infos: list[dict[str, object]] = []
    total = len(tracks) * per_track
    with tqdm(total=total, desc="queries", unit="query", disable=not progress) as bar:
        for ti, track in enumerate(tracks):
            try:
                notes = notes_from_midi(track.melody_midi)  # type: ignore[arg-type]
            except SynthError as e:
                raise QueryGenerationError(f"track {track.track_id!r}: {e}") from e
            for j in range(per_track):
                kind = kinds[(ti * per_track + j) % len(kinds)]
                qid = query_id(track.track_id, kind, j)
                qseed = query_seed(seed, track.track_id, j)
                try:
                    perf = perform(notes, kind, qseed, config)
                except SynthError as e:
                    raise QueryGenerationError(f"track {track.track_id!r}, query {qid}: {e}") from e
                path = out / AUDIO_DIR / f"{qid}.wav"
                write_audio(path, perf.audio)
                queries.append(Query(qid, path.resolve(), track.track_id, {
                    "kind": kind,
                    "duration_s": f"{perf.info['duration_s']:.3f}",
                    "start_s": f"{perf.info['start_s']:.3f}",
                }))
                infos.append({"query_id": qid, "track_id": track.track_id, **perf.info})
                bar.update(1)
    csv_path = out / QUERIES_CSV
    write_queries(csv_path, queries)
    with (out / INFO_JSONL).open("w", encoding="utf-8") as f:
        for info in infos:
            f.write(json.dumps(info, sort_keys=True) + "\n")
    logger.info("wrote %d queries for %d tracks to %s", len(queries), len(tracks), csv_path)
    return csv_path
