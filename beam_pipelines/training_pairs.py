"""Pipeline 1 (`earworm datagen`): synthetic (query, master) training pairs as sharded TFRecords.

    sources (MIR-1K, synthetic catalogue, snippet CSV) -> Snippet records (in memory)
      -> shard plan (resume.plan_shards: whole snippets per shard)      skip the shards done before
      | MakeShards, per snippet of a shard, one worker per shard:
          DecodeAndExtract   decode the performance (or render it from the melody MIDI) + master;
                             its pitch: CREPE/pYIN for recordings, for rendered performances the
                             f0 the synthesizer sang (--rendered-pitch known) or the extractor
          SynthesizeQueries  hum / whistle / tone from that contour (+ the real performance),
                             with human-like deviations (data_gen.synth)
          CutPairs           aligned EXAMPLE_SECONDS (query, master) windows
        -> OUT/<split>/pairs-IIIII-of-NNNNN.tfrecord.gz (data_gen.examples schema; temp name, then
           renamed) and its marker OUT/.datagen/done/<split>-IIIII.json
    errors of every stage   OUT/errors-00000-of-00001.jsonl  ({"snippet_id","stage","reason","error"})

Output layout (OUT): `train/`, `validation/`, `test/` (one folder per split, splits by melody/song
id via data_gen.melodies.split_of — a MIR-1K test song never leaves test/), `errors-*.jsonl`,
`snippets.csv` (the input, normalised), `summary.json` (counters, examples per split/kind, audio
seconds, wall time, throughput), `.datagen/` (the run's fingerprint and the done shards' markers).
A rerun with the same arguments and inputs skips the done shards (a killed run loses only the
shards in flight); a rerun with other arguments or inputs is refused unless restarted
(`beam_pipelines.resume`). The TFRecord bytes depend only on the input, the config and the seed.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from beam_pipelines.options import SPLITS, DatagenConfig, with_default_runner_args
from beam_pipelines.resume import SHARD_PREFIX, SHARD_SUFFIX
from beam_pipelines.sources import (
    Snippet,
    SourceError,
    catalogue_snippets,
    mir1k_snippets,
    read_snippets,
    sample_limit,
)

log = logging.getLogger(__name__)

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
    shards_skipped: int = 0  # done by an earlier run with the same arguments and inputs
    shards_written: int = 0  # made by this run

    @property
    def made_performance_seconds(self) -> float:
        """Seconds of performance audio this run processed (skipped shards not included)."""
        return self.counters.get("performance_audio_ms", 0) / 1000.0

    @property
    def snippets_per_second(self) -> float:
        """Snippets this run processed (decoded or failed) per wall-clock second."""
        made = self.counters.get("decoded", 0) + self.counters.get("errors_decode", 0)
        return made / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def audio_seconds_per_second(self) -> float:
        return self.made_performance_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def audio_seconds_per_cpu_second(self) -> float:
        """Throughput per core actually used: independent of what else runs on the machine
        (x the number of cores = the wall-clock throughput those cores would give)."""
        return self.made_performance_seconds / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["audio_seconds_per_second"] = round(self.audio_seconds_per_second, 3)
        d["audio_seconds_per_cpu_second"] = round(self.audio_seconds_per_cpu_second, 3)
        d["snippets_per_second"] = round(self.snippets_per_second, 3)
        d["examples_total"] = sum(sum(k.values()) for k in self.examples.values())
        return d

    def format(self) -> str:
        lines = [f"datagen summary ({self.out_dir})"]
        lines.append(f"  snippets in: {self.snippets}   errors: {self.errors}   shards: "
                     f"{self.shards_written} made now, {self.shards_skipped} done before (skipped)")
        for split in sorted(self.examples):
            kinds = ", ".join(f"{k}={v}" for k, v in sorted(self.examples[split].items()))
            lines.append(f"  {split:<10} {sum(self.examples[split].values()):>6} examples "
                         f"in {self.shards.get(split, 0)} shard(s)  ({kinds})")
        lines.append("  counters: " + ", ".join(f"{k}={v}" for k, v in sorted(self.counters.items())
                                                 if not k.endswith("_ms")))
        lines.append(
            f"  audio in: {self.performance_seconds:.1f} s of performances "
            f"(+ {self.master_seconds:.1f} s of masters decoded) in all shards")
        lines.append(
            f"  this run: {self.made_performance_seconds:.1f} s of performances in wall time "
            f"{self.wall_seconds:.1f} s: {self.audio_seconds_per_second:.2f} s of performance audio "
            f"per second, {self.snippets_per_second:.2f} snippets/s")
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
    return {split: config.num_shards(per_split.get(split, 0)) for split in wanted_splits(config)}


def wanted_splits(config: DatagenConfig) -> list[str]:
    return [sp for sp in SPLITS if not config.splits or sp in config.splits]


def build_pipeline(pipeline, tasks: Sequence, config: DatagenConfig):
    """Add the datagen transforms to `pipeline` (a beam.Pipeline or TestPipeline): one element
    per shard still to make (`resume.ShardTask`), each made whole by one worker
    (`transforms.MakeShardFn`: decode + pitch -> synthesize -> cut -> sorted shard + marker).
    Returns the PCollection of the written shards' markers."""
    import apache_beam as beam

    from beam_pipelines.transforms import CutPairsFn, DecodeAndExtractFn, MakeShardFn, SynthesizeQueriesFn

    decode = DecodeAndExtractFn(config.extractor, config.seed, config.min_snippet_s, config.log_every,
                                config.performance_deviations(), config.pitch_stride, config.rendered_pitch)
    synth = SynthesizeQueriesFn(config.kinds, config.keep_real, config.seed, config.log_every,
                                config.query_deviations(), config.query_deviations(tempo=False))
    cut = CutPairsFn(config.example_hop_s, config.min_voiced_fraction, config.max_windows)
    return (
        pipeline
        | "Shards" >> beam.Create(list(tasks))
        | "Distribute" >> beam.Reshuffle()
        | "MakeShards" >> beam.ParDo(MakeShardFn(config.out_dir, SHARD_PREFIX, SHARD_SUFFIX, decode, synth, cut))
    )


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


def run_datagen(config: DatagenConfig, runner_args: Sequence[str] = (), *,
                restart: bool = False) -> DatagenSummary:
    """Run pipeline 1 into `config.out_dir`, skipping the shards an earlier run with the same
    arguments and inputs completed there (`beam_pipelines.resume`). Returns the summary (of all
    shards; `counters` count this run's work only).

    restart: discard the shards of a different earlier run in OUT instead of refusing
    (`resume.DatagenStateError`).
    runner_args: Beam flags (any runner); the DirectRunner in multi-processing mode with 2 workers
    is the default (`options.with_default_runner_args`)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipelines import outputs, resume

    t0 = time.monotonic()
    cpu0 = _cpu_seconds()
    snippets = collect_snippets(config)
    if not snippets:
        raise SourceError("the sources hold no snippets (after --limit / --splits)")
    out = config.out_dir
    tasks = resume.plan_shards(config, snippets, wanted_splits(config))
    shards = {t.split: t.count for t in tasks}
    lock = resume.lock_output(out)
    try:
        pending, done = resume.prepare(out, config, tasks, snippets, restart)
        resume.atomic_write(outputs.join(out, SNIPPETS_FILE), snippets_csv_bytes(snippets))
        runner = with_default_runner_args(runner_args)
        log.info("datagen: %d snippets (%s), shards %s: %d done before, %d to make; runner flags %s",
                 len(snippets), ", ".join(f"{sp}={sum(s.split == sp for s in snippets)}" for sp in SPLITS),
                 shards, len(done), len(pending), " ".join(runner.argv))
        counters: dict[str, int] = {}
        if pending:
            pipeline = beam.Pipeline(options=PipelineOptions(list(runner.argv)))
            build_pipeline(pipeline, pending, config)
            result = pipeline.run()
            result.wait_until_finish()
            counters = _counters(result)
        markers = []
        for t in tasks:
            marker = resume.read_json(resume.marker_path(out, t.key))
            if not marker or marker.get("fingerprint") != t.fingerprint:
                raise RuntimeError(f"shard {t.key} has no valid marker after the run")
            markers.append(marker)
    finally:
        if lock is not None:
            lock.close()

    errors = sorted((e for m in markers for e in m["errors"]),
                    key=lambda r: (r["snippet_id"], r["stage"], r["reason"]))
    outputs.write_jsonl(outputs.join(out, outputs.shard_name(ERRORS_NAME, 0, 1, ".jsonl")), errors)
    examples: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m in markers:
        for kind, n in m["examples"].items():
            examples[m["split"]][kind] += n
    summary = DatagenSummary(
        out_dir=out, snippets=len(snippets), counters=counters,
        examples={sp: dict(k) for sp, k in examples.items() if sum(k.values())},
        shards=shards, errors=len(errors),
        performance_seconds=sum(m["performance_ms"] for m in markers) / 1000.0,
        master_seconds=sum(m["master_ms"] for m in markers) / 1000.0,
        wall_seconds=time.monotonic() - t0, cpu_seconds=_cpu_seconds() - cpu0,
        runner_args=list(runner.argv), shards_skipped=len(done), shards_written=len(pending),
    )
    outputs.write_bytes(outputs.join(out, SUMMARY_FILE),
                        (json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return summary


def snippets_csv_bytes(snippets: Sequence[Snippet]) -> bytes:
    """`sources.write_snippets`' CSV, as bytes."""
    import csv
    import io

    from beam_pipelines.sources import SNIPPET_COLUMNS

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SNIPPET_COLUMNS, lineterminator="\n")
    w.writeheader()
    for s in snippets:
        w.writerow(s.to_row())
    return buf.getvalue().encode("utf-8")


def write_snippets_fs(path: str, snippets: Sequence[Snippet]) -> None:
    """`sources.write_snippets` to any Beam filesystem path."""
    from beam_pipelines.outputs import write_bytes

    write_bytes(path, snippets_csv_bytes(snippets))


__all__ = ["DatagenSummary", "build_pipeline", "collect_snippets", "run_datagen", "write_snippets_fs"]
