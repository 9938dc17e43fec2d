"""Beam transforms of the training-pair pipeline (`beam_pipelines.training_pairs`).

    Snippet --DecodeAndExtract--> DecodedSnippet --SynthesizeQueries--> Rendition
            --CutPairs--> PairExample --WriteExampleShards--> OUT/.staging/<split>/pairs-*.tfrecord.gz

Each composite returns a `beam.pvalue.DoOutputsTuple` with a main output and an `errors` output
of `ErrorRecord` dicts ({"snippet_id", "stage", "reason", "error"}); a bad snippet is routed
there and the rest of the run goes on. Every stage counts what it does in Beam Metrics
(namespace `datagen`) and logs a progress line every `log_every` elements per worker.
Models (the pitch extractor) are loaded once per worker process, in `DoFn.setup`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_pipelines.pairs import TimeMap, aligned_windows, make_example
from beam_pipelines.sources import Snippet, stable_hash
from data_gen import constants as C
from data_gen.examples import PairExample

log = logging.getLogger(__name__)

NAMESPACE = "datagen"
ERRORS = "errors"
MAIN = "main"

STAGE_DECODE = "decode"
STAGE_PITCH = "pitch"
STAGE_SYNTH = "synthesize"
STAGE_CUT = "cut"

MIN_VOICED_SECONDS = 0.5
"""A performance with less voiced pitch than this has no melody to learn from."""


_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def clean_reason(reason: str) -> str:
    """Error text without per-run noise (object addresses), so error files are reproducible."""
    return _ADDRESS.sub("", reason)


def error_record(snippet_id: str, stage: str, reason: str, exc: BaseException | None = None) -> dict:
    return {"snippet_id": snippet_id, "stage": stage, "reason": clean_reason(reason),
            "error": type(exc).__name__ if exc is not None else ""}


def _log_unexpected(exc: BaseException, expected: tuple[type, ...], item_id: str) -> None:
    """Expected failures are data problems (reported in the errors output only); anything else
    is also logged with its traceback, since it may be a bug rather than a bad input."""
    if not isinstance(exc, expected):
        log.warning("unexpected %s on %s (routed to the errors output)", type(exc).__name__,
                    item_id, exc_info=exc)


def seed_for(global_seed: int, *parts: object) -> int:
    """A 31-bit seed derived from the global seed and ids (never from time or uuids)."""
    return stable_hash("seed", global_seed, *parts) % (2**31 - 1)


class _Progress:
    """Per-worker progress: a log line every `every` elements with the rate since start."""

    def __init__(self, stage: str, every: int):
        self.stage, self.every, self.n, self.audio_s = stage, max(1, every), 0, 0.0
        self.t0 = time.monotonic()

    def tick(self, audio_s: float = 0.0) -> None:
        self.n += 1
        self.audio_s += audio_s
        if self.n % self.every == 0:
            dt = time.monotonic() - self.t0
            log.info("[%s pid %d] %d done, %.0f s of audio in %.0f s (%.2fx real time)",
                     self.stage, os.getpid(), self.n, self.audio_s, dt,
                     self.audio_s / dt if dt > 0 else 0.0)


# --- models, once per worker process -----------------------------------------------------------
_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def shared_extractor(name: str, stride: int = 1):
    """The pitch extractor `name` (CREPE run every `stride` frames, see `pitch_stride`), built
    once per process and shared by every DoFn instance."""
    key = ("pitch", name, stride)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from beam_pipelines.pitch_stride import make_pipeline_extractor

            _MODELS[key] = make_pipeline_extractor(name, stride)
        return _MODELS[key]


# --- decode + pitch ------------------------------------------------------------------------------
@dataclass(eq=False)
class DecodedSnippet:
    """A performance, its master and the performance's extracted pitch.

    performance: float32 [samples]; master: float32 [samples']; pitch: data_gen.pitch.PitchTrack
    on the performance's 10 ms grid; real_kind: what the performance is (voice / sung / hum);
    time_map: performance time -> master time; transpose: performance pitch - master pitch.
    """

    snippet: Snippet
    performance: np.ndarray
    master: np.ndarray
    pitch: object
    real_kind: str
    time_map: TimeMap = field(default_factory=TimeMap)
    transpose: float = 0.0

    @property
    def seconds(self) -> float:
        return self.performance.shape[0] / C.SAMPLE_RATE


def _read(path: str) -> bytes:
    from apache_beam.io.filesystems import CompressionTypes, FileSystems

    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()
    except Exception as e:  # noqa: BLE001 - Beam wraps every filesystem error in BeamIOError
        raise FileNotFoundError(f"cannot read {path}: {e}") from e


def decode_master(paths: Sequence[str]) -> np.ndarray:
    """Decode and sum (sample-aligned) the parts of a master; peak-normalised below 1.0."""
    from data_gen.audio import AudioError, SilentAudioError, decode_audio, validate_audio

    parts = []
    for p in paths:
        try:
            parts.append(decode_audio(_read(p), max_seconds=C.MAX_MASTER_SECONDS,
                                      reject_silence=False))
        except AudioError as e:
            raise type(e)(f"master part {p}: {e}") from e
    n = max(p.shape[0] for p in parts)
    master = np.zeros(n, dtype=np.float32)
    for p in parts:
        master[: p.shape[0]] += p
    peak = float(np.max(np.abs(master)))
    if peak > 0.99:
        master *= 0.99 / peak
    try:
        return validate_audio(master)
    except SilentAudioError as e:
        raise SilentAudioError(f"the master is silent: {e}") from e


class DecodeAndExtractFn(beam.DoFn):
    """Snippet -> DecodedSnippet (main) | error record (`errors`).

    Reads the performance (or renders it from the melody MIDI with data_gen.synth.perform) and
    the master, then extracts the performance's pitch with the configured backend."""

    def __init__(self, extractor: str, seed: int, min_snippet_s: float, log_every: int = 10,
                 performance_deviations=None, pitch_stride: int = 1):
        self.extractor_name = extractor
        self.pitch_stride = pitch_stride
        self.seed = seed
        self.performance_deviations = performance_deviations
        self.min_snippet_s = min_snippet_s
        self.log_every = log_every
        self.decoded = Metrics.counter(NAMESPACE, "decoded")
        self.audio_ms = Metrics.counter(NAMESPACE, "performance_audio_ms")
        self.master_ms = Metrics.counter(NAMESPACE, "master_audio_ms")
        self.pitched = Metrics.counter(NAMESPACE, "pitch_extracted")
        self.no_voiced = Metrics.counter(NAMESPACE, "no_voiced_frames")
        self.err_decode = Metrics.counter(NAMESPACE, f"errors_{STAGE_DECODE}")
        self.err_pitch = Metrics.counter(NAMESPACE, f"errors_{STAGE_PITCH}")

    def setup(self) -> None:
        self.extractor = shared_extractor(self.extractor_name, self.pitch_stride)
        self.progress = _Progress("decode+pitch", self.log_every)

    def _performance(self, s: Snippet) -> tuple[np.ndarray, str, TimeMap, float]:
        from data_gen.audio import AudioError, decode_audio

        if s.performance:
            try:
                audio = decode_audio(_read(s.performance), min_seconds=self.min_snippet_s,
                                     max_seconds=C.MAX_MASTER_SECONDS)
            except AudioError as e:
                raise type(e)(f"{s.performance}: {e}") from e
            return audio, ("voice" if s.source == "mir1k" else "sung"), TimeMap(), 0.0
        from beam_pipelines.synthesis import render_performance

        spec = s.generator_spec
        perf = render_performance(spec["midi"], spec.get("kind", "sung"),
                                  seed_for(self.seed, s.snippet_id, "perform"),
                                  self.performance_deviations)
        from data_gen.audio import validate_audio

        validate_audio(perf.audio, min_seconds=self.min_snippet_s)
        return perf.audio, perf.kind, perf.time_map, perf.transpose

    def process(self, s: Snippet) -> Iterator:
        from data_gen.audio import AudioError

        try:
            audio, kind, tmap, transpose = self._performance(s)
            master = decode_master(s.master)
        except Exception as e:  # noqa: BLE001 - any bad input is reported, never fails the run
            _log_unexpected(e, (AudioError, FileNotFoundError, OSError, ValueError), s.snippet_id)
            self.err_decode.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(s.snippet_id, STAGE_DECODE, str(e), e))
            return
        self.decoded.inc()
        self.audio_ms.inc(int(round(1000 * audio.shape[0] / C.SAMPLE_RATE)))
        self.master_ms.inc(int(round(1000 * master.shape[0] / C.SAMPLE_RATE)))
        try:
            track = self.extractor.extract(audio)
        except Exception as e:  # noqa: BLE001
            _log_unexpected(e, (ValueError, RuntimeError), s.snippet_id)
            self.err_pitch.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(s.snippet_id, STAGE_PITCH, str(e), e))
            return
        self.pitched.inc()
        voiced_s = float(np.count_nonzero(track.voiced)) / C.PITCH_FRAME_RATE
        if voiced_s < MIN_VOICED_SECONDS:
            self.no_voiced.inc()
            self.err_pitch.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(
                s.snippet_id, STAGE_PITCH,
                f"no voiced frames: {voiced_s:.2f} s of voiced pitch, at least "
                f"{MIN_VOICED_SECONDS:g} s needed"))
            return
        self.progress.tick(audio.shape[0] / C.SAMPLE_RATE)
        yield DecodedSnippet(s, audio, master, track, kind, tmap, transpose)


class DecodeAndExtract(beam.PTransform):
    """PCollection[Snippet] -> outputs (main: DecodedSnippet, errors: error record)."""

    def __init__(self, extractor: str = "crepe", seed: int = 0,
                 min_snippet_s: float = C.WINDOW_SECONDS, log_every: int = 10,
                 performance_deviations=None, pitch_stride: int = 1):
        super().__init__()
        self.fn = DecodeAndExtractFn(extractor, seed, min_snippet_s, log_every,
                                     performance_deviations, pitch_stride)

    def expand(self, snippets):
        return snippets | beam.ParDo(self.fn).with_outputs(ERRORS, main=MAIN)


# --- synthesize queries --------------------------------------------------------------------------
@dataclass(eq=False)
class Rendition:
    """One query rendition of a snippet: audio [samples] float32, its voicing on the 10 ms grid
    [frames] bool, the master, and the query -> master time map and transposition."""

    snippet: Snippet
    kind: str
    audio: np.ndarray
    voiced: np.ndarray
    master: np.ndarray
    time_map: TimeMap
    transpose: float
    origin: str = "synth"  # "real": the performance itself


class SynthesizeQueriesFn(beam.DoFn):
    """DecodedSnippet -> Rendition per query kind (+ the real performance) | errors."""

    def __init__(self, kinds: Sequence[str], keep_real: bool, seed: int, log_every: int = 10,
                 deviations=None, rendered_deviations=None):
        self.kinds = tuple(kinds)
        self.keep_real = keep_real
        self.deviations = deviations  # for recorded performances (MIR-1K)
        self.rendered_deviations = rendered_deviations  # for rendered ones (catalogue: no tempo)
        self.seed = seed
        self.log_every = log_every
        self.synthesized = {k: Metrics.counter(NAMESPACE, f"synthesized_{k}")
                            for k in (*self.kinds, "voice", "sung", "hum")}
        self.err = Metrics.counter(NAMESPACE, f"errors_{STAGE_SYNTH}")

    def setup(self) -> None:
        self.progress = _Progress("synthesize", self.log_every)

    def process(self, d: DecodedSnippet) -> Iterator:
        from beam_pipelines.synthesis import degrade_real, synthesize_query

        sid = d.snippet.snippet_id
        rendered = bool(d.snippet.generator)
        deviations = self.rendered_deviations if rendered else self.deviations
        if self.keep_real:
            try:  # a rendered performance already went through the channel deviations
                audio = d.performance if rendered else degrade_real(
                    d.performance, seed_for(self.seed, sid, d.real_kind), deviations)
                self.synthesized[d.real_kind].inc()
                yield Rendition(d.snippet, d.real_kind, audio, np.asarray(d.pitch.voiced),
                                d.master, d.time_map, d.transpose, origin="real")
            except Exception as e:  # noqa: BLE001
                _log_unexpected(e, (ValueError, RuntimeError), sid)
                self.err.inc()
                yield beam.pvalue.TaggedOutput(ERRORS, error_record(
                    sid, STAGE_SYNTH, f"{d.real_kind}: {e}", e))
        for kind in self.kinds:
            try:
                q = synthesize_query(kind, d.pitch, seed_for(self.seed, sid, kind), deviations)
            except Exception as e:  # noqa: BLE001
                _log_unexpected(e, (ValueError, RuntimeError), sid)
                self.err.inc()
                yield beam.pvalue.TaggedOutput(ERRORS, error_record(sid, STAGE_SYNTH, f"{kind}: {e}", e))
                continue
            self.synthesized[kind].inc()
            yield Rendition(d.snippet, kind, q.audio, q.voiced, d.master,
                            d.time_map.after(q.time_map), d.transpose + q.transpose)
        self.progress.tick(d.seconds)


class SynthesizeQueries(beam.PTransform):
    """PCollection[DecodedSnippet] -> outputs (main: Rendition, errors)."""

    def __init__(self, kinds: Sequence[str] = ("hum", "whistle", "tone"), keep_real: bool = True,
                 seed: int = 0, log_every: int = 10, deviations=None, rendered_deviations=None):
        """deviations / rendered_deviations: data_gen.synth.DeviationConfig (or None: clean) for
        queries made from recorded / rendered performances."""
        super().__init__()
        self.fn = SynthesizeQueriesFn(kinds, keep_real, seed, log_every, deviations,
                                      rendered_deviations)

    def expand(self, decoded):
        return decoded | beam.ParDo(self.fn).with_outputs(ERRORS, main=MAIN)


# --- cut aligned windows -------------------------------------------------------------------------
class CutPairsFn(beam.DoFn):
    """Rendition -> PairExample per kept EXAMPLE_SECONDS window | errors (no window kept)."""

    def __init__(self, hop_s: float, min_voiced_fraction: float, max_windows: int | None):
        self.hop_s = hop_s
        self.min_voiced_fraction = min_voiced_fraction
        self.max_windows = max_windows
        self.examples = Metrics.counter(NAMESPACE, "examples_cut")
        self.skipped = Metrics.counter(NAMESPACE, "windows_skipped_unvoiced")
        self.err = Metrics.counter(NAMESPACE, f"errors_{STAGE_CUT}")

    def process(self, r: Rendition) -> Iterator:
        s = r.snippet
        kept = 0
        for item in aligned_windows(r.audio, r.master, r.time_map, r.voiced, hop_s=self.hop_s,
                                    min_voiced_fraction=self.min_voiced_fraction,
                                    max_windows=self.max_windows):
            if isinstance(item, float):
                self.skipped.inc()
                continue
            kept += 1
            self.examples.inc()
            yield make_example(melody_id=s.melody_id, split=s.split, source=s.source, kind=r.kind,
                               snippet_id=s.snippet_id, pair=item,
                               tempo_factor=r.time_map.tempo_factor, transpose=r.transpose,
                               origin=r.origin)
        if kept == 0:
            self.err.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(
                s.snippet_id, STAGE_CUT,
                f"{r.kind}: no {C.EXAMPLE_SECONDS:g} s window holds at least "
                f"{self.min_voiced_fraction:.0%} voiced frames"))


class CutPairs(beam.PTransform):
    """PCollection[Rendition] -> outputs (main: PairExample, errors)."""

    def __init__(self, hop_s: float = C.EXAMPLE_SECONDS / 2, min_voiced_fraction: float = 0.2,
                 max_windows: int | None = None):
        super().__init__()
        self.fn = CutPairsFn(hop_s, min_voiced_fraction, max_windows)

    def expand(self, renditions):
        return renditions | beam.ParDo(self.fn).with_outputs(ERRORS, main=MAIN)


# --- sharded, sorted TFRecord output -------------------------------------------------------------
SPILL_DIR = ".spill"
"""Folder under the staging folder for per-bundle spill files (deleted when their shard is written)."""


def _frame(*fields: bytes) -> bytes:
    return b"".join(len(f).to_bytes(8, "little") + f for f in fields)


def _unframe(data: bytes, fields: int) -> Iterator[tuple[bytes, ...]]:
    pos = 0
    while pos < len(data):
        out = []
        for _ in range(fields):
            n = int.from_bytes(data[pos:pos + 8], "little")
            out.append(data[pos + 8:pos + 8 + n])
            pos += 8 + n
        yield tuple(out)


class _SpillFn(beam.DoFn):
    """Serialized examples -> one spill file per (bundle, shard) under <staging>/.spill/, written by
    the worker; only ((split, index, count), spill path) goes on to the shuffle. The examples' bytes
    therefore never pass through a GroupByKey, whose values a local runner keeps in memory (a
    2,000-snippet run of ~16,000 examples needed over 20 GB that way)."""

    def __init__(self, staging: str, shards: dict[str, int]):
        self.staging, self.shards = staging, dict(shards)
        self._files: dict[tuple, tuple[str, object]] = {}

    def start_bundle(self) -> None:
        self._files = {}

    def process(self, ex: PairExample) -> Iterator:
        import uuid

        from apache_beam.io.filesystems import FileSystems

        from beam_pipelines.outputs import join
        from data_gen.examples import to_tf_example

        n = self.shards[ex.split]
        key = (ex.split, stable_hash("shard", ex.example_id) % n, n)
        if key not in self._files:
            path = join(self.staging, SPILL_DIR, f"{uuid.uuid4().hex}.bin")
            self._files[key] = (path, FileSystems.create(path))
        self._files[key][1].write(_frame(ex.example_id.encode(), ex.query_kind.encode(), to_tf_example(ex)))
        return iter(())

    def finish_bundle(self) -> Iterator:
        from apache_beam.transforms.window import GlobalWindows

        for key, (path, handle) in self._files.items():
            handle.close()
            yield GlobalWindows.windowed_value((key, path))
        self._files = {}


class _WriteShardFn(beam.DoFn):
    """(shard key, [spill paths]) -> the shard, its records sorted by example id (one shard's
    records are in memory at a time); the spill files are deleted once the shard is written."""

    def __init__(self, staging: str, prefix: str, suffix: str):
        self.staging, self.prefix, self.suffix = staging, prefix, suffix
        self.written = Metrics.counter(NAMESPACE, "examples_written")

    def process(self, item) -> Iterator[dict]:
        from apache_beam.io.filesystems import FileSystems

        from beam_pipelines.outputs import join, read_bytes, shard_name, write_tfrecords

        (split, index, count), spills = item
        spills = sorted(spills)
        records = [r for p in spills for r in _unframe(read_bytes(p), 3)]
        records.sort(key=lambda r: r[0])
        path = join(self.staging, split, shard_name(self.prefix, index, count, self.suffix))
        n = write_tfrecords(path, (data for _, _, data in records))
        self.written.inc(n)
        for _, kind, _ in records:
            Metrics.counter(NAMESPACE, f"examples_{split}_{kind.decode()}").inc()
        FileSystems.delete(spills)
        log.info("wrote %s (%d examples)", path, n)
        yield {"split": split, "shard": index, "examples": n}


class WriteExampleShards(beam.PTransform):
    """PCollection[PairExample] -> shards `<staging>/<split>/pairs-IIIII-of-NNNNN.tfrecord.gz`.

    The shard of an example is a stable hash of its id modulo the split's shard count (given
    up front, from the input size); each shard's records are sorted by example id, so the bytes
    depend only on the input and the seed. Workers spill serialized examples to per-bundle files
    (`_SpillFn`); only file names are shuffled, so memory stays bounded by one shard whatever the
    run's size. Shards no example reached are created empty by the driver (`outputs.ensure_shards`),
    which also removes spill files of retried bundles (`<staging>/.spill/`)."""

    def __init__(self, staging: str, shards_per_split: dict[str, int], prefix: str = "pairs",
                 suffix: str = ".tfrecord.gz"):
        super().__init__()
        self.staging, self.shards, self.prefix, self.suffix = staging, dict(shards_per_split), prefix, suffix

    def expand(self, examples):
        return (
            examples
            | "Spill" >> beam.ParDo(_SpillFn(self.staging, self.shards))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self.staging, self.prefix, self.suffix))
        )


class WriteErrors(beam.PTransform):
    """PCollection[error record] -> `<staging>/errors-00000-of-00001.jsonl`, sorted by
    (snippet_id, stage, reason). Empty runs get an empty file from the driver."""

    def __init__(self, staging: str, name: str = "errors"):
        super().__init__()
        self.staging, self.name = staging, name

    def expand(self, errors):
        staging, name = self.staging, self.name

        def write(item) -> int:
            from beam_pipelines.outputs import join, shard_name, write_jsonl

            _, rows = item
            rows = sorted(rows, key=lambda r: (r["snippet_id"], r["stage"], r["reason"]))
            for r in rows:
                log.warning("error: %s [%s] %s", r["snippet_id"], r["stage"], r["reason"])
            return write_jsonl(join(staging, shard_name(name, 0, 1, ".jsonl")), rows)

        return (
            errors
            | "KeyErrors" >> beam.Map(lambda e: (None, e))
            | "GroupErrors" >> beam.GroupByKey()
            | "WriteErrors" >> beam.Map(write)
        )
