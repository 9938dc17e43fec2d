"""`earworm eval` end to end on a 3-track catalogue, and its errors for bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_gen.manifest import ManifestError
from training.evaluation.runner import EvalConfig, evaluate, load_inputs


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    from training.export import export_untrained

    return export_untrained(tmp_path_factory.mktemp("model") / "untrained", seed=0)


def _config(tiny_bench, out: Path, **kw) -> EvalConfig:
    return EvalConfig(catalogue=tiny_bench["catalogue"], queries=tiny_bench["queries"], out_dir=out, **kw)


def test_eval_end_to_end_writes_metrics_report_and_plots(tiny_bench, untrained_model, crepe_weights, tmp_path):
    out = tmp_path / "eval"
    report = evaluate(_config(tiny_bench, out, model_dir=untrained_model,
                              baselines=("note_histogram", "melody_dtw"), aggregations=("temporal", "vote"),
                              crop_seconds=(5.0,), indexer="inprocess"))
    for name in ("metrics.json", "report.md", "outcomes.jsonl", "rank_histogram.png", "mrr_vs_length.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["systems"]) == {"earworm-temporal", "earworm-vote", "note_histogram", "melody_dtw"}
    for name, s in metrics["systems"].items():
        full = s["full"]
        assert full["in_catalogue"]["n"] == 2 and full["open_set"]["n"] == 1, name
        assert 0.0 <= full["in_catalogue"]["mrr@10"] <= 1.0
        assert full["latency"]["p50_ms"] > 0
        assert s["crop_5s"]["num_queries"] == 3  # every query is longer than 5 s
    # the clean tone queries are easy for the baselines (they rank the true song first)
    assert metrics["systems"]["melody_dtw"]["full"]["in_catalogue"]["hit@1"] == 1.0
    assert metrics["index"]["num_tracks"] == 3 and metrics["index"]["source"] == "built"
    text = (out / "report.md").read_text()
    assert "MRR@10" in text and "melody_dtw" in text and "privilege" in text
    assert report["query_set"]["kinds"] == {"tone": 2, "tone_transposed": 1}

    # a second run reuses the cached index and the baselines' cached answers
    again = evaluate(_config(tiny_bench, out, model_dir=untrained_model, baselines=("melody_dtw",),
                             crop_seconds=(5.0,), plots=False))
    assert again["index"]["source"] == "cached"
    assert (again["systems"]["melody_dtw"]["full"]["in_catalogue"]
            == metrics["systems"]["melody_dtw"]["full"]["in_catalogue"])

    # an index cached under older searcher settings is re-tuned from its stored embeddings (not re-embedded)
    meta_file = out / "index" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["searcher"].pop("tune_k")
    meta["config"]["searcher"]["target_recall"] = 0.95
    meta_file.write_text(json.dumps(meta))
    retuned = evaluate(_config(tiny_bench, out, model_dir=untrained_model, plots=False))
    assert retuned["index"]["source"] == "re-tuned"
    assert retuned["index"]["num_windows"] == metrics["index"]["num_windows"]
    assert (retuned["systems"]["earworm-temporal"]["full"]["in_catalogue"]
            == metrics["systems"]["earworm-temporal"]["full"]["in_catalogue"])
    assert evaluate(_config(tiny_bench, out, model_dir=untrained_model, plots=False))["index"]["source"] == "cached"


def test_eval_master_hop_flag_builds_that_index_and_keys_its_cache(tiny_bench, untrained_model, tmp_path, capsys):
    """`earworm eval --master-hop-seconds 2`: the index it builds has the 2 s grid and the cache key
    records it, so a 1 s run on the same OUT rebuilds instead of reusing the 2 s index."""
    from serving.apps.earworm import main

    out = tmp_path / "eval"
    args = ["eval", "--catalogue", str(tiny_bench["catalogue"]), "--queries", str(tiny_bench["queries"]),
            "--model", str(untrained_model), "--indexer", "inprocess", "--out", str(out)]

    def run(*extra: str) -> dict:
        assert main(args + list(extra)) == 0, capsys.readouterr().err
        return json.loads((out / "metrics.json").read_text())["index"]

    two = run("--master-hop-seconds", "2")
    assert two["source"] == "built" and two["master_hop_seconds"] == 2.0
    assert json.loads((out / "eval_index_key.json").read_text())["master_window_hop_s"] == 2.0
    assert run("--master-hop-seconds", "2")["source"] == "cached"
    one = run()
    assert one["source"] == "built" and one["master_hop_seconds"] == 1.0
    assert two["num_windows"] < one["num_windows"]
    with pytest.raises(SystemExit):  # argparse refuses a non-positive hop
        main(args + ["--master-hop-seconds", "0"])


def test_malformed_manifest_is_a_manifest_error(tiny_bench, tmp_path):
    bad = tmp_path / "queries.csv"
    bad.write_text("query_id,file\nq1,a.wav\n")
    with pytest.raises(ManifestError, match="missing column"):
        load_inputs(EvalConfig(catalogue=tiny_bench["catalogue"], queries=bad, out_dir=tmp_path,
                               baselines=("note_histogram",)))


def test_missing_query_file_is_a_manifest_error(tiny_bench, tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(tiny_bench["root"], root)
    (root / "queries" / "q_b.wav").unlink()
    with pytest.raises(ManifestError, match="q_b.*not found"):
        load_inputs(EvalConfig(catalogue=root / "manifest.csv", queries=root / "queries.csv", out_dir=tmp_path,
                               baselines=("note_histogram",)))


def test_unknown_track_id_is_a_manifest_error(tiny_bench, tmp_path):
    q = tmp_path / "queries.csv"
    q.write_text(f"query_id,path,track_id\nq1,{tiny_bench['root'] / 'queries' / 'q_a.wav'},no_such_song\n")
    with pytest.raises(ManifestError, match="not in the catalogue"):
        load_inputs(EvalConfig(catalogue=tiny_bench["catalogue"], queries=q, out_dir=tmp_path,
                               baselines=("note_histogram",)))


def test_cli_reports_errors_before_heavy_work(tiny_bench, tmp_path, capsys):
    from serving.apps.earworm import main

    code = main(["eval", "--catalogue", str(tmp_path / "nope.csv"), "--queries", str(tiny_bench["queries"]),
                 "--no-model", "--baselines", "note_histogram", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "manifest not found" in capsys.readouterr().err
    code = main(["eval", "--catalogue", str(tiny_bench["catalogue"]), "--queries", str(tiny_bench["queries"]),
                 "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "not an exported Earworm model" in capsys.readouterr().err


def test_config_validation(tiny_bench, tmp_path):
    with pytest.raises(ValueError, match="unknown baseline"):
        _config(tiny_bench, tmp_path, baselines=("nope",))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        _config(tiny_bench, tmp_path)
    with pytest.raises(ValueError, match="aggregation"):
        _config(tiny_bench, tmp_path, model_dir=tmp_path, aggregations=("max",))
    with pytest.raises(ValueError, match="rerank_candidates"):
        _config(tiny_bench, tmp_path, model_dir=tmp_path, rerank_candidates=-1)
    with pytest.raises(ValueError, match="master hop"):
        _config(tiny_bench, tmp_path, model_dir=tmp_path, master_hop_seconds=0.0)
