"""`earworm gate-check`: how often the melody gate lets real queries through, and stops the rest.

Runs `serving.melody_gate` (no model needed) over
- real queries that hold a melody: the hums of ../shared/data/qbh_demo and zalo_mini, and the sung
  MIR-1K voice clips (every one must reach retrieval; the target is at least 95 %);
- inputs with no melody (`data_gen.synth.no_melody`: tones, a constant, two samples at 1 Hz, noise,
  clicks, coughs, a chord, espeak-ng speech), which must all be answered "no melody";
and prints, per set, how many passed, the figures of the ones that did not, and the gate's time.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

def _real_files(shared: Path, limit: int | None) -> dict[str, list[Path]]:
    """The real recordings that hold a melody, per set (sets whose folder is absent are left out)."""
    from data_gen.manifest import read_csv_rows, read_queries
    from serving.calibration import qbh_demo_hums

    out: dict[str, list[Path]] = {}
    try:
        out["qbh_demo"] = qbh_demo_hums(shared)
    except FileNotFoundError:
        pass
    if (shared / "zalo_mini" / "queries.csv").is_file():
        out["zalo_mini hums"] = [q.path for q in read_queries(shared / "zalo_mini" / "queries.csv")]
    if (shared / "mir1k" / "manifest.csv").is_file():
        out["mir1k voices"] = [shared / "mir1k" / "audio" / f"{r['clip_id']}.voice.ogg"
                               for r in read_csv_rows(shared / "mir1k" / "manifest.csv", ("clip_id",))]
    return {name: files[:limit] if limit else files for name, files in out.items()}


def run_gate_check(shared: Path | None = None, limit: int | None = None, config=None) -> dict[str, Any]:
    """The figures, as a dict (also what `--json` prints)."""
    from data_gen import constants as C
    from data_gen.audio import AudioError, load_audio
    from data_gen.paths import shared_data_dir
    from data_gen.synth.no_melody import signals, speech
    from serving.melody_gate import MelodyGate, MelodyGateConfig

    gate = MelodyGate(config or MelodyGateConfig())
    shared = Path(shared) if shared else shared_data_dir()
    sets: dict[str, dict[str, np.ndarray | Path]] = {
        name: {str(p): p for p in files} for name, files in _real_files(shared, limit).items()}
    sets["no melody: signals"] = dict(signals())
    sets["no melody: speech"] = dict(speech())
    report: dict[str, Any] = {"config": asdict(gate.config), "sets": {}}
    # gate time is reported per 10 s of audio (the gate's cost grows with the length)
    for name, items in sets.items():
        passed, stopped, let_through, ms, unreadable = 0, [], [], [], 0
        for key, item in items.items():
            try:
                audio = load_audio(item, reject_silence=False) if isinstance(item, Path) else item
            except AudioError:
                unreadable += 1
                continue
            t0 = time.perf_counter()
            check = gate.check(audio)
            ms.append((time.perf_counter() - t0) * 1e3 * 10 * C.SAMPLE_RATE / audio.size)
            label = Path(key).name if isinstance(item, Path) else key
            if check.has_melody:
                passed += 1
                let_through.append({"input": label, **check.to_dict()})
            else:
                stopped.append({"input": label, **check.to_dict()})
        n = len(items) - unreadable
        report["sets"][name] = {"n": n, "passed": passed, "pass_rate": passed / n if n else None,
                                "unreadable": unreadable, "ms_per_10s": float(np.median(ms)) if ms else None,
                                "stopped": stopped, "let_through": let_through,
                                "expect": "no melody" if name.startswith("no melody") else "melody"}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'set':<22} {'expect':<10} {'n':>4} {'reach retrieval':>16} {'gate ms / 10 s':>15}"]
    for name, r in report["sets"].items():
        rate = "-" if r["pass_rate"] is None else f"{r['passed']} ({100 * r['pass_rate']:.1f} %)"
        ms = "-" if r["ms_per_10s"] is None else f"{r['ms_per_10s']:.1f}"
        lines.append(f"{name:<22} {r['expect']:<10} {r['n']:>4} {rate:>16} {ms:>15}")
    for name, r in report["sets"].items():
        if r["expect"] == "melody":
            lines += [f"  stopped ({name}): {s['input']}: {s['why']}" for s in r["stopped"]]
        else:
            lines += [f"  let through ({name}, the no-match threshold decides): {s['input']} "
                      f"(notes {s['distinct_notes']}, phrases {s['phrase_seconds']:.2f} s)" for s in r["let_through"]]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    report = run_gate_check(args.shared, args.limit)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("gate-check", help="measure the melody gate on real queries and no-melody inputs",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, help="shared data folder (default ../shared/data)")
    p.add_argument("--limit", type=int, help="at most N files of each real set")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_run)
