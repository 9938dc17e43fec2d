"""serving.index: ScaNN window index against numpy brute force, tuning, persistence, releases."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("scann")

from data_gen import constants as C
from serving.apps.bench_scale import SyntheticConfig, synthetic_chunk, synthetic_layout
from serving.apps.synthetic_embeddings import window_stats
from serving.index import (
    DuplicateTrackError,
    IndexBuildError,
    IndexLoadError,
    IndexSaveError,
    SearcherConfig,
    TrackInfo,
    WindowIndex,
    brute_force_search,
    perturbed_queries,
    recall_at_k,
    top_k_stable,
    with_searcher_config,
)
from serving.retrieval_types import RetrievalConfig

SMALL = SyntheticConfig(windows_per_track=10, seed=3)


def small_index(num_tracks=60, config=None, model="model-a"):
    emb = synthetic_chunk(SMALL, 0, num_tracks)
    rows, offsets, tracks = synthetic_layout(num_tracks, SMALL.windows_per_track)
    return WindowIndex.build(emb, rows, offsets, tracks, model, config), emb


def test_brute_force_search_matches_full_sort():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((5000, 16)).astype(np.float32)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    rows, scores = brute_force_search(q, db, 12)
    full = q @ db.T
    expect = np.argsort(-full, axis=1)[:, :12]
    np.testing.assert_array_equal(rows, expect)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expect, 1), rtol=1e-5)
    # chunking across the database gives the same answer as one block
    import serving.index as ix

    old = ix._BRUTE_FORCE_CHUNK_ELEMENTS
    try:
        ix._BRUTE_FORCE_CHUNK_ELEMENTS = 7 * 10  # forces chunks of 4096 rows
        rows2, _ = brute_force_search(q, db, 12)
    finally:
        ix._BRUTE_FORCE_CHUNK_ELEMENTS = old
    np.testing.assert_array_equal(rows2, expect)


def test_small_index_is_brute_force_and_matches_numpy():
    index, emb = small_index()
    assert index.kind == "brute_force"
    assert index.metadata.recall_at_10 == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    q = perturbed_queries(emb[rng.choice(len(emb), 20, replace=False)], 0.8, rng)
    rows, scores = index.search(q, 10)
    exact = q @ emb.T
    true_rows = np.argsort(-exact, axis=1)[:, :10]
    assert rows.shape == (20, 10) and rows.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, np.take_along_axis(exact, true_rows, 1), atol=1e-5)
    # ids agree wherever the true scores are not near-ties
    gaps = np.abs(np.diff(np.take_along_axis(exact, true_rows, 1), axis=1)) > 1e-4
    unambiguous = np.c_[gaps[:, :1], gaps[:, :-1] & gaps[:, 1:], gaps[:, -1:]]
    assert unambiguous.mean() > 0.9
    np.testing.assert_array_equal(rows[unambiguous], true_rows[unambiguous])
    bf_rows, bf_scores = index.search_brute_force(q, 10)
    np.testing.assert_allclose(bf_scores, scores, atol=1e-5)


def test_k_larger_than_index_and_bad_queries():
    emb = synthetic_chunk(SMALL, 0, 1)
    rows, offsets, tracks = synthetic_layout(1, SMALL.windows_per_track)
    index = WindowIndex.build(emb, rows, offsets, tracks, "m")
    r, s = index.search(emb[:2], 50)
    assert r.shape == (2, 10)
    assert sorted(r[0].tolist()) == list(range(10))
    assert r[0, 0] == 0 and s[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="queries must be"):
        index.search(np.zeros((2, 5), np.float32), 3)
    assert index.search(np.zeros((0, emb.shape[1]), np.float32), 3)[0].shape == (0, 3)


def test_tree_ah_path_reaches_target_recall_on_clustered_data():
    cfg = SearcherConfig(mode="tree_ah", tune_queries=200, target_recall=0.95, tune_k=10, seed=0)
    index, emb = small_index(num_tracks=400, config=cfg)  # 4000 windows, ~63 leaves
    assert index.kind == "tree_ah"
    md = index.metadata
    assert md.config["num_leaves"] == round(np.sqrt(4000))
    assert 1 <= md.config["leaves_to_search"] <= md.config["num_leaves"]
    assert md.recall_at_10 >= 0.95
    assert md.extra["tuning"]["k"] == 10
    curve = md.extra["tuning"]["curve"]
    chosen = md.config["leaves_to_search"]
    assert [leaves for leaves, _ in curve] == sorted({leaves for leaves, _ in curve})
    assert dict(curve)[chosen] == pytest.approx(md.recall_at_10) and md.recall_at_10 >= 0.95
    assert all(r < 0.95 for leaves, r in curve if leaves < chosen)  # the smallest setting that reaches it
    # bisected between the grid's last setting below the target and its first one above it
    assert max(leaves for leaves, r in curve if leaves < chosen) >= chosen - max(1, chosen // 16)
    # independent queries (another seed) measured against numpy brute force
    rng = np.random.default_rng(99)
    q = perturbed_queries(emb[rng.choice(len(emb), 300, replace=False)], 0.8, rng)
    assert index.measure_recall(q) >= 0.9
    # searching one leaf only is measurably worse: the tuning is doing something
    rows1, _ = index.search(q, 10, leaves_to_search=1)
    _, true_scores = index.search_brute_force(q, 10)
    assert recall_at_k(rows1, q, emb, true_scores) < index.measure_recall(q)


def test_tuning_measures_recall_at_10_of_a_search_as_deep_as_the_retriever_s():
    """The retriever takes 100 neighbours per query window (1,000 candidates re-scored): the tuning
    measures recall@10 of a search that deep; the old recall@100 >= 0.98 criterion (from before the
    re-ranking) searches more leaves."""
    assert SearcherConfig().tune_depth == RetrievalConfig().neighbors_per_window
    assert (SearcherConfig().tune_k, SearcherConfig().target_recall) == (10, 0.95)
    cfg = SearcherConfig(mode="tree_ah", tune_queries=200)
    index, emb = small_index(num_tracks=400, config=cfg)
    old, _ = small_index(num_tracks=400, config=SearcherConfig(mode="tree_ah", tune_queries=200, tune_k=100,
                                                               target_recall=0.98))
    tuning = index.metadata.extra["tuning"]
    leaves = index.metadata.config["leaves_to_search"]
    assert (tuning["k"], tuning["depth"]) == (10, 100) and dict(tuning["curve"])[leaves] >= 0.95
    assert leaves < old.metadata.config["leaves_to_search"]
    # independent queries: the top 10 of a 100-deep search at the tuned leaves reach about the target
    rng = np.random.default_rng(5)
    q = perturbed_queries(emb[rng.choice(len(emb), 300, replace=False)], 0.6, rng)
    _, true_scores = index.search_brute_force(q, 10)
    deep = recall_at_k(index.search(q, 100)[0], q, emb, true_scores, 10)
    assert deep >= 0.9, deep
    assert index.metadata.recall_at_10 == pytest.approx(dict(tuning["curve"])[leaves])  # the same measurement


def test_tuning_bisects_the_grid_to_the_fewest_leaves_that_reach_the_target():
    cfg = SearcherConfig(mode="tree_ah", tune_queries=200)
    index, _ = small_index(num_tracks=400, config=cfg)
    grid = with_searcher_config(index, replace(cfg, tune_precision=0))  # the grid's own setting
    bisected, on_grid = index.metadata.config["leaves_to_search"], grid.metadata.config["leaves_to_search"]
    assert bisected <= on_grid and index.metadata.recall_at_10 >= 0.95 and grid.metadata.recall_at_10 >= 0.95
    assert len(index.metadata.extra["tuning"]["curve"]) > len(grid.metadata.extra["tuning"]["curve"])
    # an index tuned before the bisection existed (no tune_precision recorded) is not today's: re-tuned
    older = replace(index.metadata, config={**index.metadata.config, "searcher": {
        k: v for k, v in index.metadata.config["searcher"].items() if k != "tune_precision"}})
    assert index.searcher_made_with(cfg)
    assert not WindowIndex(index._searchers, index.vectors, index.track_rows, index.offsets_s, list(index.tracks),
                           older).searcher_made_with(cfg)
    with pytest.raises(ValueError, match="tune_precision"):
        SearcherConfig(tune_precision=-1)


def test_fixed_leaves_to_search_is_respected():
    cfg = SearcherConfig(mode="tree_ah", num_leaves=16, num_leaves_to_search=16, tune_queries=100)
    index, _ = small_index(num_tracks=200, config=cfg)
    assert index.metadata.config["num_leaves"] == 16
    assert index.metadata.config["leaves_to_search"] == 16
    assert index.metadata.extra["tuning"]["fixed"] is True
    assert index.metadata.recall_at_10 > 0.95  # all leaves + exact reordering


def test_save_load_round_trip(tmp_path):
    cfg = SearcherConfig(mode="tree_ah", tune_queries=100)
    index, emb = small_index(num_tracks=300, config=cfg)
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        "embeddings.npy", "metadata.json", "scann", "tracks.csv", "windows.npz"]
    meta = json.loads((tmp_path / "idx" / "metadata.json").read_text())
    assert meta["format"] == "earworm-index/1" and meta["num_windows"] == 3000 and meta["dim"] == 128
    assert meta["recall_at_10"] == index.metadata.recall_at_10
    # the folder can be moved: ScaNN assets are stored with relative paths
    shutil.move(tmp_path / "idx", tmp_path / "moved")
    loaded = WindowIndex.load(tmp_path / "moved")
    assert loaded.metadata == index.metadata
    assert loaded.tracks == index.tracks and loaded.path == (tmp_path / "moved").resolve()
    np.testing.assert_array_equal(loaded.track_rows, index.track_rows)
    np.testing.assert_array_equal(loaded.offsets_s, index.offsets_s)
    np.testing.assert_array_equal(np.asarray(loaded.embeddings), emb)
    q = perturbed_queries(emb[:50], 0.8, np.random.default_rng(0))
    r1, s1 = index.search(q, 10)
    r2, s2 = loaded.search(q, 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_load_errors(tmp_path):
    with pytest.raises(IndexLoadError, match="not found"):
        WindowIndex.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexLoadError, match="metadata.json missing"):
        WindowIndex.load(tmp_path / "empty")
    index, _ = small_index(num_tracks=5)
    index.save(tmp_path / "idx")

    def broken(name, mutate):
        d = tmp_path / name
        shutil.copytree(tmp_path / "idx", d)
        mutate(d)
        return d

    d = broken("badjson", lambda d: (d / "metadata.json").write_text("{not json"))
    with pytest.raises(IndexLoadError, match="unreadable"):
        WindowIndex.load(d)
    d = broken("dims", lambda d: np.save(d / "embeddings.npy", np.zeros((50, 64), np.float32)))
    with pytest.raises(IndexLoadError, match="mismatched dims"):
        WindowIndex.load(d)
    d = broken("tracks", lambda d: (d / "tracks.csv").write_text("track_id,title,artist\nx,y,z\n"))
    with pytest.raises(IndexLoadError, match="tracks"):
        WindowIndex.load(d)
    tree, _ = small_index(num_tracks=60, config=SearcherConfig(mode="tree_ah", tune_queries=50))
    tree.save(tmp_path / "tree")
    d = tmp_path / "noscann"
    shutil.copytree(tmp_path / "tree", d)
    shutil.rmtree(d / "scann")
    with pytest.raises(IndexLoadError, match="ScaNN searcher missing"):
        WindowIndex.load(d)
    d = tmp_path / "scannfile"
    shutil.copytree(tmp_path / "tree", d)
    (d / "scann" / "hashed_dataset.npy").unlink()
    with pytest.raises(IndexLoadError, match="hashed_dataset.npy"):
        WindowIndex.load(d)
    d = broken("nowindows", lambda d: (d / "windows.npz").unlink())
    with pytest.raises(IndexLoadError, match="cannot read"):
        WindowIndex.load(d)


def test_save_refuses_foreign_dir_and_replaces_an_index(tmp_path):
    index, _ = small_index(num_tracks=5)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "precious.txt").write_text("x")
    with pytest.raises(IndexSaveError):
        index.save(tmp_path / "foreign")
    assert (tmp_path / "foreign" / "precious.txt").exists()
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / "calibration.json").write_text(json.dumps({"model_version": "model-a"}))
    other, _ = small_index(num_tracks=6)
    other.save(tmp_path / "idx")
    assert WindowIndex.load(tmp_path / "idx").version == other.version
    assert (tmp_path / "idx" / "calibration.json").exists()  # same model: kept
    third, _ = small_index(num_tracks=6, model="model-b")
    third.save(tmp_path / "idx")
    assert not (tmp_path / "idx" / "calibration.json").exists()  # other model: dropped
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_build_validation():
    emb = synthetic_chunk(SMALL, 0, 2)
    rows, offsets, tracks = synthetic_layout(2, SMALL.windows_per_track)
    with pytest.raises(DuplicateTrackError):
        WindowIndex.build(emb, rows, offsets, [tracks[0], tracks[0]], "m")
    with pytest.raises(IndexBuildError, match="track_rows must lie"):
        WindowIndex.build(emb, rows + 1, offsets, tracks, "m")
    bad = emb.copy()
    bad[3, 0] = np.nan
    with pytest.raises(IndexBuildError, match="NaN"):
        WindowIndex.build(bad, rows, offsets, tracks, "m")
    with pytest.raises(IndexBuildError, match="no windows"):
        WindowIndex.build(emb[:0], rows[:0], offsets[:0], tracks, "m")
    with pytest.raises(IndexBuildError, match="must be"):
        WindowIndex.build(emb, rows[:-1], offsets, tracks, "m")


def test_add_release_reuses_stored_embeddings(tmp_path):
    index, emb = small_index(num_tracks=30)
    index.save(tmp_path / "v1")
    loaded = WindowIndex.load(tmp_path / "v1")
    new_cfg = SyntheticConfig(windows_per_track=10, seed=4)  # other vectors
    new_emb = synthetic_chunk(new_cfg, 0, 5)
    new_rows, new_off, _ = synthetic_layout(5, 10)
    new_tracks = [TrackInfo(f"new{i}", f"New {i}", "B") for i in range(5)]
    bigger = loaded.add(new_emb, new_rows, new_off, new_tracks)
    assert bigger.version != loaded.version and bigger.metadata.model_version == "model-a"
    assert bigger.num_tracks == 35 and bigger.num_windows == 350
    np.testing.assert_array_equal(np.asarray(bigger.embeddings[:300]), emb)  # old ones unchanged
    np.testing.assert_array_equal(np.asarray(bigger.embeddings[300:]), new_emb)
    assert loaded.num_windows == 300  # the original is left untouched
    # the new tracks are findable: a new window's own vector comes back first, mapped to its track
    rows, scores = bigger.search(new_emb[[0, 17, 49]], 1)
    assert [bigger.tracks[bigger.track_rows[r]].track_id for r in rows[:, 0]] == ["new0", "new1", "new4"]
    assert bigger.offsets_s[rows[1, 0]] == pytest.approx(7 * C.MASTER_WINDOW_HOP_SECONDS)  # its 8th window
    releases = bigger.metadata.extra["releases"]
    assert [r["tracks_added"] for r in releases] == [30, 5] and releases[1]["parent"] == loaded.version
    bigger.save(tmp_path / "v2")
    assert WindowIndex.load(tmp_path / "v2").num_windows == 350


def test_add_refuses_duplicate_track_ids_and_other_models():
    index, emb = small_index(num_tracks=4)
    rows, offsets, tracks = synthetic_layout(1, 10)
    with pytest.raises(DuplicateTrackError, match="already in index"):
        index.add(emb[:10], rows, offsets, tracks)  # syn0000000 exists
    with pytest.raises(IndexBuildError, match="model"):
        index.add(emb[:10], rows, offsets, [TrackInfo("fresh")], model_version="model-b")
    with pytest.raises(IndexBuildError, match="dim"):
        index.add(np.ones((10, 8), np.float32) / np.sqrt(8), rows, offsets, [TrackInfo("fresh")])


def test_the_master_hop_is_recorded_carried_and_a_release_at_another_hop_refused(tmp_path):
    """An index's master hop lives in metadata.extra (absent: the 1 s of indexes made before the
    option); add() keeps it and refuses windows cut on another grid."""
    index, emb = small_index(num_tracks=4)
    assert "master_hop_seconds" not in index.metadata.extra and index.metadata.master_hop_seconds == 1.0
    rows, offsets, tracks = synthetic_layout(4, 10)
    hop2 = WindowIndex.build(emb, rows, 2.0 * offsets, tracks, "model-a", extra={"master_hop_seconds": 2.0})
    hop2.save(tmp_path / "hop2")
    loaded = WindowIndex.load(tmp_path / "hop2")
    assert loaded.metadata.master_hop_seconds == 2.0
    new_rows, new_off, _ = synthetic_layout(1, 10)
    with pytest.raises(IndexBuildError, match="every 1 s .* built at 2 s"):
        loaded.add(emb[:10], new_rows, new_off, [TrackInfo("fresh")], master_hop_seconds=1.0)
    bigger = loaded.add(emb[:10], new_rows, 2.0 * new_off, [TrackInfo("fresh")], master_hop_seconds=2.0)
    assert bigger.metadata.master_hop_seconds == 2.0 and bigger.num_tracks == 5
    assert index.add(emb[:10], new_rows, new_off, [TrackInfo("fresh")],  # an old index: 1 s, now recorded
                     master_hop_seconds=1.0).metadata.extra["master_hop_seconds"] == 1.0


def test_synthetic_chunks_are_deterministic_and_shaped_like_real_embeddings():
    """bench-scale's catalogue: chunks reproducible in any order, windows with the real statistics
    (`serving.apps.synthetic_embeddings`: participation ratio ~28, consecutive windows cosine ~0.69)."""
    cfg = SyntheticConfig(windows_per_track=30, seed=1)
    a = synthetic_chunk(cfg, 100, 200)
    np.testing.assert_array_equal(a, synthetic_chunk(cfg, 100, 200))
    np.testing.assert_array_equal(a[30:], synthetic_chunk(cfg, 100, 200)[30:])
    assert a.shape == (6000, 128) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(a[:30], synthetic_chunk(cfg, 101, 1))  # each chunk its own draws
    stats = window_stats(a, np.repeat(np.arange(200), 30))
    assert 20 < stats["participation_ratio"] < 40
    assert 0.6 < stats["cos_lag1"] < 0.78


def test_sharded_index_merges_shards_and_round_trips(tmp_path):
    exact_cfg = SearcherConfig(mode="brute_force", max_shard_windows=700)
    index, emb = small_index(num_tracks=200, config=exact_cfg)  # 2000 windows -> 3 shards
    assert index.metadata.config["shards"] == [[0, 667], [667, 1333], [1333, 2000]]
    q = perturbed_queries(emb[::97], 0.8, np.random.default_rng(5))
    rows, scores = index.search(q, 10)
    bf_rows, bf_scores = brute_force_search(q, emb, 10)
    np.testing.assert_allclose(scores, bf_scores, atol=1e-5)
    assert (rows == bf_rows).mean() > 0.95
    tree = WindowIndex.build(emb, index.track_rows, index.offsets_s, index.tracks, "model-a",
                             SearcherConfig(mode="tree_ah", max_shard_windows=1000, tune_queries=100))
    assert len(tree.metadata.config["shards"]) == 2 and tree.metadata.recall_at_10 >= 0.95  # the tuning target
    tree.save(tmp_path / "sharded")
    assert sorted(p.name for p in (tmp_path / "sharded" / "scann").iterdir()) == ["shard-000", "shard-001"]
    loaded = WindowIndex.load(tmp_path / "sharded")
    np.testing.assert_array_equal(loaded.search(q, 10)[0], tree.search(q, 10)[0])
    assert loaded.search(q, 10)[0].max() >= 1000  # hits from the second shard map to global rows


def test_a_querys_shards_are_searched_side_by_side_with_the_same_answer(monkeypatch):
    """ScaNN releases the GIL, so a lone query's shards take both cores; the merge reads them in shard
    order, so the answer is the one a shard-by-shard search gives."""
    import threading

    import serving.index as index_module

    emb = synthetic_chunk(SMALL, 0, 200)
    rows_, offsets, tracks = synthetic_layout(200, SMALL.windows_per_track)
    tree = WindowIndex.build(emb, rows_, offsets, tracks, "model-a",
                             SearcherConfig(mode="tree_ah", max_shard_windows=500, tune_queries=100))
    assert len(tree.metadata.config["shards"]) == 4
    q = perturbed_queries(emb[::100], 0.8, np.random.default_rng(2))  # 20 windows: one query's worth
    threads = []
    search_one = index_module._search_one_shard
    monkeypatch.setattr(index_module, "_search_one_shard",
                        lambda *a: threads.append(threading.current_thread().name) or search_one(*a))
    side_by_side = tree.search(q, 100)
    assert len(threads) == 4 and all(name.startswith("index-shard") for name in threads)

    class OneAtATime:
        def map(self, fn, items):
            return [fn(i) for i in items]

    monkeypatch.setattr(index_module, "_shard_pool", lambda: OneAtATime())
    threads.clear()
    one_at_a_time = tree.search(q, 100)
    assert threads == [threading.current_thread().name] * 4
    np.testing.assert_array_equal(side_by_side[0], one_at_a_time[0])
    np.testing.assert_array_equal(side_by_side[1], one_at_a_time[1])


def test_a_forked_child_searches_shards_with_a_pool_of_its_own():
    """A pool made before a fork has no threads in the child: the child makes its own."""
    import multiprocessing as mp

    emb = synthetic_chunk(SMALL, 0, 60)
    rows_, offsets, tracks = synthetic_layout(60, SMALL.windows_per_track)
    index = WindowIndex.build(emb, rows_, offsets, tracks, "model-a",
                              SearcherConfig(mode="brute_force", max_shard_windows=200))
    assert len(index.metadata.config["shards"]) == 3
    q = emb[::200]
    expected = index.search(q, 10)[0]  # the parent's pool now exists

    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=lambda: out.put(index.search(q, 10)[0].tolist()), daemon=True)
    child.start()
    got = out.get(timeout=60)  # a child waiting on the parent's threads would never answer
    child.join(10)
    assert child.exitcode == 0 and got == expected.tolist()


def test_windows_of_lists_each_tracks_rows_in_time_order():
    rng = np.random.default_rng(3)
    rows = np.array([1, 0, 1, 2, 0, 1], np.int32)
    offs = np.array([4.0, 2.0, 0.0, 1.0, 0.0, 2.0], np.float32)
    emb = rng.normal(size=(6, C.EMBEDDING_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    tracks = [TrackInfo(f"t{i}", f"T{i}", "A") for i in range(4)]
    index = WindowIndex.build(emb, rows, offs, tracks, "m")
    assert index.windows_of(0).tolist() == [4, 1]
    assert index.windows_of(1).tolist() == [2, 5, 0]
    assert index.windows_of(2).tolist() == [3]
    assert index.windows_of(3).tolist() == []  # a track without windows


def test_int8_store_quarters_the_vectors_and_keeps_the_neighbours(tmp_path):
    """The one stored copy in int8 (a scale per window): 132 bytes per 128-d window instead of 512,
    similarities within 5e-3 of float32, the same top-10 for nearly every query, and it round-trips.
    ScaNN itself keeps no re-ordering copy: its candidates are re-scored from this store."""
    from serving.vectors import WindowVectors, quantize_int8

    emb = synthetic_chunk(SMALL, 0, 300)
    codes, scales = quantize_int8(emb)
    np.testing.assert_allclose(codes.astype(np.float32) * scales[:, None], emb, atol=0.5 * scales.max() + 1e-7)
    q = perturbed_queries(emb[:80], 0.7, np.random.default_rng(1))
    store = WindowVectors(codes, scales)
    rows = np.tile(np.arange(50), (80, 1))
    exact = q @ emb[:50].T
    assert np.abs(store.scores(q, rows) - exact).max() < 5e-3
    assert store.bytes_per_window == 132 and WindowVectors(emb).bytes_per_window == 512

    rows_, offsets, tracks = synthetic_layout(300, SMALL.windows_per_track)
    f32 = WindowIndex.build(emb, rows_, offsets, tracks, "m", SearcherConfig(mode="tree_ah", tune_queries=100))
    i8 = WindowIndex.build(emb, rows_, offsets, tracks, "m",
                           SearcherConfig(mode="tree_ah", tune_queries=100, store_dtype="int8"))
    assert i8.vectors.dtype == "int8" and f32.vectors.dtype == "float32"
    _, true_scores = brute_force_search(q, emb, 10)
    for index in (f32, i8):
        found, _ = index.search(q, 10)
        assert recall_at_k(found, q, emb, true_scores, 10) > 0.9
    i8.save(tmp_path / "i8")
    assert sorted(p.name for p in (tmp_path / "i8").iterdir()) == [
        "embeddings.int8.npy", "embeddings.scales.npy", "metadata.json", "scann", "tracks.csv", "windows.npz"]
    loaded = WindowIndex.load(tmp_path / "i8")
    assert loaded.vectors.dtype == "int8"
    np.testing.assert_array_equal(loaded.search(q, 10)[0], i8.search(q, 10)[0])
    t = loaded.fetch_tracks([3])[0]
    np.testing.assert_allclose(t.emb, emb[loaded.windows_of(3)], atol=5e-3)
    bigger = loaded.add(emb[:20], np.repeat([0, 1], 10), np.tile(np.arange(10.0), 2),
                        [TrackInfo("new-a"), TrackInfo("new-b")])
    assert bigger.vectors.dtype == "int8" and bigger.num_windows == 3020


@pytest.fixture
def scann_inputs(monkeypatch) -> list[np.ndarray]:
    """The data handed to each ScaNN builder (one per shard), recorded in build order."""
    import types

    import serving.index as ix

    real, fed = ix._scann(), []

    def builder(data, *args):
        fed.append(data)
        return real.builder(data, *args)

    fake = types.SimpleNamespace(builder=builder, load_searcher=real.load_searcher)
    monkeypatch.setattr(ix, "_scann", lambda: fake)
    return fed


@pytest.mark.parametrize("config", [
    SearcherConfig(mode="brute_force", max_shard_windows=700),
    SearcherConfig(mode="tree_ah", max_shard_windows=1000, tune_queries=100),
    SearcherConfig(mode="tree_ah", tune_queries=100, store_dtype="int8"),
], ids=["brute_force-3-shards", "tree_ah-2-shards", "tree_ah-int8"])
def test_a_build_streamed_from_a_spill_file_answers_as_the_in_memory_build(tmp_path, config, scann_inputs):
    """The Beam driver's path: windows appended part by part to a float32 file and the index built from
    its memmap (each ScaNN shard from its slice of the file, the tuning queries sampled from it), and a
    release added through a scratch file, give the same index as one array in memory: ScaNN is fed the
    same data, the layout and stored vectors are equal, and so are the answers where the searcher is
    reproducible (brute force; ScaNN's tree training differs from run to run even in memory, so a
    tree-AH index is checked for its recall instead)."""
    from serving.vectors import Float32Spill

    emb = synthetic_chunk(SMALL, 0, 200)  # 2000 windows
    rows, offsets, tracks = synthetic_layout(200, SMALL.windows_per_track)
    spill = Float32Spill(tmp_path / "emb.f32")
    for a in range(0, emb.shape[0], 300):
        spill.append(emb[a : a + 300])
    streamed_emb = spill.finish()
    assert isinstance(streamed_emb, np.memmap) and streamed_emb.shape == emb.shape
    q = perturbed_queries(emb[::37], 0.7, np.random.default_rng(2))
    exact = config.mode == "brute_force"

    def build_both(in_ram_build, streamed_build) -> tuple[WindowIndex, WindowIndex]:
        scann_inputs.clear()
        in_ram = in_ram_build()
        fed_in_ram = list(scann_inputs)
        scann_inputs.clear()
        streamed = streamed_build()
        # brute force searches the stored vectors and hands ScaNN nothing; tree-AH gets one slice per shard
        assert len(scann_inputs) == len(fed_in_ram) == (0 if exact else len(streamed.metadata.config["shards"]))
        for x, y in zip(scann_inputs, fed_in_ram):
            assert isinstance(x, np.memmap)  # a slice of the file, no copy in anonymous memory
            np.testing.assert_array_equal(x, y)
        same(streamed, in_ram)
        return in_ram, streamed

    def same(a: WindowIndex, b: WindowIndex) -> None:
        keys = ("kind", "shards", "num_leaves", "searcher") + (("leaves_to_search",) if exact else ())
        assert {k: a.metadata.config.get(k) for k in keys} == {k: b.metadata.config.get(k) for k in keys}
        np.testing.assert_array_equal(a.vectors.rows(slice(None)), b.vectors.rows(slice(None)))
        np.testing.assert_array_equal(a.track_rows, b.track_rows)
        np.testing.assert_array_equal(a.offsets_s, b.offsets_s)
        if exact:
            assert a.metadata.recall_at_10 == b.metadata.recall_at_10 == 1.0
            for x, y in zip(a.search(q, 10), b.search(q, 10)):
                np.testing.assert_array_equal(x, y)
        else:
            assert min(a.metadata.recall_at_10, b.metadata.recall_at_10) >= 0.95  # the tuning target
            assert min(a.measure_recall(q), b.measure_recall(q)) >= 0.9

    in_ram, streamed = build_both(lambda: WindowIndex.build(emb, rows, offsets, tracks, "m", config),
                                  lambda: WindowIndex.build(streamed_emb, rows, offsets, tracks, "m", config))
    streamed.save(tmp_path / "streamed")
    loaded = WindowIndex.load(tmp_path / "streamed")
    same(loaded, in_ram)
    np.testing.assert_array_equal(loaded.search(q, 10)[0], streamed.search(q, 10)[0])

    new_emb = synthetic_chunk(SyntheticConfig(windows_per_track=10, seed=4), 0, 5)
    new_rows, new_off, _ = synthetic_layout(5, 10)
    new_tracks = [TrackInfo(f"new{i}") for i in range(5)]
    (tmp_path / "scratch").mkdir()
    _, added = build_both(lambda: in_ram.add(new_emb, new_rows, new_off, new_tracks),
                          lambda: loaded.add(new_emb, new_rows, new_off, new_tracks, scratch_dir=tmp_path / "scratch"))
    assert added.num_windows == 2050 and [p.suffix for p in (tmp_path / "scratch").iterdir()] == [".f32"]


def test_a_brute_force_index_searches_its_stored_vectors_and_keeps_no_second_copy(tmp_path):
    """Up to brute_force_max_windows the searcher is exact dot products with the stored vectors:
    nothing of ScaNN's is saved (its brute force would keep another float32 copy of every window)."""
    index, emb = small_index(num_tracks=30)
    assert index.kind == "brute_force"
    index.save(tmp_path / "idx")
    assert not (tmp_path / "idx" / "scann").exists()
    loaded = WindowIndex.load(tmp_path / "idx")
    q = perturbed_queries(emb[::7], 0.7, np.random.default_rng(3))
    rows, scores = loaded.search(q, 10)
    true_rows, true_scores = brute_force_search(q, emb, 10)
    np.testing.assert_array_equal(rows, true_rows)
    np.testing.assert_allclose(scores, true_scores, rtol=1e-5, atol=1e-6)



@pytest.mark.parametrize("seed", range(6))
def test_top_k_stable_is_a_stable_argsort_cut_to_k(seed):
    """The re-scored candidates' top k: exactly a stable descending argsort cut to k, ties (repeated
    windows, e.g. silence in a master) and absent candidates (-inf) included."""
    rng = np.random.default_rng(seed)
    m, n = 22, 1000
    scores = np.round(rng.normal(size=(m, n)), 1 if seed % 2 else 6).astype(np.float32)
    scores[:, rng.integers(0, n, 300)] = -np.inf
    for k in (1, 100, 700, 999, 1000):
        np.testing.assert_array_equal(top_k_stable(scores, k), np.argsort(-scores, axis=1, kind="stable")[:, :k])


def test_a_change_of_search_settings_re_tunes_the_built_searchers_without_rebuilding(tmp_path):
    index, emb = small_index(num_tracks=400, config=SearcherConfig(mode="tree_ah", tune_queries=200,
                                                                   tune_k=100, target_recall=0.98))
    before = index.metadata.config["leaves_to_search"]
    retuned = with_searcher_config(index, SearcherConfig(mode="tree_ah", tune_queries=200))
    assert retuned._searchers == index._searchers  # the same ScaNN trees: nothing rebuilt
    assert retuned.metadata.version != index.metadata.version
    assert retuned.metadata.config["leaves_to_search"] < before
    assert retuned.metadata.config["searcher"]["target_recall"] == 0.95
    tuning = retuned.metadata.extra["tuning"]
    assert tuning["k"] == 10 and dict(tuning["curve"])[retuned.metadata.config["leaves_to_search"]] == \
        pytest.approx(retuned.metadata.recall_at_10, abs=1e-4)
    assert retuned.metadata.recall_at_10 >= 0.95 and "retuned_seconds" in retuned.metadata.extra
    retuned.save(tmp_path / "retuned")
    loaded = WindowIndex.load(tmp_path / "retuned")
    q = perturbed_queries(emb[::41], 0.7, np.random.default_rng(3))
    np.testing.assert_array_equal(loaded.search(q, 100)[0], retuned.search(q, 100)[0])
    assert loaded.metadata.config["leaves_to_search"] == retuned.metadata.config["leaves_to_search"]
    # an index built before `tune_depth` existed (not in its recorded settings) is re-tuned too
    older = WindowIndex(index._searchers, index.vectors, index.track_rows, index.offsets_s, list(index.tracks),
                        replace(index.metadata, config={**index.metadata.config, "searcher": {
                            k: v for k, v in index.metadata.config["searcher"].items() if k != "tune_depth"}}))
    assert with_searcher_config(older, SearcherConfig(mode="tree_ah", tune_queries=200))._searchers == index._searchers
    # a build setting (the AH blocks) rebuilds the searcher
    rebuilt = with_searcher_config(index, SearcherConfig(mode="tree_ah", tune_queries=200, dims_per_block=4))
    assert rebuilt._searchers != index._searchers and "retuned_seconds" not in rebuilt.metadata.extra


def test_index_retune_command_re_tunes_an_index_directory_in_place(tmp_path, capsys):
    from serving.apps.earworm import main

    index, emb = small_index(num_tracks=400, config=SearcherConfig(mode="tree_ah", tune_queries=200,
                                                                   tune_k=100, target_recall=0.98,
                                                                   reorder_factor=10))
    path = tmp_path / "idx"
    index.save(path)
    assert main(["index-retune", "--index", str(path)]) == 0
    assert "leaves searched" in capsys.readouterr().out
    after = WindowIndex.load(path)
    assert after.version != index.version and after.metadata.config["searcher"]["target_recall"] == 0.95
    assert after.metadata.config["searcher"]["reorder_factor"] == SearcherConfig().reorder_factor != 10
    assert after.metadata.config["leaves_to_search"] < index.metadata.config["leaves_to_search"]
    assert after.metadata.extra["releases"][-1] == {"version": after.version, "created": after.metadata.created,
                                                    "retuned": True, "parent": index.version}
    np.testing.assert_array_equal(after.embeddings, index.embeddings)
    assert main(["index-retune", "--index", str(path), "--leaves-to-search", "3"]) == 0
    fixed = WindowIndex.load(path)
    assert fixed.metadata.config["leaves_to_search"] == 3 and fixed.metadata.extra["tuning"]["fixed"] is True
    assert main(["index-retune", "--index", str(path), "--leaves-to-search", "100000"]) == 2
    assert main(["index-retune", "--index", str(tmp_path / "absent")]) == 2
    with pytest.raises(SystemExit):
        main(["index-retune", "--index", str(path), "--target-recall", "1.5"])
    assert WindowIndex.load(path).version == fixed.version  # refused calls changed nothing


def test_scann_runs_its_avx2_kernels_where_the_cpu_has_them_as_well_as_its_sse4_ones():
    """The pinned ScaNN wheel leaves its AVX2 kernels off on every CPU; `_scann()` turns them on where
    numpy finds AVX2 and FMA. They read the same codes (an index built either way serves either way);
    their approximate top-k keeps slightly different candidates, so the check is recall, not equality."""
    import serving.index as index_module

    from numpy._core._multiarray_umath import __cpu_features__ as cpu

    config = SearcherConfig(mode="tree_ah", num_leaves=20, num_leaves_to_search=4, tune_queries=100)
    index, emb = small_index(num_tracks=400, config=config)
    flag = index_module._scann_avx2_flag()
    if flag is None:
        pytest.skip("this ScaNN build has no should_use_avx2 switch")
    has_avx2 = bool(cpu.get("AVX2") and cpu.get("FMA3"))
    assert index_module._enable_scann_avx2() is has_avx2 and flag.value is has_avx2
    if not has_avx2:
        pytest.skip("this CPU has no AVX2/FMA")
    queries = perturbed_queries(emb[::20][:200], 0.6, np.random.default_rng(5))
    _, true_scores = brute_force_search(queries, emb, 100)

    def recall(ix):
        rows, scores = ix.search(queries, 100)
        assert np.all(np.diff(scores, axis=1) <= 0)
        return [recall_at_k(rows, queries, emb, true_scores, k) for k in (10, 100)]

    with_avx2 = recall(index)
    flag.value = False
    try:
        sse4 = recall(index)
        built_sse4, _ = small_index(num_tracks=400, config=config)
    finally:
        flag.value = True
    served_avx2 = recall(built_sse4)
    assert sse4[0] > 0.5 and sse4[1] > 0.5  # a real test: 4 of 20 leaves miss some
    for r in (with_avx2, served_avx2):
        assert abs(r[0] - sse4[0]) <= 0.02 and abs(r[1] - sse4[1]) <= 0.02, (r, sse4)
