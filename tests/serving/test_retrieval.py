"""serving.retrieval: aggregation of window hits into ranked tracks, thresholds, end to end."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("scann")

from data_gen import constants as C
from serving.calibration import calibrate_scores, save_calibration
from serving.index import TrackInfo, WindowIndex
from serving.window_store import WindowHits
from tests.conftest import sung_tone
from serving.retrieval import CandidateWindows, Retriever, aggregate_temporal, aggregate_vote, rerank_temporal
from serving.retrieval_types import DEFAULT_NO_MATCH_THRESHOLD, ModelMismatchError, QueryEmbedding, RetrievalConfig, parse_tempo_rates

DIM = C.EMBEDDING_DIM
Q = 12  # query windows, 1 s apart (long enough for a 25 % tempo drift to exceed the bin tolerance)


def e(i: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i] = 1.0
    return v


def mix(i: int, sim: float, other: int) -> np.ndarray:
    """A unit vector with dot product `sim` with e(i) and 0 with every other query window."""
    return sim * e(i) + np.sqrt(1 - sim**2) * e(other)


class FakeEmbedder:
    """The Embedder interface, returning fixed query-window embeddings (one per second)."""

    version = "fake-model-1"
    dim = DIM

    def __init__(self, query: np.ndarray):
        self.query = query
        self.calls = 0

    def embed_query(self, audio, tempo_rates=(1.0,)):
        """The fixed windows in the first view (as sung); other views get unrelated windows."""
        self.calls += 1
        self.rates = tuple(tempo_rates)
        n = self.query.shape[0]
        emb = np.concatenate([self.query] + [np.tile(e(127), (n, 1)) for _ in tempo_rates[1:]])
        offsets = np.tile(np.arange(n, dtype=np.float32) * C.QUERY_WINDOW_HOP_SECONDS, len(tempo_rates))
        return QueryEmbedding(emb, offsets, np.repeat(np.arange(len(tempo_rates)), n))


def scenario_index(model_version: str = FakeEmbedder.version) -> WindowIndex:
    """Query windows are e(0..Q-1). Tracks:
    - "aligned": windows at 10.. s matching query windows 0..Q-1 in time order, similarity 0.8;
    - "scrambled": windows matching every query window better (0.9) but in reverse order, far apart;
    - "tempo": windows at 5 + 1.33 * i matching query window i with 0.7 (sung 25 % slower);
    - "noise": unrelated windows.
    """
    embs, rows, offs = [], [], []
    for i in range(Q):
        embs.append(mix(i, 0.8, 20 + i)); rows.append(0); offs.append(10.0 + i)
    for i in range(Q):  # backwards in time, far apart: no two agree on an alignment
        embs.append(mix(i, 0.9, 40 + i)); rows.append(1); offs.append(200.0 - 17.0 * i)
    for i in range(Q):
        embs.append(mix(i, 0.7, 60 + i)); rows.append(2); offs.append(5.0 + 1.33 * i)
    for j in range(20):
        embs.append(e(80 + j)); rows.append(3); offs.append(2.0 * j)
    tracks = [TrackInfo("aligned", "Aligned", "A"), TrackInfo("scrambled", "Scrambled", "B"),
              TrackInfo("tempo", "Tempo", "C"), TrackInfo("noise", "Noise", "D")]
    return WindowIndex.build(np.stack(embs), np.array(rows), np.array(offs, np.float32), tracks, model_version)


@pytest.fixture(scope="module")
def index() -> WindowIndex:
    return scenario_index()


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder(np.stack([e(i) for i in range(Q)]))


def audio(seconds: float = 15.0) -> np.ndarray:
    """A sung-like tune of `seconds` (the fake embedders ignore it; the melody gate lets it through)."""
    notes = (57, 60, 64, 62, 65, 67, 64, 60) * int(np.ceil(seconds / 4))
    return sung_tone(notes, note_s=0.5)[: int(seconds * C.SAMPLE_RATE)]


def test_temporal_ranks_time_consistent_track_first_where_vote_does_not(index, embedder):
    temporal = Retriever(embedder, index, RetrievalConfig(aggregation="temporal", no_match_threshold=0.5))
    vote = temporal.with_config(aggregation="vote")
    t = temporal.identify(audio())
    v = vote.identify(audio())
    assert [m.track_id for m in v.matches][:2] == ["scrambled", "aligned"]
    assert v.matches[0].score == pytest.approx(0.9, abs=1e-4)
    assert v.matches[1].score == pytest.approx(0.8, abs=1e-4)
    assert [m.track_id for m in t.matches][:3] == ["aligned", "tempo", "scrambled"]
    assert t.matches[0].score == pytest.approx(0.8, abs=1e-4)  # all windows in one alignment
    assert t.matches[2].score == pytest.approx(0.9 / Q, abs=1e-4)  # only one window fits any alignment
    assert "noise" not in [m.track_id for m in t.matches + v.matches]  # similarity 0: not a match
    assert t.timings_ms.keys() >= {"embed", "search", "aggregate", "total"}
    assert t.audio_seconds == pytest.approx(15.0) and embedder.calls == 2  # one embedding per identify


def test_offsets_are_where_the_query_starts_in_the_master(index, embedder):
    one_view = RetrievalConfig(no_match_threshold=0.5, query_tempo_rates=(1.0,))
    r = Retriever(embedder, index, one_view).identify(audio())
    by_id = {m.track_id: m for m in r.matches}
    assert by_id["aligned"].offset_s == pytest.approx(10.0, abs=1e-3)
    assert by_id["tempo"].offset_s == pytest.approx(5.0, abs=0.05)  # found with tempo ratio 1.33
    assert by_id["tempo"].score == pytest.approx(0.7, abs=1e-4)
    v = Retriever(embedder, index, replace(one_view, aggregation="vote")).identify(audio())
    # vote: the single best hit's implied start; scrambled's best hits all score 0.9, the first is window 0
    assert {m.track_id: m.offset_s for m in v.matches}["aligned"] == pytest.approx(10.0, abs=1e-3)


def test_tempo_ratios_matter(index, embedder):
    same_tempo_only = RetrievalConfig(no_match_threshold=0.5, tempo_ratios=(1.0,))
    r = Retriever(embedder, index, same_tempo_only).identify(audio())
    tempo = {m.track_id: m.score for m in r.matches}["tempo"]
    assert tempo < 0.7 * 0.75  # a drift of 3.6 s over the query breaks the single alignment


def test_top_k_is_respected(index, embedder):
    r = Retriever(embedder, index, RetrievalConfig(top_k=2, no_match_threshold=0.5))
    assert len(r.identify(audio()).matches) == 2
    assert len(r.identify(audio(), top_k=1).matches) == 1
    assert len(r.identify(audio(), top_k=50).matches) <= 4
    scores = [m.score for m in r.identify(audio(), top_k=50).matches]
    assert scores == sorted(scores, reverse=True)


def test_no_match_against_threshold(index, embedder):
    strict = Retriever(embedder, index, RetrievalConfig(no_match_threshold=0.85)).identify(audio())
    assert strict.no_match and strict.threshold == 0.85
    assert strict.matches and strict.matches[0].track_id == "aligned"  # matches are still reported
    lenient = Retriever(embedder, index, RetrievalConfig(no_match_threshold=0.8)).identify(audio())
    assert not lenient.no_match  # score 0.8 >= 0.8 is accepted
    nothing = Retriever(FakeEmbedder(np.stack([-e(i) for i in range(Q)])), index,
                        RetrievalConfig(no_match_threshold=0.1)).identify(audio())
    assert nothing.no_match


def test_threshold_from_calibration_file_else_default(tmp_path, embedder, caplog):
    index = scenario_index()
    index.save(tmp_path / "idx")
    loaded = WindowIndex.load(tmp_path / "idx")
    with caplog.at_level(logging.WARNING, logger="serving.retrieval"):
        r = Retriever(embedder, loaded)
    assert r.threshold == DEFAULT_NO_MATCH_THRESHOLD and r.threshold_source == "default"
    assert "no calibrated no-match threshold" in caplog.text
    cal = calibrate_scores([0.1, 0.2, 0.3], aggregation="temporal", model_version=loaded.metadata.model_version,
                           target_false_accept_rate=0.0)
    save_calibration(tmp_path / "idx", cal)
    r = Retriever(embedder, loaded)
    assert r.threshold_source == "calibration" and r.threshold == pytest.approx(0.3)
    assert Retriever(embedder, loaded, RetrievalConfig(aggregation="vote")).threshold_source == "default"
    assert Retriever(embedder, loaded, RetrievalConfig(no_match_threshold=0.9)).threshold == 0.9
    # a hot swap re-reads the threshold of the new index
    assert r.with_index(scenario_index()).threshold_source == "default"


def test_model_mismatch_is_refused(embedder):
    with pytest.raises(ModelMismatchError):
        Retriever(embedder, scenario_index(model_version="another-model"))


def test_batch_identification_equals_single(index, embedder):
    r = Retriever(None, index, RetrievalConfig(no_match_threshold=0.5))
    q1 = np.stack([e(i) for i in range(Q)])
    q2 = np.stack([e(i) for i in range(2, Q)])  # the same song, 2 s later
    off1 = np.arange(Q, dtype=np.float32)
    off2 = np.arange(Q - 2, dtype=np.float32)
    batch = r.identify_embeddings_batch([(q1, off1, 8.0), (q2, off2, 6.0)])
    for got, (q, off, secs) in zip(batch, [(q1, off1, 8.0), (q2, off2, 6.0)]):
        single = r.identify_embeddings(q, off, secs)
        assert got.matches == single.matches and got.audio_seconds == secs
    # the second query starts 2 s later in the song
    assert batch[1].matches[0].track_id == "aligned" and batch[1].matches[0].offset_s == pytest.approx(12.0)
    with pytest.raises(RuntimeError, match="no embedder"):
        r.identify(audio())


def test_each_tempo_view_is_ranked_alone_and_a_track_keeps_its_best_view(index):
    """View 0 is the query as sung (matches "aligned" at 0.8); view 1 is the query resampled so that
    it matches "tempo" window for window (0.7 at ratio 1 instead of 1.33); alone, view 1 would be
    scored against all its windows, and mixing it into view 0's alignment would dilute both."""
    r = Retriever(None, index, RetrievalConfig(no_match_threshold=0.5, tempo_ratios=(1.0,), tempo_view_penalty=0.0))
    sung = np.stack([e(i) for i in range(Q)])
    off = np.arange(Q, dtype=np.float64)
    one = {m.track_id: m.score for m in r.identify_embeddings(sung, off, 12.0).matches}
    assert one["tempo"] < 0.7 * 0.75  # with the query's own tempo only, "tempo" drifts apart
    both = r.identify_embeddings(np.concatenate([sung, sung]), np.concatenate([off, off * 1.33]), 12.0,
                                 views=np.repeat([0, 1], Q))
    got = {m.track_id: m for m in both.matches}
    assert [m.track_id for m in both.matches][:2] == ["aligned", "tempo"]
    assert got["aligned"].score == pytest.approx(0.8, abs=1e-4)  # view 0's score, not an average
    assert got["tempo"].score == pytest.approx(0.7, abs=1e-4) and got["tempo"].offset_s == pytest.approx(5.0, abs=0.05)
    with pytest.raises(ValueError, match="views"):
        r.identify_embeddings(sung, off, 12.0, views=np.zeros(Q - 1, np.int64))
    with pytest.raises(ValueError, match="tempo view 3"):
        r.identify_embeddings(np.concatenate([sung, sung]), np.concatenate([off, off]), 12.0,
                              views=np.repeat([0, 3], Q))
    # the prior for the tempo as sung: view 1 (0.8x) loses 0.36 * |ln 0.8| = 0.08 of its scores
    prior = r.with_config(tempo_view_penalty=0.36).identify_embeddings(
        np.concatenate([sung, sung]), np.concatenate([off, off * 1.33]), 12.0, views=np.repeat([0, 1], Q))
    assert {m.track_id: m.score for m in prior.matches}["tempo"] == pytest.approx(0.7 - 0.36 * np.log(1.25), abs=1e-4)
    with pytest.raises(ValueError, match="tempo_view_penalty"):
        RetrievalConfig(tempo_view_penalty=-0.1)
    # a query in several views is aligned with view_tempo_ratios in each (the views cover the rest)
    junk = np.tile(e(127), (Q, 1))
    two = dict(views=np.repeat([0, 1], Q))
    emb2, off2 = np.concatenate([sung, junk]), np.concatenate([off, off])
    narrow = {m.track_id: m.score for m in r.identify_embeddings(emb2, off2, 12.0, **two).matches}
    assert narrow["tempo"] < 0.7 * 0.75  # 1.33 is outside the default view ratios 0.87-1.15
    wide = r.with_config(view_tempo_ratios=(1.0, 1.33)).identify_embeddings(emb2, off2, 12.0, **two)
    assert {m.track_id: m.score for m in wide.matches}["tempo"] == pytest.approx(0.7, abs=1e-4)


def test_identify_embeds_the_configured_tempo_views(index, embedder):
    r = Retriever(embedder, index, RetrievalConfig(no_match_threshold=0.5, query_tempo_rates=(1.0, 0.8, 1.25)))
    res = r.identify(audio())
    assert embedder.rates == (1.0, 0.8, 1.25)
    assert res.matches[0].track_id == "aligned" and res.matches[0].score == pytest.approx(0.8, abs=1e-4)
    with pytest.raises(ValueError, match="query_tempo_rates"):
        RetrievalConfig(query_tempo_rates=(1.0, 1.0))
    with pytest.raises(ValueError, match="query_tempo_rates"):
        RetrievalConfig(query_tempo_rates=(1.0, -0.8))
    assert parse_tempo_rates("1, 0.8,1.25") == (1.0, 0.8, 1.25)


def crowded_index() -> WindowIndex:
    """Query windows e(0..Q-1). "partial" matches the first half of the query, in time order, with 0.9
    (so it is each of those windows' nearest neighbour); "whole" matches every query window in time
    order with 0.8, but is the nearest neighbour only of the second half."""
    embs, rows, offs = [], [], []
    half = Q // 2
    for i in range(Q):
        embs.append(mix(i, 0.8, 20 + i)); rows.append(0); offs.append(3.0 + i)
    for i in range(half):
        embs.append(mix(i, 0.9, 40 + i)); rows.append(1); offs.append(30.0 + i)
    tracks = [TrackInfo("whole", "Whole", "A"), TrackInfo("partial", "Partial", "B")]
    return WindowIndex.build(np.stack(embs), np.array(rows), np.array(offs, np.float32), tracks,
                             FakeEmbedder.version)


def test_rerank_recovers_the_windows_the_first_stage_crowded_out(embedder):
    """With one neighbour per window the first stage sees only half of "whole"'s windows and ranks
    "partial" first; the exact re-scoring of the candidates sees all of them."""
    index = crowded_index()
    first_stage_only = RetrievalConfig(neighbors_per_window=1, rerank_candidates=0, no_match_threshold=0.5)
    r = Retriever(embedder, index, first_stage_only).identify(audio())
    assert [m.track_id for m in r.matches] == ["partial", "whole"]
    assert r.matches[0].score == pytest.approx(0.9 / 2, abs=1e-4)
    assert r.matches[1].score == pytest.approx(0.8 / 2, abs=1e-4)
    reranked = Retriever(embedder, index, replace(first_stage_only, rerank_candidates=10)).identify(audio())
    assert [m.track_id for m in reranked.matches] == ["whole", "partial"]
    assert reranked.matches[0].score == pytest.approx(0.8, abs=1e-4)
    assert reranked.matches[0].offset_s == pytest.approx(3.0, abs=1e-3)
    assert reranked.matches[1].score == pytest.approx(0.9 / 2, abs=1e-4)
    # the vote aggregation is order-free by design: no re-ranking
    vote = Retriever(embedder, index, replace(first_stage_only, aggregation="vote", rerank_candidates=10))
    assert vote.identify(audio()).matches[0].track_id == "partial"


def test_rerank_temporal_scores_alignments_with_tempo_and_reports_where(index):
    query = np.stack([e(i) for i in range(Q)])
    q_off = np.arange(Q, dtype=np.float64)
    s = rerank_temporal(query, q_off, np.array([2, 0, 1, 3]), index.fetch_tracks([2, 0, 1, 3]))
    got = {int(t): (float(sc), float(o)) for t, sc, o in zip(s.track_rows, s.scores, s.offsets_s)}
    assert got[0][0] == pytest.approx(0.8, abs=1e-5) and got[0][1] == pytest.approx(10.0, abs=1e-3)
    assert got[2][0] == pytest.approx(0.7, abs=1e-5) and got[2][1] == pytest.approx(5.0, abs=0.05)  # ratio 1.33
    assert got[1][0] == pytest.approx(0.9 / Q, abs=1e-5)  # reversed in time: one window per alignment
    assert got[3][0] == 0.0
    only_same_tempo = rerank_temporal(query, q_off, np.array([2]), index.fetch_tracks([2]), tempo_ratios=(1.0,))
    assert only_same_tempo.scores[0] < 0.7 * 0.75
    empty = rerank_temporal(query, q_off, np.array([], np.int64), [])
    assert empty.track_rows.size == 0


def test_one_fetch_shared_by_views_rescores_like_fetching_per_view(index):
    """The tempo views re-rank overlapping candidates from one fetch (`CandidateWindows.subset`): the
    same scores and offsets, bit for bit, as each view fetching its own."""
    rng = np.random.default_rng(3)
    query = np.stack([e(i) for i in range(Q)]) + rng.normal(0, 0.05, (Q, DIM)).astype(np.float32)
    q_off = np.arange(Q, dtype=np.float64) * 0.8
    union = np.array([0, 1, 2, 3], np.int64)
    fetched = CandidateWindows.of(union, index.fetch_tracks(union))
    for view in ([3, 0, 2], [1], [2, 3]):
        want = rerank_temporal(query, q_off, np.array(view), index.fetch_tracks(view))
        got = rerank_temporal(query, q_off, np.array(view), fetched.subset(np.array(view)))
        np.testing.assert_array_equal(got.track_rows, want.track_rows)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.offsets_s, want.offsets_s)
    assert fetched.subset(np.array([9])).candidates.size == 0  # not fetched: nothing to score


@pytest.mark.parametrize("bad", [dict(rerank_candidates=-1), dict(rerank_step_seconds=0.0),
                                 dict(rerank_tolerance_seconds=-0.1)])
def test_rerank_config_is_validated(bad):
    with pytest.raises(ValueError, match="rerank"):
        RetrievalConfig(**bad)


def test_aggregation_ignores_padding_and_negative_hits():
    track_rows = np.array([0, 0, 1], np.int32)
    offsets = np.array([0.0, 2.0, 0.0], np.float32)
    rows = np.array([[0, -1], [1, 2]])
    sims = np.array([[0.9, -np.inf], [0.8, -0.5]], np.float32)
    for agg in (aggregate_vote, aggregate_temporal):
        s = agg(WindowHits.from_rows(rows, sims, track_rows, offsets), np.array([0.0, 1.0]))
        got = dict(zip(s.track_rows.tolist(), s.scores.tolist()))
        assert got[0] == pytest.approx((0.9 + 0.8) / 2)
        assert got.get(1, 0.0) == 0.0


def test_views_aggregated_in_one_pass_score_as_view_by_view():
    from serving.retrieval import aggregate_temporal_views

    rng = np.random.default_rng(3)
    for trial in range(20):
        q, k, tracks = int(rng.integers(1, 12)), int(rng.integers(1, 30)), int(rng.integers(1, 40))
        views = rng.integers(0, 3, q)
        rows = rng.integers(-1, tracks, (q, k))
        sims = np.where(rows >= 0, rng.uniform(-0.2, 1.0, (q, k)), -np.inf).astype(np.float32)
        hits = WindowHits(rows, np.where(rows >= 0, rng.integers(0, 30, (q, k)) * 1.0, 0.0), sims)
        offsets = np.sort(rng.uniform(0, 10, q))
        together = aggregate_temporal_views(hits, offsets, views, 3, (0.87, 1.0, 1.15))
        for v in range(3):
            alone = aggregate_temporal(hits[views == v], offsets[views == v], (0.87, 1.0, 1.15))
            got = together[v]
            assert got.track_rows.tolist() == alone.track_rows.tolist(), (trial, v)
            np.testing.assert_allclose(got.scores, alone.scores, atol=1e-6)
            np.testing.assert_allclose(got.offsets_s, alone.offsets_s, atol=1e-6)


def test_end_to_end_exact_excerpt_with_untrained_model(untrained_model_dir):
    """A real (untrained) exported model: the exact excerpt of a master comes back first."""
    from serving.embedder import Embedder
    from tests.conftest import sung_tone

    embedder = Embedder(untrained_model_dir)
    rng = np.random.default_rng(0)
    masters = [sung_tone(tuple(int(n) for n in rng.integers(55, 75, 24)), note_s=0.5, seed=s) for s in range(3)]
    embs, rows, offs = [], [], []
    for i, m in enumerate(masters):
        emb, off = embedder.embed_master(m)
        embs.append(emb); rows.append(np.full(len(off), i)); offs.append(off)
    tracks = [TrackInfo(f"song{i}", f"Song {i}", "Test") for i in range(3)]
    index = WindowIndex.build(np.concatenate(embs), np.concatenate(rows), np.concatenate(offs), tracks,
                              embedder.version)
    excerpt = masters[1][4 * C.SAMPLE_RATE : 11 * C.SAMPLE_RATE]
    for agg in ("temporal", "vote"):
        r = Retriever(embedder, index, RetrievalConfig(aggregation=agg, no_match_threshold=0.5)).identify(excerpt)
        assert r.matches[0].track_id == "song1", (agg, r.matches)
        assert r.matches[0].offset_s == pytest.approx(4.0, abs=1.0)
        assert r.matches[0].score > 0.9 and not r.no_match
        assert r.matches[0].score > r.matches[1].score if len(r.matches) > 1 else True
