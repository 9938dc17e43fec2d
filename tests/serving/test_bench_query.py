"""`earworm bench-query`: every stage of one query timed, on a real (untrained) model and index."""

from __future__ import annotations


def test_breakdown_times_every_stage_of_a_three_view_query(untrained_model_dir, tmp_path):
    from serving.apps.bench_load import build_synthetic_index
    from serving.apps.bench_query import STAGES, format_breakdown, run_breakdown
    from serving.embedder import ModelMetadata

    version = ModelMetadata.read(untrained_model_dir).version
    index = build_synthetic_index(tmp_path / "syn", tracks=30, model_version=version, windows_per_track=20, seed=0)
    b = run_breakdown(untrained_model_dir, index, queries=3, query_seconds=10.0, compare_per_window=True)
    assert b.tempo_views == (1.0, 0.8, 1.25)
    assert b.windows == 7 + 3 + 6  # 10 s as sung (windows 1 s apart), 8 s and 12.5 s views (2 s apart)
    assert set(b.stage_ms) == set(STAGES) and all(v >= 0 for v in b.stage_ms.values())
    assert b.stage_ms["body"] > 0 and b.stage_ms["front-end"] > 0 and b.stage_ms["tempo views"] > 0
    assert b.per_window_embed_ms is not None and b.per_window_embed_ms > 0
    text = format_breakdown(b)
    assert all(s in text for s in STAGES) and "16 windows in 3 tempo view(s)" in text
    # the machine's speed beside the body's, so that runs on machines of different speed compare
    assert b.matmul_gflops > 0 and b.body_mflop_per_window > 0
    assert 0.02 < b.body_gflops / b.matmul_gflops < 5  # the body's speed in GFLOP/s too, not in other units
    assert f"machine: one-thread float32 matmul {b.matmul_gflops:.1f} GFLOP/s" in text
    assert f"body {b.body_mflop_per_window:.1f} MFLOP per window x 16 = " in text
