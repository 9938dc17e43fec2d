"""PNG figures of an evaluation (matplotlib, Agg backend: no display needed).

- rank_histogram.png: for each system, how many in-catalogue queries found their song at rank
  1..10, and how many missed it (not in the top 10);
- mrr_vs_length.png: MRR@10 against query length, from the crop sweep (`--crop-seconds`) when the
  run has one, else from the query-length buckets of the full queries.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RANK_HISTOGRAM_PNG = "rank_histogram.png"
MRR_VS_LENGTH_PNG = "mrr_vs_length.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_rank_histogram(report: dict[str, Any], path: Path) -> Path | None:
    systems = report.get("systems", {})
    hists = {name: s["full"]["rank_histogram"] for name, s in systems.items()
             if s.get("full", {}).get("in_catalogue", {}).get("n")}
    if not hists:
        return None
    plt = _pyplot()
    labels = list(next(iter(hists.values())).keys())
    x = np.arange(len(labels))
    width = 0.8 / len(hists)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, hist) in enumerate(hists.items()):
        total = max(1, sum(hist.values()))
        ax.bar(x + (i - (len(hists) - 1) / 2) * width, [hist[k] / total for k in labels], width, label=name)
    ax.set_xticks(x, labels)
    ax.set_xlabel("rank of the true song (miss = not in the top 10)")
    ax.set_ylabel("share of in-catalogue queries")
    ax.set_title("Rank of the true song")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _length_points(system: dict[str, Any]) -> tuple[list[float], list[float], str]:
    crops = [(float(k[len("crop_"):-1]), v) for k, v in system.items() if k.startswith("crop_")]
    crops = [(c, v["in_catalogue"].get("mrr@10")) for c, v in sorted(crops)
             if v.get("in_catalogue", {}).get("n")]
    if crops:
        return [c for c, _ in crops], [m for _, m in crops], "query length (cropped), s"
    xs, ys = [], []
    for label, m in system.get("full", {}).get("by_length", {}).items():
        if not m.get("n") or not label[0].isdigit():
            continue
        bounds = label.rstrip("s+").split("-")
        lo = float(bounds[0])
        hi = float(bounds[1]) if len(bounds) > 1 else lo + 5.0
        xs.append((lo + hi) / 2)
        ys.append(m["mrr@10"])
    return xs, ys, "query length (bucket centre), s"


def plot_mrr_vs_length(report: dict[str, Any], path: Path) -> Path | None:
    systems = report.get("systems", {})
    series = {name: _length_points(s) for name, s in systems.items()}
    series = {k: v for k, v in series.items() if v[0]}
    swept = {k: v for k, v in series.items() if v[2].startswith("query length (cropped)")}
    if swept:  # do not mix cropped sweeps with length buckets on one axis
        series = swept
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xlabel = ""
    for name, (xs, ys, xlabel) in series.items():
        (line,) = ax.plot(xs, ys, marker="o", label=name)
        full = systems[name].get("full", {})
        if swept and full.get("in_catalogue", {}).get("n") and full.get("median_duration_s"):
            ax.plot([full["median_duration_s"]], [full["in_catalogue"]["mrr@10"]], marker="*", markersize=11,
                    color=line.get_color(), linestyle="none")
    if swept:
        ax.plot([], [], marker="*", color="gray", linestyle="none", label="full queries (median length)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("MRR@10")
    ax.set_ylim(0, 1)
    ax.set_title("MRR@10 against query length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the figures that have data; returns their paths."""
    out_dir = Path(out_dir)
    written = []
    for fn, name in ((plot_rank_histogram, RANK_HISTOGRAM_PNG), (plot_mrr_vs_length, MRR_VS_LENGTH_PNG)):
        p = fn(report, out_dir / name)
        if p is not None:
            written.append(p)
    return written
