"""Metrics on hand-checked rankings."""

from __future__ import annotations

import math

import pytest

from training.evaluation import metrics as M


def outcome(qid, true, ranked, scores=None, *, kind="hum", no_match=False, duration=7.0, latency=10.0):
    scores = scores if scores is not None else [1.0 - 0.1 * i for i in range(len(ranked))]
    return M.QueryOutcome(qid, true, kind, duration, tuple(ranked), tuple(scores), no_match, latency)


@pytest.fixture
def outcomes():
    return [
        outcome("q1", "a", ["a", "b", "c"], [0.9, 0.5, 0.4]),                # rank 1
        outcome("q2", "b", ["a", "b", "c"], [0.8, 0.7, 0.1], kind="whistle"),  # rank 2
        outcome("q3", "c", ["x%d" % i for i in range(10)] + ["c"], kind="whistle", duration=3.0),  # rank 11
        outcome("q4", "d", ["a", "b", "c", "d", "e"], [0.6, 0.5, 0.4, 0.35, 0.3], no_match=True,
                duration=12.0),                                              # rank 4
        outcome("q5", None, ["a", "b"], [0.7, 0.2], latency=30.0),           # open set, accepted
        outcome("q6", None, ["c"], [0.3], no_match=True, latency=50.0),      # open set, rejected
    ]


def test_ranking_metrics_hand_checked(outcomes):
    m = M.ranking_metrics(outcomes)
    assert m["n"] == 4
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 0 + 1 / 4) / 4)
    assert m["hit@1"] == pytest.approx(1 / 4)
    assert m["hit@5"] == pytest.approx(3 / 4)
    assert m["hit@10"] == pytest.approx(3 / 4)
    assert m["accepted_top1"] == pytest.approx(1 / 4)


def test_rank_and_impostor(outcomes):
    assert [o.rank for o in outcomes] == [1, 2, 11, 4, None, None]
    assert outcomes[0].impostor_score == 0.5
    assert outcomes[1].impostor_score == 0.8


def test_open_set_false_accepts(outcomes):
    m = M.open_set_metrics(outcomes, threshold=0.5)
    assert m["n"] == 2
    assert m["false_accept_rate"] == pytest.approx(0.5)  # q5 answered, q6 said no match
    assert m["false_accept_rate_at_threshold"] == pytest.approx(0.5)  # 0.7 >= 0.5, 0.3 < 0.5


def test_impostor_threshold_and_accepts(outcomes):
    # impostor scores of in-catalogue queries: 0.5, 0.8, 1.0 (x0), 0.6
    thr = M.impostor_threshold(outcomes, target_far=0.0)
    assert thr == pytest.approx(1.0)
    thr = M.impostor_threshold(outcomes, target_far=0.5)
    assert thr == pytest.approx(0.7)  # median of [0.5, 0.6, 0.8, 1.0]
    assert M.accepted_at_threshold(outcomes, 0.85) == pytest.approx(1 / 4)  # only q1 (0.9, rank 1)
    assert M.accepted_at_threshold(outcomes, 0.95) == 0.0


def test_summary_breakdowns(outcomes):
    s = M.summarize(outcomes)
    assert s["by_kind"]["hum"]["n"] == 2  # q1, q4 (q5, q6 are open set)
    assert s["by_kind"]["hum"]["mrr@10"] == pytest.approx((1 + 1 / 4) / 2)
    assert s["by_kind"]["whistle"]["mrr@10"] == pytest.approx((1 / 2 + 0) / 2)
    assert s["by_kind"]["hum"]["open_set"]["n"] == 2
    assert list(s["by_length"]) == ["0-4s", "6-8s", "10-15s"]
    assert s["by_length"]["0-4s"]["mrr@10"] == 0.0
    assert s["rank_histogram"]["1"] == 1 and s["rank_histogram"]["2"] == 1
    assert s["rank_histogram"]["4"] == 1 and s["rank_histogram"]["miss"] == 1
    assert s["latency"]["p50_ms"] == pytest.approx(10.0)
    assert s["latency"]["p95_ms"] == pytest.approx(45.0)  # numpy linear interpolation over 6 values


def test_errors_count_as_misses():
    o = M.QueryOutcome("q", "a", "hum", 5.0, (), (), True, 0.0, error="silent")
    m = M.ranking_metrics([o])
    assert m["mrr@10"] == 0.0 and m["hit@10"] == 0.0 and m["errors"] == 1
    assert M.latency_metrics([o]) == {}


def test_length_bucket_labels():
    assert M.length_bucket(3.9) == "0-4s"
    assert M.length_bucket(4.0) == "4-6s"
    assert M.length_bucket(20.0) == "15s+"
    assert M.length_bucket(float("nan")) == M.UNREADABLE
    assert M.reciprocal_rank(None) == 0.0 and M.reciprocal_rank(10) == pytest.approx(0.1)
    assert M.reciprocal_rank(11) == 0.0
    assert not math.isnan(M.summarize([])["num_queries"])
