"""Beam transforms of the training-pair pipeline (`beam_pipelines.training_pairs`).

    Snippet --DecodeAndExtract--> DecodedSnippet --SynthesizeQueries--> Rendition
            --CutPairs--> PairExample

`MakeShardFn` runs these three DoFns on every snippet of one shard (`resume.ShardTask`) and writes
the shard whole (OUT/<split>/pairs-*.tfrecord.gz, temp name then rename, then its marker): that
is the datagen pipeline. The composites stay usable on their own (tests, other pipelines).
Each composite returns a `beam.pvalue.DoOutputsTuple` with a main output and an `errors` output
of `ErrorRecord` dicts ({"snippet_id", "stage", "reason", "error"}); a bad snippet is routed
there and the rest of the run goes on. Every stage counts what it does in Beam Metrics
(namespace `datagen`) and logs a progress line every `log_every` elements per worker.
Models (the pitch extractor) are loaded once per worker process, when first needed.
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

log = logging.getLogger(__name__)

NAMESPACE = "datagen"
ERRORS = "errors"
MAIN = "main"

STAGE_DECODE = "decode"
STAGE_PITCH = "pitch"
STAGE_SYNTH = "synthesize"
STAGE_CUT = "cut"

RENDERED_PITCH_KNOWN = "known"
RENDERED_PITCH_EXTRACT = "extract"
RENDERED_PITCH = (RENDERED_PITCH_KNOWN, RENDERED_PITCH_EXTRACT)
"""Where the contour of a rendered (catalogue) performance comes from: the f0 its synthesizer
performed (`known`), or the pitch extractor run on its audio (`extract`, the round trip every
recorded performance takes)."""

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
                 performance_deviations=None, pitch_stride: int = 1,
                 rendered_pitch: str = RENDERED_PITCH_EXTRACT):
        if rendered_pitch not in RENDERED_PITCH:
            raise ValueError(f"rendered_pitch must be one of {RENDERED_PITCH}, got {rendered_pitch!r}")
        self.extractor_name = extractor
        self.pitch_stride = pitch_stride
        self.rendered_pitch = rendered_pitch
        self.seed = seed
        self.performance_deviations = performance_deviations
        self.min_snippet_s = min_snippet_s
        self.log_every = log_every
        self.decoded = Metrics.counter(NAMESPACE, "decoded")
        self.audio_ms = Metrics.counter(NAMESPACE, "performance_audio_ms")
        self.master_ms = Metrics.counter(NAMESPACE, "master_audio_ms")
        self.pitched = Metrics.counter(NAMESPACE, "pitch_extracted")
        self.known = Metrics.counter(NAMESPACE, "pitch_known")
        self.no_voiced = Metrics.counter(NAMESPACE, "no_voiced_frames")
        self.err_decode = Metrics.counter(NAMESPACE, f"errors_{STAGE_DECODE}")
        self.err_pitch = Metrics.counter(NAMESPACE, f"errors_{STAGE_PITCH}")

    def setup(self) -> None:
        self._extractor = None  # loaded on first use: a run of rendered snippets with known pitch never needs it
        self.progress = _Progress("decode+pitch", self.log_every)

    @property
    def extractor(self):
        if getattr(self, "_extractor", None) is None:
            self._extractor = shared_extractor(self.extractor_name, self.pitch_stride)
        return self._extractor

    def _performance(self, s: Snippet) -> tuple[np.ndarray, str, TimeMap, float, object]:
        """(audio, real kind, time map, transpose, known PitchTrack or None)."""
        from data_gen.audio import AudioError, decode_audio

        if s.performance:
            try:
                audio = decode_audio(_read(s.performance), min_seconds=self.min_snippet_s,
                                     max_seconds=C.MAX_MASTER_SECONDS)
            except AudioError as e:
                raise type(e)(f"{s.performance}: {e}") from e
            return audio, ("voice" if s.source == "mir1k" else "sung"), TimeMap(), 0.0, None
        from beam_pipelines.synthesis import render_performance

        spec = s.generator_spec
        perf = render_performance(spec["midi"], spec.get("kind", "sung"),
                                  seed_for(self.seed, s.snippet_id, "perform"),
                                  self.performance_deviations)
        from data_gen.audio import validate_audio

        validate_audio(perf.audio, min_seconds=self.min_snippet_s)
        known = perf.known_pitch() if self.rendered_pitch == RENDERED_PITCH_KNOWN else None
        return perf.audio, perf.kind, perf.time_map, perf.transpose, known

    def process(self, s: Snippet) -> Iterator:
        from data_gen.audio import AudioError

        try:
            audio, kind, tmap, transpose, known = self._performance(s)
            master = decode_master(s.master)
        except Exception as e:  # noqa: BLE001 - any bad input is reported, never fails the run
            _log_unexpected(e, (AudioError, FileNotFoundError, OSError, ValueError), s.snippet_id)
            self.err_decode.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_record(s.snippet_id, STAGE_DECODE, str(e), e))
            return
        self.decoded.inc()
        self.audio_ms.inc(int(round(1000 * audio.shape[0] / C.SAMPLE_RATE)))
        self.master_ms.inc(int(round(1000 * master.shape[0] / C.SAMPLE_RATE)))
        if known is not None:
            track = known  # the synthesizer's own f0: no pitch tracker round trip
            self.known.inc()
        else:
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
                 performance_deviations=None, pitch_stride: int = 1,
                 rendered_pitch: str = "extract"):
        super().__init__()
        self.fn = DecodeAndExtractFn(extractor, seed, min_snippet_s, log_every,
                                     performance_deviations, pitch_stride, rendered_pitch)

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


# --- one whole shard per element (resumable datagen) --------------------------------------------
class MakeShardFn(beam.DoFn):
    """resume.ShardTask -> its shard file and marker (yields the marker dict).

    Runs the pipeline's stages (DecodeAndExtractFn -> SynthesizeQueriesFn -> CutPairsFn) on every
    snippet of the shard in turn, then writes the shard's records sorted by example id to a temp
    name, renames it into place and writes the marker (`beam_pipelines.resume`). The marker holds
    the examples per kind, the audio seconds and the shard's error records, so a later run that
    skips the shard still reports them. Nothing of a shard reaches a shuffle: memory is one shard."""

    def __init__(self, out_dir: str, prefix: str, suffix: str, decode: DecodeAndExtractFn,
                 synth: SynthesizeQueriesFn, cut: CutPairsFn):
        self.out_dir, self.prefix, self.suffix = out_dir, prefix, suffix
        self.decode, self.synth, self.cut = decode, synth, cut
        self.written = Metrics.counter(NAMESPACE, "examples_written")
        self.shards = Metrics.counter(NAMESPACE, "shards_written")

    def setup(self) -> None:
        for fn in (self.decode, self.synth, self.cut):
            fn.setup()
        self.t0, self.n = time.monotonic(), 0

    @staticmethod
    def _split(outputs, errors: list) -> Iterator:
        for item in outputs:
            if isinstance(item, beam.pvalue.TaggedOutput):
                errors.append(item.value)
            else:
                yield item

    def process(self, task) -> Iterator[dict]:
        import json

        from beam_pipelines.outputs import write_tfrecords
        from beam_pipelines.resume import atomic_write, commit_file, marker_path, shard_path, temp_path
        from data_gen.examples import to_tf_example

        errors: list[dict] = []
        records: list[tuple[str, str, bytes]] = []
        perf_ms = master_ms = 0
        for s in task.snippets:
            for d in self._split(self.decode.process(s), errors):
                perf_ms += int(round(1000 * d.performance.shape[0] / C.SAMPLE_RATE))
                master_ms += int(round(1000 * d.master.shape[0] / C.SAMPLE_RATE))
                for r in self._split(self.synth.process(d), errors):
                    for ex in self._split(self.cut.process(r), errors):
                        records.append((ex.example_id, ex.query_kind, to_tf_example(ex)))
        records.sort(key=lambda r: r[0])
        final = shard_path(self.out_dir, task.split, task.index, task.count, self.prefix, self.suffix)
        tmp = temp_path(final)
        n = write_tfrecords(tmp, (data for _, _, data in records))
        commit_file(tmp, final)
        kinds: dict[str, int] = {}
        for _, kind, _ in records:
            kinds[kind] = kinds.get(kind, 0) + 1
            Metrics.counter(NAMESPACE, f"examples_{task.split}_{kind}").inc()
        self.written.inc(n)
        self.shards.inc()
        marker = {"fingerprint": task.fingerprint, "split": task.split, "index": task.index,
                  "count": task.count, "snippets": len(task.snippets), "examples": kinds,
                  "performance_ms": perf_ms, "master_ms": master_ms,
                  "errors": sorted(errors, key=lambda r: (r["snippet_id"], r["stage"], r["reason"]))}
        atomic_write(marker_path(self.out_dir, task.key),
                     (json.dumps(marker, indent=1, sort_keys=True) + "\n").encode())
        self.n += 1
        dt = time.monotonic() - self.t0
        log.info("[shards pid %d] wrote %s (%d snippets, %d examples, %d errors); %d shards in %.0f s here",
                 os.getpid(), final, len(task.snippets), n, len(errors), self.n, dt)
        yield marker
