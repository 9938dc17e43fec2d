"""`earworm hum-stats`: real hums against the project's synthetic ones, statistic by statistic.

Real: the hums of ../shared/data/qbh_demo and zalo_mini. Synthetic: `--synthetic N` performances of
test-split corpus melodies by the query synthesizer (`data_gen.synth.deviations.perform`, the one
datagen and the benchmarks use), of each `--kinds`. Prints the median [interquartile range] of every
statistic of `data_gen.synth.realism` per set, and the gaps ranked by size (synthetic median minus
real median, in real IQRs): the largest are the ones to close first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _real_sets(shared: Path) -> dict[str, list[Path]]:
    import csv

    from data_gen.manifest import read_queries

    sets: dict[str, list[Path]] = {}
    qbh = shared / "qbh_demo" / "manifest.csv"
    if qbh.is_file():
        with qbh.open(newline="", encoding="utf-8") as f:
            sets["qbh_demo"] = [qbh.parent / row["path"] for row in csv.DictReader(f)]
    if (shared / "zalo_mini" / "queries.csv").is_file():
        sets["zalo_mini"] = [q.path for q in read_queries(shared / "zalo_mini" / "queries.csv")]
    return sets


def _synthetic(kind: str, n: int, seed: int):
    from data_gen.melodies import iter_melodies, melody_notes_seconds
    from data_gen.synth.deviations import perform

    for i, melody in enumerate(iter_melodies("test", seed=seed, limit=n)):
        yield perform(melody_notes_seconds(melody), kind, seed * 1_000_003 + i).audio


def run_hum_stats(shared: Path | None, synthetic: int, kinds: tuple[str, ...], seed: int = 0) -> dict:
    from data_gen.audio import AudioError, load_audio
    from data_gen.paths import shared_data_dir
    from data_gen.synth.realism import compare, hum_stats, summarize

    shared = Path(shared) if shared else shared_data_dir()
    sets: dict[str, dict] = {}
    for name, paths in _real_sets(shared).items():
        stats = []
        for p in paths:
            try:
                stats.append(hum_stats(load_audio(p)))
            except AudioError:
                continue
        sets[f"real: {name}"] = summarize(stats)
    for kind in kinds:
        sets[f"synthetic: {kind}"] = summarize(hum_stats(a) for a in _synthetic(kind, synthetic, seed))
    real = [k for k in sets if k.startswith("real:")]
    gaps = {}
    if real:
        pooled = sets[real[0]]  # the largest real set (qbh_demo) is the reference
        gaps = {k: compare(pooled, v) for k, v in sets.items() if k.startswith("synthetic:")}
    return {"sets": sets, "reference": real[0] if real else None, "gaps": gaps}


def format_report(report: dict) -> str:
    from data_gen.synth.realism import STATS

    names = list(report["sets"])
    lines = ["| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for stat in STATS:
        cells = []
        for n in names:
            s = report["sets"][n][stat]
            cells.append(f"{s['median']:.2f} [{s['q25']:.2f}, {s['q75']:.2f}]" if s.get("n") else "–")
        lines.append(f"| {stat} | " + " | ".join(cells) + " |")
    for kind, gaps in report["gaps"].items():
        lines.append("")
        lines.append(f"{kind} against {report['reference']}, largest gap first (in real IQRs): "
                     + ", ".join(f"{name} {gap:+.2f}" for name, gap in gaps))
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    kinds = tuple(k for k in args.kinds.split(",") if k)
    report = run_hum_stats(args.shared, args.synthetic, kinds, args.seed)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("hum-stats", help="real vs synthetic hums: spectral tilt, breath, onsets, vibrato...",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=None, help="shared data folder (default ../shared/data)")
    p.add_argument("--synthetic", type=int, default=60, help="synthetic performances per kind (default 60)")
    p.add_argument("--kinds", default="hum,whistle", help="synthetic kinds (default hum,whistle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
