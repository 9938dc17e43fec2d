"""Benchmark sets, built by commands from source folders (never committed as audio).

- `build_synthetic(out, SyntheticConfig(tracks=1000))`: test-split songs + synthetic queries,
  padded with distractor masters (incremental: 10k extends 1k).
- `build_mir1k_cross(out, source, distractors=...)`: real MIR-1K singing vs accompaniment + lead masters.
- `build_openset(out, source)`: real hums of songs in none of our catalogues (qbh_demo).

Each builder takes its source folder as a parameter (default ../shared/data/<name>) so the same
construction runs on other recordings laid out the same way.
"""

from training.evaluation.benchsets.common import default_bench_dir, default_source
from training.evaluation.benchsets.mir1k_cross import Mir1kCrossConfig, build_mir1k_cross
from training.evaluation.benchsets.openset import build_openset
from training.evaluation.benchsets.synthetic import (
    BenchsetBusyError,
    SyntheticConfig,
    build_synthetic,
    catalogue_dir,
)

__all__ = [
    "BenchsetBusyError", "Mir1kCrossConfig", "SyntheticConfig", "build_mir1k_cross", "build_openset", "build_synthetic",
    "catalogue_dir", "default_bench_dir", "default_source",
]
