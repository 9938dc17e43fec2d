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
from typing import TYPE_CHECKING, Literal

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

if TYPE_CHECKING:
    from data_gen.render import RenderConfig

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
    from data_gen.band_names import band_name
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


def _check_arguments(size: int | None, audio_format: str, melodies: Iterable[Melody] | None,
                     sung_lead_share: float) -> None:
    if not 0.0 <= sung_lead_share <= 1.0:
        raise ValueError(f"sung_lead_share must be within [0, 1], got {sung_lead_share}")
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {audio_format!r}; use one of {', '.join(AUDIO_FORMATS)}")
    if melodies is None and size is None:
        raise ValueError("give a catalogue size (or the melodies to render)")
    if size is not None and size < 1:
        raise ValueError(f"the catalogue size must be at least 1, got {size}")


@dataclass(frozen=True)
class _CatalogueFolder:
    """A catalogue folder being built: where each track's files go, and the tracks a previous
    build left there (catalogue_info.jsonl) that this one can reuse."""

    out: Path
    audio_format: str
    render_config: RenderConfig
    previous: dict[str, dict]

    @staticmethod
    def open(out_dir: str | os.PathLike[str], audio_format: str, render_config: RenderConfig) -> _CatalogueFolder:
        out = Path(out_dir).resolve()
        (out / "audio").mkdir(parents=True, exist_ok=True)
        (out / "midi").mkdir(parents=True, exist_ok=True)
        return _CatalogueFolder(out, audio_format, render_config, _read_info(out / INFO_NAME))

    @property
    def info_path(self) -> Path:
        return self.out / INFO_NAME

    def files_of(self, track_id: str) -> tuple[Path, Path]:
        return self.out / "audio" / f"{track_id}.{self.audio_format}", self.out / "midi" / f"{track_id}.mid"

    def reusable(self, melody_id: str, track_seed: int) -> dict | None:
        """The previous build's entry of this track if it was rendered the same way and its files exist."""
        from data_gen.render import RENDER_VERSION, SungLead

        entry = self.previous.get(track_id_for(melody_id))
        if not entry or entry.get("seed") != track_seed or entry.get("format") != self.audio_format:
            return None
        if entry.get("render_version") != RENDER_VERSION:
            return None
        sung = SungLead.draw(track_seed, self.render_config) is not None
        if entry.get("lead_voice", "instrument") != ("sung" if sung else "instrument"):
            return None  # rendered with another sung-lead share
        audio, midi = self.files_of(entry["track_id"])
        return entry if audio.is_file() and midi.is_file() else None

    def write_track(self, info: dict, audio: bytes, midi: bytes, info_file) -> None:
        """A rendered track's files, then its line of catalogue_info.jsonl (flushed: resumable)."""
        audio_path, midi_path = self.files_of(info["track_id"])
        _atomic_write(audio_path, audio)
        _atomic_write(midi_path, midi)
        info_file.write(json.dumps(info, sort_keys=True) + "\n")
        info_file.flush()

    def write_manifest(self, accepted: list[dict]) -> Path:
        """manifest.csv of the accepted tracks, and catalogue_info.jsonl rewritten to just those."""
        tracks = []
        for info in accepted:
            audio_path, midi_path = self.files_of(info["track_id"])
            tracks.append(manifest_lib.Track(info["track_id"], info["title"], info["artist"], audio_path, midi_path))
        manifest_path = self.out / MANIFEST_NAME
        manifest_lib.write_catalogue(manifest_path, tracks)
        _atomic_write(self.info_path,
                      "".join(json.dumps(i, sort_keys=True) + "\n" for i in accepted).encode("utf-8"))
        return manifest_path


class _InFlight:
    """The candidate tracks in acceptance order: reused entries, renders done in this process
    (one worker) or running in a pool of `workers` processes (started once something needs rendering)."""

    def __init__(self, candidates: Iterator[MelodyRef | Melody], folder: _CatalogueFolder, seed: int,
                 workers: int, min_notes: int, min_seconds: float) -> None:
        self.candidates, self.folder, self.seed, self.workers = candidates, folder, seed, workers
        self.min_notes, self.min_seconds = min_notes, min_seconds
        self.pending: deque[tuple[str, object]] = deque()
        self.exhausted = False
        self.pool = None

    def fill(self, wanted: float) -> None:
        """Start candidates until `wanted` tracks are in flight (or the candidates run out)."""
        while not self.exhausted and len(self.pending) < wanted:
            cand = next(self.candidates, None)
            if cand is None:
                self.exhausted = True
                break
            track_seed = track_seed_for(self.seed, cand.melody_id)
            entry = self.folder.reusable(cand.melody_id, track_seed)
            if entry is not None:
                self.pending.append(("reuse", entry))
                continue
            task = (cand, track_seed, self.folder.audio_format, self.min_notes, self.min_seconds,
                    self.folder.render_config)
            if self.workers == 1:
                self.pending.append(("done", _render_task(task)))
                continue
            if self.pool is None:  # only once something has to be rendered
                self.pool = _start_pool(self.workers)
            self.pending.append(("async", self.pool.apply_async(_render_task, (task,))))

    def next(self) -> tuple[str, object] | None:
        """("reuse", entry) or ("render", `_render_task` result) of the next track; None when none is left."""
        if not self.pending:
            return None
        kind, item = self.pending.popleft()
        if kind == "reuse":
            return kind, item
        return "render", item.get() if kind == "async" else item  # type: ignore[union-attr]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


@dataclass
class _Counts:
    rendered: int = 0
    reused: int = 0
    skipped: int = 0


def _accept_tracks(in_flight: _InFlight, folder: _CatalogueFolder, target: float, window: int, bar,
                   info_file) -> tuple[list[dict], _Counts]:
    """Accept tracks in candidate order until `target` (reusing, or rendering with up to `window`
    renders in flight, but no more than could still be needed); unusable melodies are skipped."""
    accepted: list[dict] = []
    counts = _Counts()
    while len(accepted) < target:
        in_flight.fill(min(window, target - len(accepted)))
        nxt = in_flight.next()
        if nxt is None:
            break
        kind, item = nxt
        if kind == "reuse":
            accepted.append(item)  # type: ignore[arg-type]
            counts.reused += 1
            bar.update(1)
            continue
        if item[0] == "skip":  # type: ignore[index]
            counts.skipped += 1
            logger.info("skipping %s: %s", item[1], item[2])  # type: ignore[index]
            continue
        _, _melody_id, info, audio, midi = item  # type: ignore[misc]
        folder.write_track(info, audio, midi, info_file)
        accepted.append(info)
        counts.rendered += 1
        bar.update(1)
    return accepted, counts


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
    from dataclasses import replace

    from tqdm import tqdm

    from data_gen.render import CONFIG as RENDER_CONFIG, find_soundfont

    _check_arguments(size, audio_format, melodies, sung_lead_share)
    find_soundfont()  # fail early and clearly, not once per track
    started = time.perf_counter()
    folder = _CatalogueFolder.open(out_dir, audio_format, replace(RENDER_CONFIG, sung_lead_share=sung_lead_share))
    workers = max(1, int(workers or os.cpu_count() or 1))
    target = size if size is not None else float("inf")
    candidates = _candidates(split, seed, melodies, set(exclude_melody_ids))
    in_flight = _InFlight(candidates, folder, seed, workers, min_notes, min_seconds)
    bar = tqdm(total=None if size is None else size, unit="track", desc="catalogue", disable=not progress)
    info_file = folder.info_path.open("a", encoding="utf-8")
    try:
        accepted, counts = _accept_tracks(in_flight, folder, target, workers * CONFIG.tasks_per_worker, bar,
                                          info_file)
    finally:
        info_file.close()
        bar.close()
        in_flight.close()
    if not accepted:
        raise CatalogueError("no usable melody to render (check the split and the exclusions)")
    if size is not None and len(accepted) < size:
        logger.warning("only %d usable melodies for a catalogue of %d", len(accepted), size)

    manifest = folder.write_manifest(accepted)
    report = CatalogueReport(
        manifest=manifest, tracks=len(accepted), rendered=counts.rendered, reused=counts.reused,
        skipped=counts.skipped, seconds=time.perf_counter() - started,
    )
    logger.info("catalogue %s: %d tracks (%d rendered, %d reused, %d melodies skipped) in %.1f s",
                folder.out, report.tracks, report.rendered, report.reused, report.skipped, report.seconds)
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
