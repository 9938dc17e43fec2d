"""Configuration of the Beam pipelines: one frozen dataclass per pipeline, plus runner flags.

Defaults live here only (the CLI reads them from the dataclasses). Beam's own flags are not parsed
by us: `split_runner_args` keeps our flags and hands the rest to `PipelineOptions`, adding the
local defaults (DirectRunner, multi-processing, 2 workers) unless the caller chose otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from data_gen import constants as C

QUERY_KINDS = ("hum", "whistle", "tone")
"""Synthesized query kinds made from every extracted contour."""

REAL_QUERY_KINDS = ("voice", "sung", "hum")
"""Kinds a source performance itself may have (MIR-1K: voice; catalogue: sung or hum)."""

SPLITS = ("train", "validation", "test")

LOCAL_RUNNER = "FnApiRunner"
"""The DirectRunner's portable engine, named explicitly: `DirectRunner` itself first tries to
download and start the Prism runner (which ignores the multi-processing flags) and only falls back
to this engine when that fails."""

DEFAULT_RUNNER_ARGS = (f"--runner={LOCAL_RUNNER}", "--direct_num_workers=2",
                       "--direct_running_mode=multi_processing")
"""Local default: the DirectRunner engine with two worker processes (one per core)."""

DIRECT_RUNNERS = ("directrunner", "direct", "switchingdirectrunner", "fnapirunner",
                  "bundlebaseddirectrunner")


@dataclass(frozen=True)
class DatagenConfig:
    """Pipeline 1 (`earworm datagen`): synthetic (query, master) training pairs.

    out_dir:              output root (local path or any Beam filesystem URL).
    mir1k_dir:            MIR-1K folder (manifest.csv + audio/); None: not used.
    mir1k_leads_dir:      folder of `earworm mir1k-leads`: MIR-1K masters are lead + accompaniment
                          instead of voice + accompaniment; None: voice + accompaniment.
    catalogue_dir:        a catalogue folder written by `earworm catalogue build`; None: not used.
    snippets_csv:         a snippet manifest CSV (the normalised form, see `sources`); None: not used.
    limit:                at most this many snippets per source (a deterministic hash-ordered
                          sample across songs, so a small run still touches every split).
    splits:               only keep snippets of these splits (None: all).
    kinds:                synthesized query kinds made from each extracted contour.
    keep_real:            also emit the source performance itself as a query (MIR-1K "voice",
                          catalogue "sung"/"hum").
    catalogue_performances: performance kinds rendered per catalogue track (data_gen.synth.perform).
    extractor:            pitch backend for `data_gen.pitch.make_extractor` ("crepe", "pyin", ...).
    rendered_pitch:       the contour of a rendered (catalogue) performance: "known" = the f0 its
                          synthesizer performed (no pitch tracker), "extract" = `extractor` run on
                          its audio. Recorded performances (MIR-1K) always go through `extractor`.
    pitch_stride:         run CREPE every n-th 10 ms frame and re-grid (2: half the cost of the
                          costliest stage; raw pitch accuracy on MIR-1K 0.976 vs 0.978 at 1).
    deviations:           apply human-like deviations (data_gen.synth.DeviationConfig: transpose,
                          tempo, drift, reverb, noise, phone mic; catalogue performances also get
                          the note-level ones: timing jitter, intonation, dropped/added notes).
    deviation_strength:   DeviationConfig.strength (scales the errors and channel probabilities).
    tempo_range:          query tempo / source tempo range. Applied once per chain: to the
                          queries made from a real recording, or to the catalogue performance
                          (the queries made from that performance then keep its tempo).
    performance_seconds:  (min, max) length of a catalogue performance (a crop of the melody).
    seed:                 global seed; every random choice derives from (seed, snippet id, kind).
    example_hop_s:        hop between consecutive EXAMPLE_SECONDS windows cut from one query.
    max_windows:          at most this many windows per (snippet, kind) (None: all).
    min_voiced_fraction:  a window whose query part holds less voiced pitch than this is skipped.
    min_snippet_s:        shorter performances are errors ("too short").
    snippets_per_shard:   shard count per split = ceil(snippets in split / snippets_per_shard).
    log_every:            per-stage progress log line every N elements (per worker).
    """

    out_dir: str
    mir1k_dir: str | None = None
    mir1k_leads_dir: str | None = None
    catalogue_dir: str | None = None
    snippets_csv: str | None = None
    limit: int | None = None
    splits: tuple[str, ...] | None = None
    kinds: tuple[str, ...] = QUERY_KINDS
    keep_real: bool = True
    catalogue_performances: tuple[str, ...] = ("sung",)
    extractor: str = "crepe"
    rendered_pitch: str = "known"
    pitch_stride: int = 2
    deviations: bool = True
    deviation_strength: float = 1.0
    tempo_range: tuple[float, float] = (0.8, 1.25)
    performance_seconds: tuple[float, float] = (8.0, 16.0)
    seed: int = 0
    example_hop_s: float = C.EXAMPLE_SECONDS / 2
    max_windows: int | None = None
    min_voiced_fraction: float = 0.2
    min_snippet_s: float = C.WINDOW_SECONDS
    snippets_per_shard: int = 40
    log_every: int = 10

    def num_shards(self, num_snippets: int) -> int:
        return max(1, math.ceil(num_snippets / max(1, self.snippets_per_shard)))

    def query_deviations(self, *, tempo: bool = True):
        """DeviationConfig for queries synthesized from a contour (None: no deviations);
        tempo=False for a source whose tempo was already deviated."""
        if not self.deviations:
            return None
        from data_gen.synth import DeviationConfig

        return DeviationConfig(strength=self.deviation_strength,
                               tempo_range=self.tempo_range if tempo else (1.0, 1.0))

    def performance_deviations(self):
        """DeviationConfig for rendering a catalogue performance (None: a clean rendition)."""
        if not self.deviations:
            return None
        from data_gen.synth import DeviationConfig

        lo, hi = self.performance_seconds
        return DeviationConfig(strength=self.deviation_strength, tempo_range=self.tempo_range,
                               min_seconds=lo, max_seconds=hi)


@dataclass(frozen=True)
class IndexConfig:
    """Pipeline 2 (`earworm index`): embed catalogue masters and build the ScaNN window index.

    catalogue:      catalogue manifest CSV (data_gen.manifest).
    model_dir:      exported encoder (serving.embedder.Embedder).
    out_dir:        the index directory to write (serving.index layout).
    add_to:         an existing index dir: keep its windows and add this catalogue's tracks.
    batch_tracks:   tracks whose windows are embedded in one model call (cross-track batching).
    embed_batch:    Embedder batch size (windows per model call).
    tracks_per_shard: tracks per embedding shard (.npz) file.
    limit:          only the first N tracks of the manifest (None: all).
    log_every:      progress line every N tracks (per worker).
    master_hop_seconds: master windows start this many seconds apart (recorded in the index's
                    metadata; a release added to an index must use the index's hop).
    """

    catalogue: str
    model_dir: str
    out_dir: str
    add_to: str | None = None
    batch_tracks: int = 8
    embed_batch: int = 64
    tracks_per_shard: int = 100
    limit: int | None = None
    log_every: int = 25
    backend: str = "scann"
    """"scann" (an index directory, out_dir) or "milvus" (a collection at milvus_uri; add_to then names
    the collection a release is added to, in place)."""
    milvus_uri: str | None = None
    milvus_collection: str = "earworm_windows"
    replace: bool = False
    """milvus: replace an existing collection of that name (default: refuse)."""
    milvus_worker_writes: bool | None = None
    """milvus: the workers write the windows (WriteMilvusWindowsFn) instead of the driver from the
    embedding shards. None: yes for a server URI, no for a Milvus Lite file (one process at a time;
    True works for Lite only with an in-process runner)."""
    master_hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS
    """How far apart the master windows start: 2 s halves the index (windows, bytes, search time)
    against 1 s; the README has the accuracy it costs."""

    def __post_init__(self) -> None:
        from serving.embedder import master_hop_samples

        master_hop_samples(self.master_hop_seconds)  # ValueError unless positive

    def num_shards(self, num_tracks: int) -> int:
        return max(1, math.ceil(num_tracks / max(1, self.tracks_per_shard)))


@dataclass(frozen=True)
class RunnerArgs:
    """Beam flags after defaults were applied; `argv` goes to PipelineOptions."""

    argv: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_direct(self) -> bool:
        runner = _flag_value(self.argv, "--runner")
        return runner is None or runner.lower() in DIRECT_RUNNERS


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def with_default_runner_args(argv: Sequence[str]) -> RunnerArgs:
    """Add the local multi-processing defaults to Beam flags, unless the caller set them or chose
    another runner. `--direct_num_workers=1 --direct_running_mode=in_memory` gives the fast
    in-process runner the tests use."""
    argv = tuple(argv)
    args = RunnerArgs(argv)
    if not args.is_direct:
        return args
    extra = tuple(
        d for d in DEFAULT_RUNNER_ARGS if _flag_value(argv, d.split("=", 1)[0]) is None
    )
    return RunnerArgs(argv + extra)


IN_PROCESS_RUNNER_ARGS = (f"--runner={LOCAL_RUNNER}", "--direct_num_workers=1",
                          "--direct_running_mode=in_memory")
"""Beam flags for a fast single-process run (tests, tiny inputs)."""
