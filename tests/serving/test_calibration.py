"""serving.calibration: threshold math, the calibration file, calibrating a retriever."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from data_gen import constants as C

from serving.calibration import (
    CALIBRATION_FORMAT,
    Calibration,
    CalibrationError,
    calibrate_scores,
    load_calibration,
    qbh_demo_hums,
    save_calibration,
    threshold_at_false_accept_rate,
)
from serving.retrieval_types import RetrievalConfig


def test_threshold_accepts_at_most_the_target_fraction():
    out = np.arange(1, 101) / 100.0  # 0.01 .. 1.00
    t = threshold_at_false_accept_rate(out, 0.05)
    assert np.sum(out >= t) == 5  # exactly 5 % accepted
    assert 0.95 < t <= 0.96 + 1e-12
    assert np.sum(out >= threshold_at_false_accept_rate(out, 0.0)) == 0
    # the rate is a bound: 4.9 % of 100 allows 4
    assert np.sum(out >= threshold_at_false_accept_rate(out, 0.049)) == 4


def test_threshold_with_ties_never_exceeds_target():
    out = np.array([0.9, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0])
    t = threshold_at_false_accept_rate(out, 0.2)  # 2 of 10 allowed, but the top 3 tie
    assert np.mean(out >= t) <= 0.2
    assert t > 0.5 - 1e-12 and np.sum(out >= t) == 0  # all tied scores rejected together


def test_threshold_errors():
    with pytest.raises(CalibrationError, match="no out-of-catalogue"):
        threshold_at_false_accept_rate([], 0.05)
    with pytest.raises(CalibrationError, match="NaN"):
        threshold_at_false_accept_rate([0.1, np.nan], 0.05)
    with pytest.raises(CalibrationError, match="rate"):
        threshold_at_false_accept_rate([0.1], 1.5)


def test_calibrate_scores_reports_true_accept_rate():
    out = np.linspace(0.0, 0.5, 20)  # max 0.5
    ins = np.array([0.9, 0.8, 0.7, 0.45, 0.95, 0.6])
    ok = np.array([True, True, False, True, True, True])
    cal = calibrate_scores(out, ins, ok, aggregation="temporal", target_false_accept_rate=0.0,
                           model_version="m", index_version="i", neighbors_per_window=100)
    assert cal.threshold == pytest.approx(0.5) and cal.threshold > 0.5
    assert cal.false_accept_rate == 0.0
    # accepted: 0.9, 0.8, 0.7(wrong), 0.95, 0.6 -> correct and accepted 4 of 6
    assert cal.true_accept_rate == pytest.approx(4 / 6)
    assert cal.data["in_catalogue"]["accept_rate"] == pytest.approx(5 / 6)
    assert cal.data["in_catalogue"]["wrong_accept_rate"] == pytest.approx(1 / 6)
    assert cal.data["in_catalogue"]["top1_accuracy"] == pytest.approx(5 / 6)
    assert cal.data["out_of_catalogue"]["count"] == 20
    assert cal.method == "open_set_far" and cal.created
    no_in = calibrate_scores(out, aggregation="vote")
    assert no_in.true_accept_rate is None and "in_catalogue" not in no_in.data


def test_save_load_merges_aggregations(tmp_path):
    t = calibrate_scores([0.1, 0.2], aggregation="temporal", model_version="m1", target_false_accept_rate=0.0)
    v = calibrate_scores([0.3, 0.4], aggregation="vote", model_version="m1", target_false_accept_rate=0.0)
    save_calibration(tmp_path, t)
    save_calibration(tmp_path, v)
    doc = json.loads((tmp_path / "calibration.json").read_text())
    assert doc["format"] == CALIBRATION_FORMAT and set(doc["entries"]) == {"temporal", "vote"}
    assert load_calibration(tmp_path, "temporal") == t
    assert load_calibration(tmp_path, "vote").threshold == pytest.approx(0.4)
    # another model's calibration replaces the file instead of mixing entries
    other = calibrate_scores([0.5], aggregation="vote", model_version="m2", target_false_accept_rate=0.0)
    save_calibration(tmp_path, other)
    assert load_calibration(tmp_path, "temporal") is None
    assert load_calibration(tmp_path, "vote").model_version == "m2"
    assert load_calibration(tmp_path / "nowhere", "vote") is None


def test_a_calibration_knows_the_retrieval_settings_its_scores_came_from(tmp_path):
    cal = calibrate_scores([0.1, 0.2], aggregation="temporal", rerank_candidates=50,
                           query_tempo_rates=[1.0, 0.8, 1.25], tempo_view_penalty=0.36,
                           target_false_accept_rate=0.0)
    save_calibration(tmp_path, cal)
    loaded = load_calibration(tmp_path, "temporal")
    assert loaded == cal and loaded.query_tempo_rates == (1.0, 0.8, 1.25)
    views = RetrievalConfig(rerank_candidates=50, query_tempo_rates=(1.0, 0.8, 1.25), tempo_view_penalty=0.36)
    assert loaded.retrieval_differs(views) is None
    assert "tempo views" in loaded.retrieval_differs(replace(views, query_tempo_rates=(1.0,)))
    assert "penalty" in loaded.retrieval_differs(replace(views, tempo_view_penalty=0.0))
    assert "re-ranking 50" in loaded.retrieval_differs(replace(views, rerank_candidates=0))
    assert "re-ranking 50" in loaded.retrieval_differs(replace(views, aggregation="vote"))  # vote re-ranks none
    # a calibration from before tempo views existed was made with the query as sung only
    old = calibrate_scores([0.1], aggregation="temporal", rerank_candidates=50)
    assert old.retrieval_differs(replace(views, query_tempo_rates=(1.0,))) is None
    assert old.retrieval_differs(replace(views, query_tempo_rates=(1.0, 0.8))) is not None
    # one made when the other tempo views' windows were 1 s apart (before they were 2 s) no longer fits
    assert loaded.tempo_view_hop_seconds == C.TEMPO_VIEW_WINDOW_HOP_SECONDS == 2.0
    one_second = replace(loaded, tempo_view_hop_seconds=None)
    assert "windows every 1 s" in one_second.retrieval_differs(views)
    assert replace(old, tempo_view_hop_seconds=None).retrieval_differs(replace(views, query_tempo_rates=(1.0,))) is None


def test_corrupt_calibration_file(tmp_path):
    (tmp_path / "calibration.json").write_text("{")
    with pytest.raises(CalibrationError, match="unreadable"):
        load_calibration(tmp_path, "temporal")
    (tmp_path / "calibration.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(CalibrationError, match="format"):
        load_calibration(tmp_path, "temporal")
    (tmp_path / "calibration.json").write_text(json.dumps(
        {"format": CALIBRATION_FORMAT, "entries": {"temporal": {"threshold": 0.3}}}))
    with pytest.raises(CalibrationError, match="incomplete"):
        load_calibration(tmp_path, "temporal")
    # saving over a corrupt file works
    save_calibration(tmp_path, calibrate_scores([0.2], aggregation="temporal"))
    assert isinstance(load_calibration(tmp_path, "temporal"), Calibration)


def test_qbh_demo_hums_are_listed(shared_data_dir):
    hums = qbh_demo_hums(shared_data_dir)
    assert len(hums) >= 100 and all(p.suffix == ".ogg" and p.is_file() for p in hums[:5])


def test_calibrate_retriever_on_simulated_embeddings():
    """calibrate_scores on a retriever's real outputs: simulated catalogue, in/out queries."""
    pytest.importorskip("scann")
    from serving.apps.bench_aggregation import AggregationSimConfig, compare_simulated

    figures = compare_simulated(AggregationSimConfig(tracks=60, held_out_tracks=20, queries=40,
                                                     out_of_catalogue_queries=40, min_seconds=30,
                                                     max_seconds=60, motifs=5, hubs=2, seed=1))
    for agg in ("temporal", "vote"):
        f = figures[agg]
        assert f["in_catalogue_queries"] == 40 and f["out_of_catalogue_queries"] == 40
        assert f["open_set"]["false_accept_rate"] <= 0.05
        assert 0.0 <= f["open_set"]["true_accept_rate"] <= f["top1_accuracy"] <= 1.0
        assert f["top1_accuracy"] > 0.5  # the simulated queries are identifiable


def test_false_accepts_are_reported_per_source():
    scores = [0.1, 0.2, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]
    groups = ["qbh_demo"] * 3 + ["no_melody"] * 6 + ["speech"]
    cal = calibrate_scores(scores, aggregation="temporal", target_false_accept_rate=0.34, out_groups=groups)
    by_group = cal.data["false_accepts_by_group"]
    assert by_group["qbh_demo"] == {"count": 3, "false_accept_rate": pytest.approx(1 / 3), "sets_threshold": True}
    assert by_group["no_melody"] == {"count": 6, "false_accept_rate": 0.0, "sets_threshold": True}
    # one item cannot measure a 34 % rate: reported, but it does not set the threshold
    assert by_group["speech"] == {"count": 1, "false_accept_rate": 1.0, "sets_threshold": False}
    assert 0.2 < cal.threshold < 0.5 and cal.false_accept_rate == pytest.approx(1 / 3)
    # pooled, the easy zeros would let two of the three hums through (3 of 10 accepted <= 34 %)
    assert calibrate_scores(scores, aggregation="temporal", target_false_accept_rate=0.34).threshold < 0.2
    with pytest.raises(CalibrationError, match="out_groups"):
        calibrate_scores([0.1, 0.2], aggregation="temporal", out_groups=["a"])


def test_calibrate_command_stops_inputs_with_no_melody(index_dir, untrained_model_dir, tmp_path, capsys):
    """`earworm calibrate` scores inputs with no melody at 0 (the gate stops them, as in the server)."""
    import shutil

    from tests.serving.conftest import run_cli

    index = tmp_path / "index"
    shutil.copytree(index_dir, index)
    assert run_cli(["calibrate", "--index", str(index), "--model", str(untrained_model_dir), "--no-qbh-demo",
                    "--aggregations", "temporal"]) == 0
    out = capsys.readouterr().out
    assert "no_melody: false-accept 0.000" in out
    cal = load_calibration(index, "temporal")
    stopped = cal.data["sources"]["stopped_by_melody_gate"]["no_melody"]
    assert cal.data["false_accepts_by_group"]["no_melody"]["count"] >= 10 and stopped >= 10
