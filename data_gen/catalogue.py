"""Building a synthetic catalogue of polyphonic master recordings.

Layout of a catalogue folder:
    manifest.csv            track_id,title,artist,path,melody_midi (see data_gen.manifest)
    audio/<track_id>.flac   the master (mono, SAMPLE_RATE, 20-40 s)
    midi/<track_id>.mid     the melody alone, timed exactly as in the master
    catalogue_info.jsonl    one JSON object per track: melody_id, split, style, bpm, key shift...

Tracks are the first `size` usable melodies of a split in the seed's deterministic order (or
the melodies a caller passes). Each track's render seed is a hash of (catalogue seed, melody id),
and results are accepted in that order whatever the number of workers, so the output does not
depend on `workers`. A rerun into the same folder with the same arguments reuses finished tracks
(matched through catalogue_info.jsonl), so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from data_gen import manifest as manifest_lib
from data_gen.melodies import (
    CONFIG as MELODY_CONFIG,
    Melody,
    MelodyError,
    MelodyRef,
    check_usable,
    iter_melody_refs,
    load_melody,
    split_of,
    stable_hash,
)

logger = logging.getLogger(__name__)

AUDIO_FORMATS = {"flac": "FLAC", "wav": "WAV", "ogg": "OGG"}
MANIFEST_NAME = "manifest.csv"
INFO_NAME = "catalogue_info.jsonl"


@dataclass(frozen=True)
class CatalogueConfig:
    """Defaults of `build_catalogue` and `earworm catalogue build`."""

    size: int = 200
    split: str = "all"
    seed: int = 0
    audio_format: str = "flac"
    min_notes: int = MELODY_CONFIG.min_notes
    min_seconds: float = MELODY_CONFIG.min_seconds
    tasks_per_worker: int = 2  # renders in flight per worker


CONFIG = CatalogueConfig()


class CatalogueError(RuntimeError):
    """The catalogue could not be built (e.g. not enough usable melodies)."""


@dataclass(frozen=True)
class CatalogueReport:
    manifest: Path
    tracks: int
    rendered: int
    reused: int
    skipped: int
    seconds: float

    @property
    def seconds_per_rendered_track(self) -> float:
        return self.seconds / self.rendered if self.rendered else 0.0


def track_id_for(melody_id: str) -> str:
    """The catalogue id of a melody's master (file-name safe, stable)."""
    return melody_id


def track_seed_for(seed: int, melody_id: str) -> int:
    return stable_hash(f"render:{seed}:{melody_id}") % (2**32)


# --- Worker side ---------------------------------------------------------------------------------
def _render_task(task: tuple) -> tuple:
    """Parse (if needed) and render one track; runs in a worker process.

    Returns ("ok", melody_id, info, audio_bytes, midi_bytes) or ("skip", melody_id, reason).
    """
    from data_gen.arrangement import band_name
    from data_gen.audio import encode_audio
    from data_gen.render import RenderError, render_master

    payload, track_seed, audio_format, min_notes, min_seconds, render_config = task
    melody_id = payload.melody_id
    try:
        melody = load_melody(payload) if isinstance(payload, MelodyRef) else payload
        check_usable(melody, min_notes=min_notes, min_seconds=min_seconds)
        master = render_master(melody, track_seed, config=render_config)
    except (MelodyError, RenderError, ValueError) as e:
        return ("skip", melody_id, str(e))
    audio = encode_audio(master.audio, master.sample_rate, fmt=AUDIO_FORMATS[audio_format])
    buf = io.BytesIO()
    master.midi_melody.write(buf)
    info = dict(master.info)
    info.update({
        "track_id": track_id_for(melody_id),
        "melody_id": melody_id,
        "split": split_of(melody_id),
        "title": melody.title,
        "artist": band_name(info["style"], melody_id),
        "seed": int(track_seed),
        "format": audio_format,
        "melody_notes": len(melody.notes),
    })
    return ("ok", melody_id, info, audio, buf.getvalue())


def _worker_init() -> None:
    logging.basicConfig(level=logging.WARNING)


def _start_pool(workers: int):
    """A pool of fresh interpreters ("spawn"): forking a process that already ran FluidSynth
    (or TensorFlow, gRPC) can deadlock the children. Callers' scripts need the usual
    `if __name__ == "__main__":` guard."""
    return multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)


# --- Main side -----------------------------------------------------------------------------------
def _read_info(path: Path) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            entries[row["track_id"]] = row
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by an interrupted build
    return entries


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _candidates(
    split: str, seed: int, melodies: Iterable[Melody] | None, exclude: set[str]
) -> Iterator[MelodyRef | Melody]:
    if melodies is not None:
        seen: set[str] = set()
        for m in melodies:
            if m.melody_id in exclude or m.melody_id in seen:
                continue
            seen.add(m.melody_id)
            yield m
    else:
        yield from iter_melody_refs(split, seed=seed, exclude_melody_ids=exclude)  # type: ignore[arg-type]


def build_catalogue_report(
    out_dir: str | os.PathLike[str],
    size: int | None = CONFIG.size,
    split: Literal["train", "validation", "test", "all"] | str = CONFIG.split,
    seed: int = CONFIG.seed,
    *,
    audio_format: str = CONFIG.audio_format,
    workers: int | None = None,
    melodies: Iterable[Melody] | None = None,
    exclude_melody_ids: Iterable[str] = (),
    min_notes: int = CONFIG.min_notes,
    min_seconds: float = CONFIG.min_seconds,
    progress: bool = True,
    sung_lead_share: float = 0.0,
) -> CatalogueReport:
    """`build_catalogue`, returning counts and timing as well."""
    from tqdm import tqdm

    from dataclasses import replace

    from data_gen.render import CONFIG as RENDER_CONFIG, RENDER_VERSION, SungLead, find_soundfont

    if not 0.0 <= sung_lead_share <= 1.0:
        raise ValueError(f"sung_lead_share must be within [0, 1], got {sung_lead_share}")
    render_config = replace(RENDER_CONFIG, sung_lead_share=sung_lead_share)

    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {audio_format!r}; use one of {', '.join(AUDIO_FORMATS)}")
    if melodies is None and size is None:
        raise ValueError("give a catalogue size (or the melodies to render)")
    if size is not None and size < 1:
        raise ValueError(f"the catalogue size must be at least 1, got {size}")
    find_soundfont()  # fail early and clearly, not once per track
    started = time.perf_counter()
    out = Path(out_dir).resolve()
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "midi").mkdir(parents=True, exist_ok=True)
    info_path = out / INFO_NAME
    previous = _read_info(info_path)
    workers = max(1, int(workers or os.cpu_count() or 1))
    target = size if size is not None else float("inf")

    def files_of(track_id: str) -> tuple[Path, Path]:
        return out / "audio" / f"{track_id}.{audio_format}", out / "midi" / f"{track_id}.mid"

    def reusable(melody_id: str, track_seed: int) -> dict | None:
        entry = previous.get(track_id_for(melody_id))
        if not entry or entry.get("seed") != track_seed or entry.get("format") != audio_format:
            return None
        if entry.get("render_version") != RENDER_VERSION:
            return None
        sung = SungLead.draw(track_seed, render_config) is not None
        if entry.get("lead_voice", "instrument") != ("sung" if sung else "instrument"):
            return None  # rendered with another sung-lead share
        audio, midi = files_of(entry["track_id"])
        return entry if audio.is_file() and midi.is_file() else None

    accepted: list[dict] = []
    rendered = reused = skipped = 0
    pool = None
    window = workers * CONFIG.tasks_per_worker
    pending: deque[tuple[str, object]] = deque()
    candidates = _candidates(split, seed, melodies, set(exclude_melody_ids))
    exhausted = False
    bar = tqdm(total=None if size is None else size, unit="track", desc="catalogue", disable=not progress)
    info_file = info_path.open("a", encoding="utf-8")
    try:
        while len(accepted) < target:
            # Keep up to `window` tracks in flight, but no more than could still be needed.
            while not exhausted and len(pending) < min(window, target - len(accepted)):
                cand = next(candidates, None)
                if cand is None:
                    exhausted = True
                    break
                track_seed = track_seed_for(seed, cand.melody_id)
                entry = reusable(cand.melody_id, track_seed)
                if entry is not None:
                    pending.append(("reuse", entry))
                    continue
                task = (cand, track_seed, audio_format, min_notes, min_seconds, render_config)
                if workers == 1:
                    pending.append(("done", _render_task(task)))
                    continue
                if pool is None:  # only once something has to be rendered
                    pool = _start_pool(workers)
                pending.append(("async", pool.apply_async(_render_task, (task,))))
            if not pending:
                break
            kind, item = pending.popleft()
            if kind == "reuse":
                accepted.append(item)  # type: ignore[arg-type]
                reused += 1
                bar.update(1)
                continue
            result = item.get() if kind == "async" else item  # type: ignore[union-attr]
            if result[0] == "skip":
                skipped += 1
                logger.info("skipping %s: %s", result[1], result[2])
                continue
            _, melody_id, info, audio, midi = result
            audio_path, midi_path = files_of(info["track_id"])
            _atomic_write(audio_path, audio)
            _atomic_write(midi_path, midi)
            info_file.write(json.dumps(info, sort_keys=True) + "\n")
            info_file.flush()
            accepted.append(info)
            rendered += 1
            bar.update(1)
    finally:
        info_file.close()
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    if not accepted:
        raise CatalogueError("no usable melody to render (check the split and the exclusions)")
    if size is not None and len(accepted) < size:
        logger.warning("only %d usable melodies for a catalogue of %d", len(accepted), size)

    tracks = []
    for info in accepted:
        audio_path, midi_path = files_of(info["track_id"])
        tracks.append(manifest_lib.Track(info["track_id"], info["title"], info["artist"], audio_path, midi_path))
    manifest_path = out / MANIFEST_NAME
    manifest_lib.write_catalogue(manifest_path, tracks)
    _atomic_write(info_path, "".join(json.dumps(i, sort_keys=True) + "\n" for i in accepted).encode("utf-8"))
    report = CatalogueReport(
        manifest=manifest_path, tracks=len(accepted), rendered=rendered, reused=reused,
        skipped=skipped, seconds=time.perf_counter() - started,
    )
    logger.info("catalogue %s: %d tracks (%d rendered, %d reused, %d melodies skipped) in %.1f s",
                out, report.tracks, rendered, reused, skipped, report.seconds)
    return report


def build_catalogue(
    out_dir: str | os.PathLike[str],
    size: int | None = CONFIG.size,
    split: Literal["train", "validation", "test", "all"] | str = CONFIG.split,
    seed: int = CONFIG.seed,
    **kwargs,
) -> Path:
    """Render a catalogue into `out_dir`; returns the path of its manifest.csv.

    `size` tracks from the usable melodies of `split` in the deterministic order of `seed`
    (skipping `exclude_melody_ids`), or from `melodies` (in the given order; `split` is then
    ignored, `size=None` takes them all). Keyword arguments: audio_format ("flac"|"wav"|"ogg"),
    workers (default os.cpu_count(); 1 renders in this process), melodies, exclude_melody_ids,
    min_notes, min_seconds, progress (tqdm bar), sung_lead_share (share of tracks whose melody a
    singing voice carries instead of the General MIDI lead; default 0).
    """
    return build_catalogue_report(out_dir, size, split, seed, **kwargs).manifest
