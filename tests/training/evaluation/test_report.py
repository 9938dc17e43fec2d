"""Report, plots and the suite table from metrics dicts (no audio, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.evaluation import metrics as M
from training.evaluation.plots import write_plots
from training.evaluation.report import write_report
from training.evaluation.suite import SuiteConfig, suite_markdown


def _report(num_tracks: int, open_only: bool = False) -> dict:
    outs = [M.QueryOutcome("o1", None, "hum_real", 8.0, ("a",), (0.4,), False, 20.0)]
    if not open_only:
        outs += [M.QueryOutcome("q1", "a", "hum", 7.0, ("a", "b"), (0.9, 0.3), False, 10.0),
                 M.QueryOutcome("q2", "b", "sung", 9.0, ("a", "b"), (0.5, 0.45), True, 12.0)]
    full = M.summarize(outs, open_set_threshold=0.35)
    full["median_duration_s"] = 8.0
    crop = M.summarize([o for o in outs if o.in_catalogue])
    systems = {name: {"description": name, "full": full, "crop_3s": crop} for name in ("earworm-temporal", "melody_dtw")}
    return {"catalogue": "cat.csv", "queries": "q.csv", "created": "now", "elapsed_seconds": 1.0,
            "query_set": {"num_queries": len(outs), "in_catalogue": len(outs) - 1, "open_set": 1,
                          "kinds": {"hum": 1}, "num_tracks": num_tracks, "with_melody_midi": num_tracks},
            "model": {"version": "m-1", "dir": "d"}, "index": {"num_tracks": num_tracks}, "systems": systems}


def test_report_and_plots_are_written(tmp_path: Path):
    rep = _report(3)
    figures = write_plots(rep, tmp_path)
    assert {f.name for f in figures} == {"rank_histogram.png", "mrr_vs_length.png"}
    write_report(rep, tmp_path / "report.md", figures=figures)
    text = (tmp_path / "report.md").read_text()
    assert "| `earworm-temporal` | 2 | 0.750 | 50.0% |" in text  # MRR (1 + 1/2) / 2, top-1 1 of 2
    assert "privilege" in text and "![rank_histogram](rank_histogram.png)" in text


def test_suite_table_rows(tmp_path: Path):
    cfg = SuiteConfig(model_dir=tmp_path, out_dir=tmp_path)
    text = suite_markdown({"synthetic-1k": _report(1000), "openset": _report(1000, open_only=True)}, cfg, 60.0,
                          {"synthetic-10k": "being built"})
    assert ("| synthetic-1k | 1,000 | `earworm-temporal` | 2 | 0.750 | 50.0% | 100.0% | 100.0% | 50.0% | "
            "100.0% / 100.0% |") in text
    assert "| openset | 1,000 | `melody_dtw` | 1 | – | – | – | – | – | 100.0% / 100.0% |" in text
    assert "synthetic-10k: not run — being built" in text
    assert "MRR@10 against query length" in text


def test_suite_reuses_an_index_only_when_built_at_its_hop_and_store(tmp_path: Path):
    import json

    from serving.index import IndexMetadata
    from training.evaluation.suite import _index_of

    def write(hop: float, store: str) -> None:
        meta = IndexMetadata("v", "m", 1, 1, 4, {"searcher": {"store_dtype": store}}, "now",
                             {"master_hop_seconds": hop})
        (tmp_path / "synthetic-1k" / "index").mkdir(parents=True, exist_ok=True)
        (tmp_path / "synthetic-1k" / "index" / "metadata.json").write_text(json.dumps(meta.to_json()))

    assert _index_of(SuiteConfig(model_dir=tmp_path, out_dir=tmp_path), "synthetic-1k") is None  # none yet
    write(1.0, "float32")
    assert _index_of(SuiteConfig(model_dir=tmp_path, out_dir=tmp_path), "synthetic-1k") is not None
    assert _index_of(SuiteConfig(model_dir=tmp_path, out_dir=tmp_path, master_hop_seconds=2.0), "synthetic-1k") is None
    assert _index_of(SuiteConfig(model_dir=tmp_path, out_dir=tmp_path, store_dtype="int8"), "synthetic-1k") is None
    write(2.0, "int8")
    assert _index_of(SuiteConfig(model_dir=tmp_path, out_dir=tmp_path, master_hop_seconds=2.0,
                                 store_dtype="int8"), "synthetic-1k") is not None
    with pytest.raises(ValueError):
        SuiteConfig(model_dir=tmp_path, out_dir=tmp_path, store_dtype="float16")


def test_eval_suite_cli_takes_the_hop_and_store(tmp_path: Path):
    from serving.apps.earworm import build_parser

    args = build_parser().parse_args(["eval-suite", "--out", str(tmp_path), "--master-hop-seconds", "2",
                                      "--store-dtype", "int8"])
    assert args.master_hop_seconds == 2.0 and args.store_dtype == "int8"


def test_cli_lists_the_commands(capsys):
    from serving.apps.earworm import build_parser

    help_text = build_parser().format_help()
    for command in ("eval", "benchset", "eval-suite"):
        assert command in help_text


def test_suite_end_to_end_on_a_tiny_bench_folder(tiny_bench, tmp_path: Path):
    """The suite's flow (1k -> 10k and mir1k-cross extend the 1k index, openset reuses it with the
    1k thresholds) on a bench folder laid out like ARTIFACTS/benchsets, holding 3-4 track sets."""
    import shutil

    from data_gen.manifest import Track, read_catalogue, read_queries, write_catalogue, write_queries
    from training.evaluation.benchsets import catalogue_dir
    from training.evaluation.suite import run_suite
    from training.export import export_untrained

    bench = tmp_path / "bench"
    tracks = read_catalogue(tiny_bench["catalogue"])
    queries = read_queries(tiny_bench["queries"])
    write_catalogue(catalogue_dir(bench / "synthetic", 1000) / "manifest.csv", tracks[:2])
    write_catalogue(catalogue_dir(bench / "synthetic", 10000) / "manifest.csv", tracks)
    write_queries(bench / "synthetic" / "queries" / "queries.csv", [q for q in queries if q.track_id != "song_c"])
    extra = Track("extra", "Extra", "X", tracks[2].path, tracks[2].melody_midi)
    write_catalogue(bench / "mir1k-cross" / "catalogue" / "manifest.csv", tracks[:2] + [extra])
    write_queries(bench / "mir1k-cross" / "queries" / "queries.csv", queries[:1])
    write_queries(bench / "openset" / "queries.csv", [q for q in queries if q.track_id is None])
    write_catalogue(bench / "zalo" / "catalogue" / "manifest.csv", [extra] + tracks[:2])  # a real set
    write_queries(bench / "zalo" / "queries" / "queries.csv", queries[1:2])
    model = export_untrained(tmp_path / "model")
    out = tmp_path / "suite"
    text = run_suite(SuiteConfig(model_dir=model, out_dir=out, bench_dir=bench, baselines=(),
                                 aggregations=("temporal",), crop_seconds=(5.0,), build_missing=False,
                                 indexer="inprocess", sets=("zalo", "synthetic-1k", "synthetic-10k",
                                                            "mir1k-cross", "openset")))
    for name in ("zalo", "synthetic-1k", "synthetic-10k", "mir1k-cross", "openset"):
        assert (out / name / "metrics.json").is_file(), name
        assert f"| {name} |" in text
    assert text.index("| zalo |") < text.index("| synthetic-1k |")  # the real sets lead
    assert (out / "zalo" / "failures.md").is_file()  # with the failure table
    assert "| synthetic-10k | 3 | `earworm-temporal` | 2 |" in text
    import json

    m10k = json.loads((out / "synthetic-10k" / "metrics.json").read_text())
    assert m10k["index"]["num_tracks"] == 3  # the 1k index (2 tracks) + 1 added track
    opens = json.loads((out / "openset" / "metrics.json").read_text())
    assert opens["index"]["source"] == "given" and opens["thresholds_from"]["thresholds"]
    assert (out / "suite.md").read_text() == text
    shutil.rmtree(out / "synthetic-1k" / "index")  # keep tmp small
