"""Pipeline 2 (`earworm index`): embed a catalogue's masters and build the ScaNN window index.

    catalogue manifest (data_gen.manifest.read_catalogue) -> Track records
      | EmbedTracks    decode (load_audio rules, at most MAX_MASTER_SECONDS), embed the overlapping
                       master windows (every IndexConfig.master_hop_seconds, recorded in the index's
                       metadata) in cross-track batches with the exported encoder
                       (serving.embedder.Embedder.embed_masters, as the in-process indexer does:
                       front-end once per master; loaded once per worker in DoFn.setup)
      | WriteEmbeddingShards   WORK/embeddings/embeddings-IIIII-of-NNNNN.npz
                       (track_id [t] str, track_row int32 [n], offset_s float32 [n],
                        embedding float32 [n, dim]; windows sorted by (track, offset))
    bad tracks -> WORK/errors-00000-of-00001.jsonl ({"track_id","stage","reason","error"})
    driver: read the shards one at a time into a float32 spill file beside OUT (`_spill_shards`:
            the whole matrix is never in anonymous memory) -> serving.index.WindowIndex.build from
            its memmap (or WindowIndex.load(OLD).add for a new release, without re-embedding the old
            catalogue) -> save to OUT (serving.index layout) + OUT/errors-00000-of-00001.jsonl.

WORK is a scratch folder (default: `.<OUT name>.work` beside OUT; any Beam filesystem on a
distributed runner); it is removed after a successful run unless `keep_work`.
The library entry point is `build_index(catalogue_manifest, model_dir, out_dir, add_to=...)`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipelines.options import IndexConfig, with_default_runner_args
from beam_pipelines.transforms import ERRORS, MAIN, _log_unexpected, _Progress, _read, clean_reason
from data_gen import constants as C

log = logging.getLogger(__name__)

NAMESPACE = "index"
SHARD_PREFIX = "embeddings"
SHARD_SUFFIX = ".npz"
ERRORS_NAME = "errors"


class IndexPipelineError(RuntimeError):
    """The catalogue cannot be indexed (no usable track, model mismatch with the old index...)."""


@dataclass(frozen=True)
class TrackRef:
    """What a worker needs to embed one track: its manifest row (order), id and audio path."""

    row: int
    track_id: str
    path: str


@dataclass(eq=False)
class TrackEmbeddings:
    row: int
    track_id: str
    embeddings: np.ndarray  # [n, dim] float32
    offsets_s: np.ndarray  # [n] float32
    seconds: float


def _error(track_id: str, stage: str, reason: str, exc: BaseException | None = None) -> dict:
    return {"track_id": track_id, "stage": stage, "reason": clean_reason(reason),
            "error": type(exc).__name__ if exc is not None else ""}


_EMBEDDERS: dict[tuple, object] = {}
_EMBEDDERS_LOCK = threading.Lock()


def shared_embedder(model_dir: str, batch_size: int):
    """One Embedder per (model, batch size) per worker process."""
    key = (model_dir, batch_size)
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            from serving.embedder import Embedder

            _EMBEDDERS[key] = Embedder(model_dir, batch_size=batch_size)
        return _EMBEDDERS[key]


class DecodeTrackFn(beam.DoFn):
    """TrackRef -> (TrackRef, audio [samples] float32, seconds) | errors. The windows are not cut
    here: the embedder slices them from one front-end pass over the whole master (counted here, at
    `master_hop_seconds`)."""

    def __init__(self, master_hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS) -> None:
        from serving.embedder import master_hop_samples

        self.hop = master_hop_samples(master_hop_seconds)  # the embedder's own conversion and check
        self.decoded = Metrics.counter(NAMESPACE, "tracks_decoded")
        self.audio_ms = Metrics.counter(NAMESPACE, "audio_ms")
        self.windows = Metrics.counter(NAMESPACE, "windows")
        self.err = Metrics.counter(NAMESPACE, "errors_decode")

    def process(self, t: TrackRef) -> Iterator:
        from data_gen.audio import AudioError
        from data_gen.windows import window_starts
        from serving.indexer import load_master

        try:
            audio = load_master(_read(t.path))
        except Exception as e:  # noqa: BLE001 - a bad track is reported, never fails the run
            _log_unexpected(e, (AudioError, FileNotFoundError, OSError), t.track_id)
            self.err.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, _error(t.track_id, "decode", f"{t.path}: {e}", e))
            return
        self.decoded.inc()
        self.audio_ms.inc(int(round(1000 * audio.shape[0] / C.SAMPLE_RATE)))
        self.windows.inc(int(window_starts(audio.shape[0], self.hop).size))
        yield t, audio, audio.shape[0] / C.SAMPLE_RATE


class EmbedBatchFn(beam.DoFn):
    """[(TrackRef, audio, seconds)] -> TrackEmbeddings per track | errors, with
    `Embedder.embed_masters` (the in-process indexer's path): the front-end once per master, the
    body over every window of the batch together (cross-track batching), windows every
    `master_hop_seconds`. A failing batch is retried track by track, so one bad track does not take
    the others down."""

    def __init__(self, model_dir: str, embed_batch: int, log_every: int,
                 master_hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS):
        self.model_dir, self.embed_batch, self.log_every = model_dir, embed_batch, log_every
        self.hop_s = float(master_hop_seconds)
        self.embedded = Metrics.counter(NAMESPACE, "tracks_embedded")
        self.err = Metrics.counter(NAMESPACE, "errors_embed")

    def setup(self) -> None:
        self.embedder = shared_embedder(self.model_dir, self.embed_batch)
        self.progress = _Progress("embed", self.log_every)

    def process(self, batch: Sequence[tuple]) -> Iterator:
        try:
            embedded = self.embedder.embed_masters([audio for _, audio, _ in batch], self.hop_s)
        except Exception as e:  # noqa: BLE001 - a batch failing: retry track by track
            log.warning("batch of %d tracks failed (%s); embedding them one by one", len(batch), e)
            yield from self._one_by_one(batch)
            return
        for (t, _, seconds), (emb, offsets) in zip(batch, embedded):
            yield self._ok(t, emb, offsets, seconds)

    def _ok(self, t: TrackRef, emb: np.ndarray, offsets: np.ndarray, seconds: float) -> TrackEmbeddings:
        self.embedded.inc()
        self.progress.tick(seconds)
        return TrackEmbeddings(t.row, t.track_id, emb.astype(np.float32), offsets.astype(np.float32),
                               seconds)

    def _one_by_one(self, batch: Sequence[tuple]) -> Iterator:
        for t, audio, seconds in batch:
            try:
                yield self._ok(t, *self.embedder.embed_master(audio, self.hop_s), seconds)
            except Exception as e:  # noqa: BLE001
                _log_unexpected(e, (ValueError, RuntimeError), t.track_id)
                self.err.inc()
                yield beam.pvalue.TaggedOutput(ERRORS, _error(t.track_id, "embed", str(e), e))


class EmbedTracks(beam.PTransform):
    """PCollection[TrackRef] -> outputs (main: TrackEmbeddings, errors: error records)."""

    def __init__(self, model_dir: str, batch_tracks: int = 8, embed_batch: int = 64,
                 log_every: int = 25, master_hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS):
        super().__init__()
        self.model_dir, self.batch_tracks = str(model_dir), batch_tracks
        self.embed_batch, self.log_every = embed_batch, log_every
        self.master_hop_seconds = float(master_hop_seconds)

    def expand(self, tracks):
        hop = self.master_hop_seconds
        decoded = tracks | "Decode" >> beam.ParDo(DecodeTrackFn(hop)).with_outputs(ERRORS, main=MAIN)
        embedded = (
            decoded.main
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_tracks)
            | "Embed" >> beam.ParDo(EmbedBatchFn(self.model_dir, self.embed_batch, self.log_every, hop))
            .with_outputs(ERRORS, main=MAIN)
        )
        errors = (decoded.errors, embedded.errors) | "Errors" >> beam.Flatten()
        return {MAIN: embedded.main, ERRORS: errors}


def shard_of(row: int, tracks_per_shard: int) -> int:
    """Tracks are sharded by manifest row: shard i holds rows [i * tps, (i + 1) * tps)."""
    return row // max(1, tracks_per_shard)


class _WriteEmbeddingShardFn(beam.DoFn):
    def __init__(self, work: str, count: int):
        self.work, self.count = work, count
        self.written = Metrics.counter(NAMESPACE, "windows_written")

    def process(self, item) -> Iterator[str]:
        from beam_pipelines.outputs import join, shard_name, write_bytes

        index, items = item
        items = sorted(items, key=lambda e: e.row)
        rows = [e.row for e in items]
        buf = io.BytesIO()
        np.savez(
            buf,
            track_id=np.array([e.track_id for e in items], dtype=str),
            row=np.array(rows, dtype=np.int64),
            track_row=np.concatenate([np.full(e.offsets_s.shape[0], i, np.int32)
                                      for i, e in enumerate(items)]),
            offset_s=np.concatenate([e.offsets_s for e in items]).astype(np.float32),
            embedding=np.concatenate([e.embeddings for e in items]).astype(np.float32),
        )
        path = join(self.work, "embeddings", shard_name(SHARD_PREFIX, index, self.count, SHARD_SUFFIX))
        write_bytes(path, buf.getvalue())
        self.written.inc(sum(e.offsets_s.shape[0] for e in items))
        yield path


class WriteEmbeddingShards(beam.PTransform):
    """PCollection[TrackEmbeddings] -> `<work>/embeddings/embeddings-IIIII-of-NNNNN.npz`.

    npz arrays: track_id [t] (this shard's tracks, by manifest row), row int64 [t] (manifest row),
    track_row int32 [n] (index into this shard's track_id), offset_s float32 [n],
    embedding float32 [n, dim]."""

    def __init__(self, work: str, count: int, tracks_per_shard: int):
        super().__init__()
        self.work, self.count, self.tps = work, count, tracks_per_shard

    def expand(self, embedded):
        tps = self.tps
        return (
            embedded
            | "KeyByShard" >> beam.Map(lambda e: (shard_of(e.row, tps), e))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteEmbeddingShardFn(self.work, self.count))
        )


class WriteTrackErrors(beam.PTransform):
    """PCollection[error record] -> `<work>/errors-00000-of-00001.jsonl` sorted by track id."""

    def __init__(self, work: str):
        super().__init__()
        self.work = work

    def expand(self, errors):
        work = self.work

        def write(item) -> int:
            from beam_pipelines.outputs import join, shard_name, write_jsonl

            rows = sorted(item[1], key=lambda r: (r["track_id"], r["stage"]))
            for r in rows:
                log.warning("error: track %s [%s] %s", r["track_id"], r["stage"], r["reason"])
            return write_jsonl(join(work, shard_name(ERRORS_NAME, 0, 1, ".jsonl")), rows)

        return (errors | "Key" >> beam.Map(lambda e: (None, e)) | "Group" >> beam.GroupByKey()
                | "Write" >> beam.Map(write))


@dataclass
class IndexSummary:
    out_dir: str
    index_version: str
    model_version: str
    tracks_in: int
    tracks_indexed: int
    tracks_total: int
    windows_added: int
    windows_total: int
    errors: int
    kind: str
    recall_at_10: float | None
    audio_seconds: float
    embed_wall_seconds: float
    build_seconds: float
    wall_seconds: float
    counters: dict[str, int] = field(default_factory=dict)
    added_to: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        recall = "n/a" if self.recall_at_10 is None else f"{self.recall_at_10:.3f}"
        return "\n".join([
            f"index summary ({self.out_dir})",
            f"  index {self.index_version} (model {self.model_version}), searcher {self.kind}, "
            f"recall@10 vs brute force {recall}",
            f"  tracks: {self.tracks_in} in, {self.tracks_indexed} indexed, {self.errors} errors; "
            f"index now {self.tracks_total} tracks / {self.windows_total} windows"
            + (f" (added to {self.added_to})" if self.added_to else ""),
            f"  audio {self.audio_seconds:.0f} s; embedding pipeline {self.embed_wall_seconds:.1f} s "
            f"({self.audio_seconds / max(self.embed_wall_seconds, 1e-9):.1f} s of audio per second); "
            f"searcher build {self.build_seconds:.1f} s; total {self.wall_seconds:.1f} s",
        ])


def _default_work_dir(out_dir: str) -> str:
    p = Path(out_dir).resolve()
    return str(p.parent / f".{p.name}.work")


def _spill_dir(out_dir: str) -> tempfile.TemporaryDirectory:
    """A local scratch folder beside the index (same disk, which must hold the index anyway) for the
    driver's float32 spill of the embeddings; removed when the index is saved (or the build fails)."""
    p = Path(out_dir).resolve()
    p.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{p.name}.spill-", dir=p.parent)


@dataclass
class ShardWindows:
    """Every embedding shard's windows, in manifest-row order: what the driver builds the index from."""

    tracks: list[tuple[int, str]]
    """(manifest row, track_id) of each embedded track, in row order."""
    embeddings: np.ndarray
    """float32 [n, dim]: a read-only memmap of a file on local disk (empty array: no window)."""
    track_rows: np.ndarray
    """int32 [n]: row into `tracks`."""
    offsets_s: np.ndarray
    """float32 [n]."""


def _spill_shards(work: str, spill_dir: str | os.PathLike[str]) -> ShardWindows:
    """Read the shards one at a time (`_iter_shards`) and append their embeddings to a float32 file in
    `spill_dir` (local disk), mapped back read-only: the whole matrix is never in anonymous memory, only
    one shard (the index build reads the memmap slice by slice). Windows stay grouped by track in
    manifest-row order."""
    from serving.vectors import Float32Spill

    spill = Float32Spill(Path(spill_dir) / "embeddings.f32")
    tracks: list[tuple[int, str]] = []
    rows, offs = [], []
    for z in _iter_shards(work):
        shard_rows = [int(r) for r in z["row"].tolist()]
        if not shard_rows:
            continue
        if shard_rows != sorted(shard_rows) or (tracks and shard_rows[0] <= tracks[-1][0]):
            raise IndexPipelineError("embedding shards overlap or are out of order")
        local = z["track_row"].astype(np.int32)
        order = np.argsort(local, kind="stable")  # the writer's order already: a no-op permutation
        spill.append(z["embedding"][order])
        rows.append(local[order] + np.int32(len(tracks)))
        offs.append(z["offset_s"][order].astype(np.float32))
        tracks.extend(zip(shard_rows, (str(t) for t in z["track_id"].tolist())))
    embeddings = spill.finish()
    if not rows:
        return ShardWindows([], embeddings, np.zeros(0, np.int32), np.zeros(0, np.float32))
    return ShardWindows(tracks, embeddings, np.concatenate(rows), np.concatenate(offs))


def _counters(result) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = {}
    try:
        q = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    except (NotImplementedError, AttributeError):
        return out
    for c in q["counters"]:
        v = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(v or 0)
    return out


class WriteMilvusWindowsFn(beam.DoFn):
    """TrackEmbeddings -> its windows upserted into a Milvus collection from the worker (batched
    across tracks up to `batch` windows; ids are deterministic, so a retried bundle rewrites the same
    rows) -> {"row", "track_id", "windows"} for the driver's track table. Collection row of a track =
    first_row + its manifest row."""

    def __init__(self, uri: str, collection: str, first_row: int, batch: int = 8192):
        self.uri, self.collection, self.first_row, self.batch = uri, collection, first_row, batch
        self.written = Metrics.counter(NAMESPACE, "windows_written")

    def setup(self) -> None:
        from serving.milvus_index import _client

        self.client = _client(self.uri)
        self._buf: list[dict] = []

    def start_bundle(self) -> None:
        self._buf = []

    def process(self, e: TrackEmbeddings) -> Iterator[dict]:
        from serving.milvus_index import _window_rows

        n = int(e.offsets_s.shape[0])
        row = self.first_row + int(e.row)
        self._buf.extend(_window_rows(np.full(n, row, np.int64), e.offsets_s, e.embeddings, {}))
        if len(self._buf) >= self.batch:
            self._flush()
        yield {"row": row, "track_id": e.track_id, "windows": n}

    def _flush(self) -> None:
        if self._buf:
            self.client.upsert(self.collection, self._buf)
            self.written.inc(len(self._buf))
            self._buf = []

    def finish_bundle(self) -> None:
        self._flush()

    def teardown(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()


def _iter_shards(work: str) -> Iterator[dict]:
    """The embedding shards one at a time (memory: one shard), in manifest-row order."""
    from beam_pipelines.outputs import _list, join, read_bytes

    paths = _list(join(work, "embeddings", f"{SHARD_PREFIX}-*{SHARD_SUFFIX}"))
    for p in sorted(paths):
        with np.load(io.BytesIO(read_bytes(p))) as z:
            yield {k: z[k] for k in z.files}


def _run_index_milvus(config: IndexConfig, runner_args: Sequence[str], work_dir: str | None, keep_work: bool,
                      milvus_config) -> IndexSummary:
    """Pipeline 2 into a Milvus collection. A server URI: the workers write the windows
    (WriteMilvusWindowsFn). A Milvus Lite file (one process at a time): the workers write embedding
    shards and the driver inserts them shard by shard. The driver then writes the track table and the
    metadata (a new version) last."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines import outputs
    from data_gen.manifest import read_catalogue
    from serving.embedder import ModelMetadata
    from serving.milvus_index import MilvusIndexConfig, MilvusWriter, is_lite_uri, open_release_writer
    from serving.window_store import TrackInfo

    t0 = time.monotonic()
    uri = str(config.milvus_uri or "")
    if not uri:
        raise IndexPipelineError("--backend milvus needs --uri")
    collection = config.add_to or config.milvus_collection
    tracks = read_catalogue(config.catalogue)
    if config.limit is not None:
        tracks = tracks[: config.limit]
    model = ModelMetadata.read(config.model_dir)
    if config.add_to:
        writer, first_row = open_release_writer(uri, collection, model_version=model.version,
                                                track_ids=[t.track_id for t in tracks],
                                                master_hop_seconds=config.master_hop_seconds)
    else:
        writer = MilvusWriter(uri, collection, dim=model.embedding_dim, model_version=model.version,
                              config=milvus_config or MilvusIndexConfig(), overwrite=config.replace)
        first_row = 0
    lite = is_lite_uri(uri)
    driver_writes = not config.milvus_worker_writes if config.milvus_worker_writes is not None else lite
    work = work_dir or _default_work_dir(f"{Path(uri).name if lite else 'milvus'}-{collection}")
    outputs.delete_tree(work)
    FileSystems.mkdirs(work)
    count = config.num_shards(len(tracks))
    refs = [TrackRef(i, t.track_id, str(t.path)) for i, t in enumerate(tracks)]
    runner = with_default_runner_args(runner_args)
    log.info("index: %d tracks from %s into Milvus %s collection %s (%s), model %s", len(refs), config.catalogue,
             uri, collection, "driver inserts shards" if driver_writes else "workers write", model.version)
    pipeline = beam.Pipeline(options=PipelineOptions(list(runner.argv)))
    embedded = (
        pipeline
        | "Tracks" >> beam.Create(refs)
        | "Distribute" >> beam.Reshuffle()
        | "EmbedTracks" >> EmbedTracks(config.model_dir, config.batch_tracks, config.embed_batch, config.log_every,
                                       config.master_hop_seconds)
    )
    tracks_file = outputs.join(work, "milvus_tracks.jsonl")
    if driver_writes:
        embedded[MAIN] | "WriteShards" >> WriteEmbeddingShards(work, count, config.tracks_per_shard)
    else:
        batch = writer.config.insert_batch
        (embedded[MAIN]
         | "WriteMilvus" >> beam.ParDo(WriteMilvusWindowsFn(uri, collection, first_row, batch))
         | "KeyTracks" >> beam.Map(lambda r: (None, r)) | "GroupTracks" >> beam.GroupByKey()
         | "WriteTracks" >> beam.Map(lambda kv: outputs.write_jsonl(tracks_file, sorted(kv[1], key=lambda r: r["row"]))))
    embedded[ERRORS] | "WriteErrors" >> WriteTrackErrors(work)
    result = pipeline.run()
    result.wait_until_finish()
    t_embed = time.monotonic() - t0
    counters = _counters(result)
    by_id = {t.track_id: t for t in tracks}
    done: list[tuple[int, str]] = []
    counts: dict[int, int] = {}
    t1 = time.monotonic()
    if driver_writes:
        for z in _iter_shards(work):
            rows = first_row + z["row"].astype(np.int64)
            writer.write(rows[z["track_row"]], z["offset_s"], z["embedding"])
            done.extend((int(r), str(tid)) for r, tid in zip(rows.tolist(), z["track_id"].tolist()))
    elif FileSystems.exists(tracks_file):
        for line in outputs.read_bytes(tracks_file).decode().splitlines():
            r = json.loads(line)
            done.append((int(r["row"]), str(r["track_id"])))
            counts[int(r["row"])] = int(r["windows"])
        writer.windows_written = sum(counts.values())
    errors_path = outputs.join(work, outputs.shard_name(ERRORS_NAME, 0, 1, ".jsonl"))
    errors = ([json.loads(x) for x in outputs.read_bytes(errors_path).decode().splitlines() if x.strip()]
              if FileSystems.exists(errors_path) else [])
    if not done:
        raise IndexPipelineError(
            f"no track of {config.catalogue} could be embedded ({len(errors)} errors, first: "
            f"{errors[0]['reason'] if errors else 'none'})")
    writer.add_tracks((row, TrackInfo(tid, by_id[tid].title, by_id[tid].artist)) for row, tid in sorted(done))
    extra = {"pipeline": {"catalogue": str(Path(config.catalogue).resolve()), "tracks_in": len(tracks),
                          "tracks_indexed": len(done), "errors": len(errors), "embed_seconds": round(t_embed, 3)},
             "master_hop_seconds": config.master_hop_seconds}
    md = writer.finish(extra, windows_per_track=counts or None)
    t_build = time.monotonic() - t1
    writer.client.close()
    if not keep_work:
        outputs.delete_tree(work)
    return IndexSummary(
        out_dir=f"{uri} collection {collection}", index_version=md.version, model_version=md.model_version,
        tracks_in=len(tracks), tracks_indexed=len(done), tracks_total=md.num_tracks,
        windows_added=int(writer.windows_written), windows_total=md.num_windows, errors=len(errors),
        kind=str(md.config.get("kind")), recall_at_10=md.recall_at_10,
        audio_seconds=counters.get("audio_ms", 0) / 1000.0, embed_wall_seconds=t_embed,
        build_seconds=t_build, wall_seconds=time.monotonic() - t0, counters=counters,
        added_to=collection if config.add_to else None,
    )


def run_index(config: IndexConfig, runner_args: Sequence[str] = (), *, work_dir: str | None = None,
              keep_work: bool = False, searcher_config=None, milvus_config=None) -> IndexSummary:
    """Run pipeline 2 and save the index into `config.out_dir` (or, with `config.backend ==
    "milvus"`, write it to the Milvus collection; `milvus_config`: serving.milvus_index
    MilvusIndexConfig). Returns the summary."""
    if config.backend == "milvus":
        return _run_index_milvus(config, runner_args, work_dir, keep_work, milvus_config)
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines import outputs
    from data_gen.manifest import read_catalogue
    from serving.embedder import ModelMetadata
    from serving.index import TrackInfo, WindowIndex

    t0 = time.monotonic()
    tracks = read_catalogue(config.catalogue)
    if config.limit is not None:
        tracks = tracks[: config.limit]
    model = ModelMetadata.read(config.model_dir)  # fail fast on a bad model dir (no TF needed)
    old = None
    if config.add_to:
        old = WindowIndex.load(config.add_to)
        if old.metadata.model_version != model.version:
            raise IndexPipelineError(
                f"{config.add_to} holds embeddings of model {old.metadata.model_version!r} but "
                f"{config.model_dir} is {model.version!r}; rebuild the index instead of adding to it")
        from serving.index import check_master_hop

        check_master_hop(old.metadata.master_hop_seconds, config.master_hop_seconds, str(config.add_to))
        clash = sorted({t.track_id for t in tracks} & {t.track_id for t in old.tracks})
        if clash:
            raise IndexPipelineError(
                f"{len(clash)} track id(s) of {config.catalogue} are already in {config.add_to} "
                f"(e.g. {', '.join(clash[:3])}); a release may only add new tracks")

    work = work_dir or _default_work_dir(config.out_dir)
    outputs.delete_tree(work)
    from apache_beam.io.filesystems import FileSystems

    FileSystems.mkdirs(work)
    count = config.num_shards(len(tracks))
    refs = [TrackRef(i, t.track_id, str(t.path)) for i, t in enumerate(tracks)]
    runner = with_default_runner_args(runner_args)
    log.info("index: %d tracks from %s, %d shard(s), model %s, runner flags %s", len(refs),
             config.catalogue, count, model.version, " ".join(runner.argv))

    pipeline = beam.Pipeline(options=PipelineOptions(list(runner.argv)))
    embedded = (
        pipeline
        | "Tracks" >> beam.Create(refs)
        | "Distribute" >> beam.Reshuffle()
        | "EmbedTracks" >> EmbedTracks(config.model_dir, config.batch_tracks, config.embed_batch,
                                       config.log_every, config.master_hop_seconds)
    )
    embedded[MAIN] | "WriteShards" >> WriteEmbeddingShards(work, count, config.tracks_per_shard)
    embedded[ERRORS] | "WriteErrors" >> WriteTrackErrors(work)
    result = pipeline.run()
    result.wait_until_finish()
    t_embed = time.monotonic() - t0
    counters = _counters(result)

    errors_path = outputs.join(work, outputs.shard_name(ERRORS_NAME, 0, 1, ".jsonl"))
    if not FileSystems.exists(errors_path):
        outputs.write_bytes(errors_path, b"")
    errors = [json.loads(x) for x in outputs.read_bytes(errors_path).decode().splitlines() if x.strip()]
    by_id = {t.track_id: t for t in tracks}
    with _spill_dir(config.out_dir) as spill:
        shards = _spill_shards(work, spill)
        done = shards.tracks
        if not done:
            raise IndexPipelineError(
                f"no track of {config.catalogue} could be embedded ({len(errors)} errors, first: "
                f"{errors[0]['reason'] if errors else 'none'})")
        infos = [TrackInfo(tid, by_id[tid].title, by_id[tid].artist) for _, tid in done]
        extra = {"pipeline": {"catalogue": str(Path(config.catalogue).resolve()),
                              "tracks_in": len(tracks), "tracks_indexed": len(done),
                              "errors": len(errors), "embed_seconds": round(t_embed, 3)},
                 "master_hop_seconds": config.master_hop_seconds}
        t1 = time.monotonic()
        if old is not None:
            index = old.add(shards.embeddings, shards.track_rows, shards.offsets_s, infos,
                            model_version=model.version, config=searcher_config, scratch_dir=spill,
                            master_hop_seconds=config.master_hop_seconds)
        else:
            index = WindowIndex.build(shards.embeddings, shards.track_rows, shards.offsets_s, infos,
                                      model.version, searcher_config, extra=extra)
        t_build = time.monotonic() - t1
        index.save(config.out_dir)
        md, windows_added = index.metadata, int(shards.embeddings.shape[0])
        del index, shards  # their memmaps of the spill files
    outputs.write_bytes(os.path.join(str(Path(config.out_dir).resolve()),
                                     outputs.shard_name(ERRORS_NAME, 0, 1, ".jsonl")),
                        outputs.read_bytes(errors_path))
    if not keep_work:
        outputs.delete_tree(work)
    return IndexSummary(
        out_dir=str(config.out_dir), index_version=md.version, model_version=md.model_version,
        tracks_in=len(tracks), tracks_indexed=len(done), tracks_total=md.num_tracks,
        windows_added=windows_added, windows_total=md.num_windows, errors=len(errors),
        kind=str(md.config.get("kind")), recall_at_10=md.recall_at_10,
        audio_seconds=counters.get("audio_ms", 0) / 1000.0, embed_wall_seconds=t_embed,
        build_seconds=t_build, wall_seconds=time.monotonic() - t0, counters=counters,
        added_to=str(config.add_to) if config.add_to else None,
    )


def build_index(catalogue_manifest: str | os.PathLike[str], model_dir: str | os.PathLike[str],
                out_dir: str | os.PathLike[str], *, add_to: str | os.PathLike[str] | None = None,
                runner_args: Sequence[str] = (), searcher_config: Any = None, **config: object) -> Path:
    """Library entry point (demo, evaluation): index a catalogue with an exported model and save
    it to `out_dir`; with `add_to`, the index = that index + this catalogue (old windows reused,
    not re-embedded). Extra keyword arguments are IndexConfig fields. Returns out_dir."""
    cfg = IndexConfig(catalogue=str(catalogue_manifest), model_dir=str(model_dir), out_dir=str(out_dir),
                      add_to=str(add_to) if add_to else None, **config)  # type: ignore[arg-type]
    summary = run_index(cfg, runner_args, searcher_config=searcher_config)
    log.info("%s", summary.format())
    return Path(out_dir)
