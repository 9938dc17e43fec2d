"""Pipeline 1 (`earworm datagen`): synthetic (query, master) training pairs as sharded TFRecords.

    sources (MIR-1K, synthetic catalogue, snippet CSV) -> Snippet records (in memory)
      | DecodeAndExtract     decode performance + master, CREPE/pYIN pitch (model once per worker)
      | SynthesizeQueries    hum / whistle / tone from the extracted contour (+ the real voice),
                             with human-like deviations (data_gen.synth)
      | CutPairs             aligned EXAMPLE_SECONDS (query, master) windows
      | WriteExampleShards   OUT/<split>/pairs-IIIII-of-NNNNN.tfrecord.gz (data_gen.examples schema)
    errors of every stage   OUT/errors-00000-of-00001.jsonl  ({"snippet_id","stage","reason","error"})

Output layout (OUT): `train/`, `validation/`, `test/` (one folder per split, splits by melody/song
id via data_gen.melodies.split_of — a MIR-1K test song never leaves test/), `errors-*.jsonl`,
`snippets.csv` (the input, normalised), `summary.json` (counters, examples per split/kind, audio
seconds, wall time, throughput). A rerun replaces these (staged under OUT/.staging, published when
the run succeeds); the TFRecord bytes depend only on the input, the config and the seed.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from beam_pipelines.options import SPLITS, DatagenConfig, with_default_runner_args
from beam_pipelines.sources import (
    Snippet,
    SourceError,
    catalogue_snippets,
    mir1k_snippets,
    read_snippets,
    sample_limit,
)

log = logging.getLogger(__name__)

SHARD_PREFIX = "pairs"
SHARD_SUFFIX = ".tfrecord.gz"
ERRORS_NAME = "errors"
SUMMARY_FILE = "summary.json"
SNIPPETS_FILE = "snippets.csv"


@dataclass
class DatagenSummary:
    """What a run did: Beam counters plus derived figures."""

    out_dir: str
    snippets: int
    counters: dict[str, int]
    examples: dict[str, dict[str, int]]  # split -> kind -> count
    shards: dict[str, int]  # split -> shard count
    errors: int
    performance_seconds: float
    master_seconds: float
    wall_seconds: float
    cpu_seconds: float = 0.0  # user + system time of the driver and its (finished) worker processes
    runner_args: list[str] = field(default_factory=list)

    @property
    def audio_seconds_per_second(self) -> float:
        return self.performance_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def audio_seconds_per_cpu_second(self) -> float:
        """Throughput per core actually used: independent of what else runs on the machine
        (x the number of cores = the wall-clock throughput those cores would give)."""
        return self.performance_seconds / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["audio_seconds_per_second"] = round(self.audio_seconds_per_second, 3)
        d["audio_seconds_per_cpu_second"] = round(self.audio_seconds_per_cpu_second, 3)
        d["examples_total"] = sum(sum(k.values()) for k in self.examples.values())
        return d

    def format(self) -> str:
        lines = [f"datagen summary ({self.out_dir})"]
        lines.append(f"  snippets in: {self.snippets}   errors: {self.errors}")
        for split in sorted(self.examples):
            kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.examples[split].items()))
            lines.append(f"  {split:<10} {sum(self.examples[split].values()):>6} examples "
                         f"in {self.shards.get(split, 0)} shard(s)  ({kinds})")
        lines.append("  counters: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items())
                                                 if not k.endswith("_ms")))
        lines.append(
            f"  audio in: {self.performance_seconds:.1f} s of performances "
            f"(+ {self.master_seconds:.1f} s of masters decoded); wall time {self.wall_seconds:.1f} s; "
            f"{self.audio_seconds_per_second:.2f} s of performance audio per second")
        if self.cpu_seconds > 0:
            lines.append(
                f"  cpu time {self.cpu_seconds:.1f} s (driver + workers): "
                f"{self.audio_seconds_per_cpu_second:.2f} s of performance audio per CPU second")
        return "\n".join(lines)


def collect_snippets(config: DatagenConfig) -> list[Snippet]:
    """All snippets of the configured sources (each limited by `config.limit`), split-filtered,
    sorted by id. Raises SourceError when no source is given or an id repeats."""
    groups: list[list[Snippet]] = []
    if config.mir1k_dir:
        groups.append(sample_limit(mir1k_snippets(config.mir1k_dir, config.mir1k_leads_dir), config.limit))
    if config.catalogue_dir:
        groups.append(sample_limit(
            catalogue_snippets(config.catalogue_dir, config.catalogue_performances), config.limit))
    if config.snippets_csv:
        groups.append(sample_limit(read_snippets(config.snippets_csv), config.limit))
    if not groups:
        raise SourceError("no input: give --mir1k, --catalogue and/or --snippets")
    snippets = [s for g in groups for s in g]
    if config.splits:
        snippets = [s for s in snippets if s.split in config.splits]
    ids = [s.snippet_id for s in snippets]
    if len(set(ids)) != len(ids):
        raise SourceError("the same snippet id comes from two sources")
    return sorted(snippets, key=lambda s: s.snippet_id)


def shards_per_split(config: DatagenConfig, snippets: Sequence[Snippet]) -> dict[str, int]:
    per_split: dict[str, int] = defaultdict(int)
    for s in snippets:
        per_split[s.split] += 1
    wanted = [sp for sp in SPLITS if not config.splits or sp in config.splits]
    return {split: config.num_shards(per_split.get(split, 0)) for split in wanted}


def build_pipeline(pipeline, snippets: Sequence[Snippet], config: DatagenConfig, staging: str,
                   shards: dict[str, int]):
    """Add the datagen transforms to `pipeline` (a beam.Pipeline or TestPipeline)."""
    import apache_beam as beam

    from beam_pipelines.transforms import (
        CutPairs,
        DecodeAndExtract,
        SynthesizeQueries,
        WriteErrors,
        WriteExampleShards,
    )

    records = (
        pipeline
        | "Snippets" >> beam.Create(list(snippets))
        | "Distribute" >> beam.Reshuffle()
    )
    decoded = records | "DecodeAndExtract" >> DecodeAndExtract(
        config.extractor, config.seed, config.min_snippet_s, config.log_every,
        config.performance_deviations(), config.pitch_stride)
    queries = decoded.main | "SynthesizeQueries" >> SynthesizeQueries(
        config.kinds, config.keep_real, config.seed, config.log_every,
        config.query_deviations(), config.query_deviations(tempo=False))
    pairs = queries.main | "CutPairs" >> CutPairs(
        config.example_hop_s, config.min_voiced_fraction, config.max_windows)
    written = pairs.main | "WriteExamples" >> WriteExampleShards(
        staging, shards, SHARD_PREFIX, SHARD_SUFFIX)
    errors = (
        (decoded.errors, queries.errors, pairs.errors)
        | "AllErrors" >> beam.Flatten()
        | "WriteErrors" >> WriteErrors(staging, ERRORS_NAME)
    )
    return written, errors


def _counters(result) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    out: dict[str, int] = defaultdict(int)
    try:
        query = result.metrics().query(MetricsFilter().with_namespace("datagen"))
    except (NotImplementedError, AttributeError):  # some runners do not report metrics
        return {}
    for c in query["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] += int(value or 0)
    return dict(out)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children (the SDK
    worker processes of a multi-processing DirectRunner run, once they exited)."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def _count_errors(path: str) -> int:
    from beam_pipelines.outputs import read_bytes

    try:
        return sum(1 for line in read_bytes(path).decode().splitlines() if line.strip())
    except Exception:  # noqa: BLE001
        return 0


def run_datagen(config: DatagenConfig, runner_args: Sequence[str] = ()) -> DatagenSummary:
    """Run pipeline 1 and publish its outputs into `config.out_dir`. Returns the summary.

    runner_args: Beam flags (any runner); the DirectRunner in multi-processing mode with 2 workers
    is the default (`options.with_default_runner_args`)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines import outputs

    t0 = time.monotonic()
    cpu0 = _cpu_seconds()
    snippets = collect_snippets(config)
    if not snippets:
        raise SourceError("the sources hold no snippets (after --limit / --splits)")
    shards = shards_per_split(config, snippets)
    out = config.out_dir
    staging = outputs.reset_staging(out)
    write_snippets_fs(outputs.join(staging, SNIPPETS_FILE), snippets)
    runner = with_default_runner_args(runner_args)
    log.info("datagen: %d snippets (%s), shards %s, runner flags %s", len(snippets),
             ", ".join(f"{sp}={sum(s.split == sp for s in snippets)}" for sp in SPLITS), shards,
             " ".join(runner.argv))

    pipeline = beam.Pipeline(options=PipelineOptions(list(runner.argv)))
    build_pipeline(pipeline, snippets, config, staging, shards)
    result = pipeline.run()
    result.wait_until_finish()
    counters = _counters(result)

    from beam_pipelines.transforms import SPILL_DIR

    outputs.delete_tree(outputs.join(staging, SPILL_DIR))  # leftovers of retried bundles, if any
    empty = outputs.empty_gzip()
    for split, n in shards.items():
        outputs.ensure_shards(staging, split, SHARD_PREFIX, n, SHARD_SUFFIX, empty)
    outputs.ensure_shards(staging, "", ERRORS_NAME, 1, ".jsonl", b"")
    errors = _count_errors(outputs.join(staging, outputs.shard_name(ERRORS_NAME, 0, 1, ".jsonl")))
    outputs.publish_staging(out, [*SPLITS, f"{ERRORS_NAME}-*.jsonl", SNIPPETS_FILE, SUMMARY_FILE])

    examples: dict[str, dict[str, int]] = defaultdict(dict)
    for name, value in counters.items():
        parts = name.split("_", 2)
        if parts[0] == "examples" and len(parts) == 3 and parts[1] in SPLITS:
            examples[parts[1]][parts[2]] = value
    summary = DatagenSummary(
        out_dir=out, snippets=len(snippets), counters=counters, examples=dict(examples),
        shards=shards, errors=errors,
        performance_seconds=counters.get("performance_audio_ms", 0) / 1000.0,
        master_seconds=counters.get("master_audio_ms", 0) / 1000.0,
        wall_seconds=time.monotonic() - t0, cpu_seconds=_cpu_seconds() - cpu0,
        runner_args=list(runner.argv),
    )
    outputs.write_bytes(outputs.join(out, SUMMARY_FILE),
                        (json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return summary


def write_snippets_fs(path: str, snippets: Sequence[Snippet]) -> None:
    """`sources.write_snippets` to any Beam filesystem path."""
    import csv
    import io

    from beam_pipelines.outputs import write_bytes
    from beam_pipelines.sources import SNIPPET_COLUMNS

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SNIPPET_COLUMNS, lineterminator="\n")
    w.writeheader()
    for s in snippets:
        w.writerow(s.to_row())
    write_bytes(path, buf.getvalue().encode("utf-8"))


__all__ = ["DatagenSummary", "build_pipeline", "collect_snippets", "run_datagen", "write_snippets_fs"]
