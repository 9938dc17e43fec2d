"""Benchmark sets, built by commands from source folders (never committed as audio).

- `build_synthetic(out, SyntheticConfig(tracks=1000))`: test-split songs + synthetic queries,
  padded with distractor masters (incremental: 10k extends 1k).
- `build_mir1k_cross(out, source, distractors=...)`: real MIR-1K singing vs accompaniment + lead masters.
- `build_openset(out, source)`: real hums of songs in none of our catalogues (qbh_demo).
- `build_zalo(out, source, distractors=...)`: real phone hums against the real pop recordings they hum.
- `build_adc2004(out, source, distractors=...)`: real polyphonic masters with annotated melody (ADC 2004),
  synthetic hum/whistle/tone queries of it, and the pitch tracker's accuracy on the mixes.
- `rendered_distractors(bench_dir, n)`: the manifest of n rendered masters that pad the real sets.

Each builder takes its source folder as a parameter (default ../shared/data/<name>) so the same
construction runs on other recordings laid out the same way.
"""

from training.evaluation.benchsets.adc2004 import Adc2004Config, build_adc2004, mix_pitch_accuracy
from training.evaluation.benchsets.common import default_bench_dir, default_source
from training.evaluation.benchsets.mir1k_cross import Mir1kCrossConfig, build_mir1k_cross
from training.evaluation.benchsets.openset import build_openset
from training.evaluation.benchsets.synthetic import (
    BenchsetBusyError,
    SyntheticConfig,
    build_synthetic,
    catalogue_dir,
    rendered_distractors,
)
from training.evaluation.benchsets.zalo import DEFAULT_DISTRACTORS, build_zalo

__all__ = [
    "Adc2004Config", "build_adc2004", "mix_pitch_accuracy",
    "BenchsetBusyError", "DEFAULT_DISTRACTORS", "Mir1kCrossConfig", "SyntheticConfig", "build_mir1k_cross",
    "build_openset", "build_synthetic", "build_zalo", "catalogue_dir", "default_bench_dir", "default_source",
    "rendered_distractors",
]
