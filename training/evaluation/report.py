"""A readable markdown report of one evaluation (report.md), and the combined suite table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.evaluation.metrics import HIT_KS, MRR_CUTOFF

MRR = f"mrr@{MRR_CUTOFF}"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def ms(value: Any) -> str:
    return "–" if value is None else f"{value:.0f} ms"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main_row(name: str, m: dict[str, Any]) -> list[str]:
    ins, ops, lat, cal = m["in_catalogue"], m["open_set"], m["latency"], m["calibration"]
    return [
        f"`{name}`", str(ins.get("n", 0)), fmt(ins.get(MRR)),
        *(pct(ins.get(f"hit@{k}")) for k in HIT_KS),
        pct(ins.get("accepted_top1")),
        f"{ops.get('n', 0)}", pct(ops.get("false_accept_rate")),
        pct(ops.get("false_accept_rate_at_threshold")), fmt(ops.get("threshold") if ops.get("n") else
                                                           cal.get("impostor_threshold")),
        ms(lat.get("p50_ms")), ms(lat.get("p95_ms")),
    ]


MAIN_HEADER = ["system", "in-cat. queries", "MRR@10", *(f"top-{k}" for k in HIT_KS), "accepted top-1",
               "open-set queries", "false accepts (own)", "false accepts (calibrated)", "threshold",
               "p50", "p95"]


def write_report(report: dict[str, Any], path: Path, figures: Sequence[Path] = ()) -> None:
    qs = report["query_set"]
    systems = report["systems"]
    lines = [
        "# Earworm retrieval evaluation",
        "",
        f"- catalogue: `{report['catalogue']}` ({qs['num_tracks']} tracks, "
        f"{qs['with_melody_midi']} with melody MIDI)",
        f"- queries: `{report['queries']}` ({qs['num_queries']} queries: {qs['in_catalogue']} of songs in "
        f"the catalogue, {qs['open_set']} open-set; kinds: "
        + ", ".join(f"{k} {v}" for k, v in qs["kinds"].items()) + ")",
    ]
    if "model" in report:
        idx = report.get("index", {})
        lines.append(f"- model: `{report['model']['version']}` (`{report['model']['dir']}`)")
        lines.append(f"- index: {idx.get('num_tracks')} tracks, {idx.get('num_windows')} windows, "
                     f"{idx.get('kind')} searcher, recall@10 vs brute force {fmt(idx.get('recall_at_10'))} "
                     f"({idx.get('source')})")
    lines.append(f"- created {report['created']}, {report['elapsed_seconds']} s")
    for w in report.get("warnings", []):
        lines.append(f"- **warning**: {w}")
    lines += ["", "## Results (full queries)", "",
              table(MAIN_HEADER, [main_row(n, s["full"]) for n, s in systems.items()]), ""]
    lines += [
        "MRR@10 and top-k count the true song's rank among the ranked answers (in-catalogue queries). "
        "*Accepted top-1*: the top answer is right and not flagged \"no match\". *False accepts (own)*: "
        "open-set queries (song not in the catalogue) whose top answer is not \"no match\", with the "
        "system's own decision (baselines never say no match). *False accepts (calibrated)*: the same "
        "at a score threshold calibrated identically for every system — the score the best *wrong* "
        "track exceeds on only "
        f"{pct(next(iter(systems.values()))['full']['calibration']['target_far'])} of in-catalogue "
        "queries"
        + (" (taken from `" + report["thresholds_from"]["path"] + "`)" if report.get("thresholds_from")
           else " (from this run's in-catalogue queries)")
        + ". Latency: per query, audio decoding excluded, on this machine.",
        "",
    ]
    kinds = sorted({k for s in systems.values() for k in s["full"]["by_kind"]})
    if kinds:
        lines += ["## MRR@10 by query kind", "",
                  table(["system", *kinds],
                        [[f"`{n}`", *(fmt(s["full"]["by_kind"].get(k, {}).get(MRR)) for k in kinds)]
                         for n, s in systems.items()]),
                  "", "Queries per kind: " + ", ".join(
                      f"{k} {next(iter(systems.values()))['full']['by_kind'][k].get('n', 0)}" for k in kinds)
                  + " (in-catalogue).", ""]
    buckets = list(next(iter(systems.values()))["full"]["by_length"].keys())
    if buckets:
        first = next(iter(systems.values()))["full"]["by_length"]
        lines += ["## MRR@10 by query length", "",
                  table(["system", *(f"{b} (n={first[b].get('n', 0)})" for b in buckets)],
                        [[f"`{n}`", *(fmt(s["full"]["by_length"].get(b, {}).get(MRR)) for b in buckets)]
                         for n, s in systems.items()]), ""]
    crops = sorted({k for s in systems.values() for k in s if k.startswith("crop_")},
                   key=lambda k: float(k[len("crop_"):-1]))
    if crops:
        lines += ["## Query-length sweep (each query also cropped at a random start)", "",
                  table(["system", *(c[len("crop_"):] for c in crops), "full"],
                        [[f"`{n}`", *((fmt(s[c]["in_catalogue"].get(MRR)) + f" (n={s[c]['in_catalogue'].get('n', 0)})")
                                      if c in s else "–" for c in crops), fmt(s["full"]["in_catalogue"].get(MRR))]
                         for n, s in systems.items()]),
                  "", "Queries not longer than a crop length are left out of that column.", ""]
    lines += ["## Systems", ""]
    for n, s in systems.items():
        lines.append(f"- `{n}`: {s.get('description', '')}")
    if "melody_dtw" in systems:
        lines.append("- Note: `melody_dtw` is handed the true melody (MIDI) of every master — a privilege "
                     "the learned model, which only hears the polyphonic recordings, does not have.")
    if figures:
        lines += ["", "## Figures", ""]
        for f in figures:
            lines.append(f"![{Path(f).stem}]({Path(f).name})")
    Path(path).write_text("\n".join(lines) + "\n")
