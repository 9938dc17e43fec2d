"""`earworm benchset synthetic`: held-out (test-split) songs, synthetic queries, distractor masters.

Layout of OUT:
    pool/audio/<track_id>.ogg, pool/midi/<track_id>.mid   every rendered master + its melody MIDI
    pool/pool.jsonl        one line per melody considered, in catalogue order: rendered (track_id,
                           title, artist, seconds, render_s) or skipped (reason) — the build's memory
    queries/queries.csv    the query set (+ queries/audio, queries_info.jsonl), songs of the test split
    catalogue_<N>/manifest.csv   the first N pool tracks: the queried songs, then distractors
    benchset.json          what was built, with per-track render times

- Queried songs: `songs` melodies with `data_gen.melodies.split_of(id) == "test"` (never seen in
  training), in a seeded order; masters rendered by `data_gen.render.render_master` (the renderer the
  catalogue builder uses), queries by `data_gen.synth.queries.make_queries` (hum / whistle / sung
  performances of 5-10 s from anywhere in the song, with key, tempo and human-like deviations).
- Distractors: melodies of any split except the queried ones, in another seeded order.
- Incremental and resumable: masters already in the pool are reused, so `--tracks 10000` after
  `--tracks 1000` renders only the 9,000 new distractors, and an interrupted build continues where
  it stopped. The 1k catalogue is a prefix of the 10k one (same songs, same queries).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_gen.manifest import Track, write_catalogue
from training.evaluation.benchsets.common import write_info

log = logging.getLogger(__name__)

POOL = "pool"
POOL_INDEX = "pool.jsonl"
QUERIES = "queries"
LOCK_FILE = ".build.lock"


class BenchsetBusyError(RuntimeError):
    """Another process is building this benchmark set right now."""


@contextlib.contextmanager
def build_lock(out_dir: Path):
    """Exclusive, non-blocking lock on OUT (two builders appending to one pool would corrupt it)."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise BenchsetBusyError(f"{out_dir} is being built by another process (pid {holder}); "
                                    "wait for it to finish") from e
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class SyntheticConfig:
    tracks: int = 1000
    songs: int = 100
    queries: int = 200
    kinds: tuple[str, ...] = ("hum", "whistle", "sung")
    min_seconds: float = 5.0
    max_seconds: float = 10.0
    seed: int = 0
    workers: int = 1
    """Rendering processes (rendering is CPU-bound: ~1-3 s per master on one core)."""

    def __post_init__(self) -> None:
        if self.songs < 1 or self.tracks < self.songs:
            raise ValueError(f"need 1 <= songs <= tracks, got songs={self.songs}, tracks={self.tracks}")
        if self.queries < 1:
            raise ValueError("queries must be >= 1")


def catalogue_dir(out_dir: Path, tracks: int) -> Path:
    return Path(out_dir) / f"catalogue_{tracks}"


def render_seed(seed: int, melody_id: str) -> int:
    from data_gen.melodies import stable_hash

    return stable_hash(f"benchset-render:{seed}:{melody_id}") % (2**31)


def _render_one(args: tuple[str, int, str]) -> dict[str, Any]:
    """Worker: parse + render one melody into the pool. Returns its pool entry."""
    melody_id, seed, pool_dir = args
    from data_gen.band_names import band_name
    from data_gen.audio import write_audio
    from data_gen.melodies import MelodyError, check_usable, load_melody
    from data_gen.render import render_master

    start = time.perf_counter()
    try:
        melody = load_melody(melody_id)
        check_usable(melody)
    except MelodyError as e:
        return {"melody_id": melody_id, "skipped": str(e)}
    try:
        master = render_master(melody, render_seed(seed, melody_id))
    except Exception as e:  # noqa: BLE001 - a tune the arranger/renderer cannot handle is skipped
        return {"melody_id": melody_id, "skipped": f"render failed: {type(e).__name__}: {e}"}
    track_id = melody_id
    pool = Path(pool_dir)
    audio_path = pool / "audio" / f"{track_id}.ogg"
    midi_path = pool / "midi" / f"{track_id}.mid"
    write_audio(audio_path, master.audio, master.sample_rate)
    midi_path.parent.mkdir(parents=True, exist_ok=True)
    master.midi_melody.write(str(midi_path))
    info = master.info
    return {
        "melody_id": melody_id, "track_id": track_id, "title": melody.title,
        "artist": band_name(str(info.get("style", "")), str(info.get("key", ""))),
        "split": melody.split, "style": info.get("style"), "seconds": round(master.duration_seconds, 2),
        "render_s": round(time.perf_counter() - start, 3),
    }


class Pool:
    """The rendered masters so far (pool.jsonl), appended as new ones are rendered."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir) / POOL
        self.index = self.dir / POOL_INDEX
        self.entries: dict[str, dict[str, Any]] = {}
        if self.index.is_file():
            for line in self.index.read_text().splitlines():
                if line.strip():
                    try:
                        e = json.loads(line)
                    except json.JSONDecodeError:  # a torn last line from an interrupted run
                        continue
                    if "skipped" in e or self._files_exist(e):
                        self.entries[e["melody_id"]] = e

    def _files_exist(self, e: dict[str, Any]) -> bool:
        return (self.dir / "audio" / f"{e['track_id']}.ogg").is_file() and (
            self.dir / "midi" / f"{e['track_id']}.mid").is_file()

    def add(self, entry: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.index.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        self.entries[entry["melody_id"]] = entry

    def track(self, e: dict[str, Any]) -> Track:
        return Track(e["track_id"], e["title"], e["artist"], self.dir / "audio" / f"{e['track_id']}.ogg",
                     self.dir / "midi" / f"{e['track_id']}.mid")


def _fill(pool: Pool, candidates: Iterator[str], want: int, config: SyntheticConfig, desc: str
          ) -> list[dict[str, Any]]:
    """The first `want` usable melodies of `candidates`, rendering those not yet in the pool."""
    chosen: list[dict[str, Any]] = []
    bar = tqdm(total=want, desc=desc, unit="track", mininterval=5)
    executor = ProcessPoolExecutor(config.workers) if config.workers > 1 else None
    try:
        while len(chosen) < want:
            batch: list[str] = []
            # take enough candidates for the remaining need (a few spare for skipped tunes)
            need = want - len(chosen)
            new = 0
            for mid in candidates:
                batch.append(mid)
                new += mid not in pool.entries
                if new >= max(config.workers * 4, 1) or len(batch) >= need + 8:
                    break
            if not batch:
                break
            todo = [m for m in batch if m not in pool.entries]
            jobs = [(m, config.seed, str(pool.dir)) for m in todo]
            results = executor.map(_render_one, jobs) if executor else map(_render_one, jobs)
            for entry in results:
                pool.add(entry)
            for mid in batch:
                e = pool.entries[mid]
                if "skipped" not in e and len(chosen) < want:
                    chosen.append(e)
                    bar.update(1)
    finally:
        bar.close()
        if executor:
            executor.shutdown()
    return chosen


def build_synthetic(out_dir: Path, config: SyntheticConfig = SyntheticConfig()) -> dict[str, Any]:
    """Build (or extend) the synthetic benchmark set; returns a summary with the manifest paths.

    Raises BenchsetBusyError while another process builds the same folder.
    """
    out_dir = Path(out_dir).resolve()
    with build_lock(out_dir):
        return _build_synthetic(out_dir, config)


def _build_synthetic(out_dir: Path, config: SyntheticConfig) -> dict[str, Any]:
    from data_gen.melodies import iter_melody_refs
    from data_gen.synth.queries import make_queries

    pool = Pool(out_dir)
    start = time.perf_counter()
    songs = _fill(pool, (r.melody_id for r in iter_melody_refs("test", seed=config.seed)), config.songs,
                  config, "test-split songs")
    if len(songs) < config.songs:
        raise ValueError(f"only {len(songs)} usable test-split melodies (asked for {config.songs})")
    queried = [e["melody_id"] for e in songs]
    # queries first, so a long distractor build leaves a usable query set early
    q_dir = out_dir / QUERIES
    q_csv = q_dir / "queries.csv"
    if not q_csv.is_file():
        songs_manifest = q_dir / "songs_manifest.csv"
        write_catalogue(songs_manifest, [pool.track(e) for e in songs])
        per_track = max(1, math.ceil(config.queries / config.songs))
        make_queries(songs_manifest, q_dir, kinds=config.kinds, per_track=per_track, seed=config.seed,
                     min_s=config.min_seconds, max_s=config.max_seconds)
    distractors = _fill(
        pool, (r.melody_id for r in iter_melody_refs("all", seed=config.seed + 1, exclude_melody_ids=queried)),
        config.tracks - config.songs, config, "distractor masters")
    entries = songs + distractors
    manifest = catalogue_dir(out_dir, config.tracks) / "manifest.csv"
    write_catalogue(manifest, [pool.track(e) for e in entries])
    render_times = [e["render_s"] for e in pool.entries.values() if "render_s" in e]
    seconds = [e["seconds"] for e in entries]
    summary = {
        "catalogue": str(manifest), "queries": str(q_csv), "tracks": len(entries), "songs_queried": len(songs),
        "render_seconds_per_track_mean": round(sum(render_times) / len(render_times), 3) if render_times else None,
        "master_seconds_mean": round(sum(seconds) / len(seconds), 1),
        "skipped_melodies": sum(1 for e in pool.entries.values() if "skipped" in e),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    write_info(catalogue_dir(out_dir, config.tracks), {"benchset": "synthetic", "config": asdict(config),
                                                       **summary})
    log.info("synthetic benchset: %s", summary)
    return summary


def rendered_distractors(bench_dir: Path, tracks: int, *, build_missing: bool = True, workers: int = 1) -> Path:
    """The manifest of the first `tracks` rendered masters of BENCH/synthetic (catalogue_<N>), built
    with `build_synthetic` when missing (incremental: it reuses every master already rendered).
    These pad the real sets so that a right answer has to beat N wrong ones."""
    root = Path(bench_dir) / "synthetic"
    manifest = catalogue_dir(root, tracks) / "manifest.csv"
    if not manifest.is_file():
        if not build_missing:
            raise FileNotFoundError(f"{manifest} not built (run: earworm benchset synthetic --out {root} "
                                    f"--tracks {tracks})")
        build_synthetic(root, SyntheticConfig(tracks=tracks, songs=min(100, tracks), workers=workers))
    return manifest
