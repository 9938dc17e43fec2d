"""The Milvus backend (serving/milvus_index.py) against Milvus Lite, the embedded Milvus: no server
process, so these run everywhere the project installs (pymilvus[milvus-lite] is pinned)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.index import DuplicateTrackError, IndexBuildError, IndexLoadError, TrackInfo, WindowIndex
from serving.milvus_index import (MilvusIndexConfig, MilvusWindowStore, add_release, build_collection,
                                  copy_index, read_collection_version, remove_tracks)
from tests.serving.conftest import TRACK_IDS


@pytest.fixture(scope="module")
def scann_index(make_index) -> WindowIndex:
    return make_index()


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    return str(tmp_path_factory.mktemp("milvus") / "earworm.db")


@pytest.fixture(scope="module")
def store(scann_index, lite) -> MilvusWindowStore:
    return copy_index(scann_index, lite, "windows")


def _queries(index: WindowIndex, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = np.asarray(index.embeddings[::7], np.float32) + 0.2 * rng.standard_normal((len(index.embeddings[::7]), index.dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_search_gives_the_neighbours_and_similarities_of_exact_search(store, scann_index):
    q = _queries(scann_index)
    k = 20
    hits = store.search_windows(q, k)
    ref = scann_index.search_windows(q, k)  # a 3-track index is brute force: exact
    rows, sims = scann_index.search_brute_force(q, k)
    np.testing.assert_allclose(hits.sims, sims, atol=1e-5)
    np.testing.assert_allclose(hits.sims, ref.sims, atol=1e-5)
    assert (hits.track_rows == ref.track_rows).mean() > 0.98  # ties between equal scores may swap
    assert (hits.offsets_s == ref.offsets_s).mean() > 0.98
    assert store.num_tracks == len(TRACK_IDS) and store.num_windows == scann_index.num_windows
    assert store.metadata.model_version == scann_index.metadata.model_version
    # more neighbours than windows: padded like the in-process index
    many = store.search_windows(q[:2], scann_index.num_windows + 5)
    assert (many.track_rows[:, -5:] == -1).all() and np.isneginf(many.sims[:, -5:]).all()


def test_fetch_by_track_in_time_order(store, scann_index):
    got = store.fetch_tracks([2, 0, 2])
    want = scann_index.fetch_tracks([2, 0, 2])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.offsets_s, w.offsets_s)
        assert np.all(np.diff(g.offsets_s) > 0)
        np.testing.assert_allclose(g.emb, w.emb, atol=1e-6)
    for backend in (store, scann_index):  # the re-ranking's layout of the same windows
        laid = backend.fetch_candidates([2, 0, 2])
        assert laid.candidates.tolist() == [2, 0, 2] and laid.starts.tolist() == np.cumsum(
            [0] + [w.offsets_s.size for w in want]).tolist()
        np.testing.assert_array_equal(laid.offsets_s, np.concatenate([w.offsets_s for w in want]))
        np.testing.assert_allclose(laid.emb, np.concatenate([w.emb for w in want]), atol=1e-6)
    assert scann_index.fetch_candidates([]).candidates.size == 0


def test_a_retriever_over_milvus_answers_like_over_scann(store, scann_index, embedder, masters):
    from data_gen import constants as C
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

    cfg = RetrievalConfig(no_match_threshold=0.5, query_tempo_rates=(1.0, 0.8))
    over_scann, over_milvus = Retriever(embedder, scann_index, cfg), Retriever(embedder, store, cfg)
    for tid in TRACK_IDS:
        audio = masters[tid][3 * C.SAMPLE_RATE : 11 * C.SAMPLE_RATE]
        q = embedder.embed_query(audio, cfg.query_tempo_rates)
        a = over_scann.identify_embeddings(q.emb, q.offsets_s, 8.0, views=q.views)
        b = over_milvus.identify_embeddings(q.emb, q.offsets_s, 8.0, views=q.views)
        assert [m.track_id for m in a.matches] == [m.track_id for m in b.matches]
        assert a.matches[0].track_id == tid
        np.testing.assert_allclose([m.score for m in a.matches], [m.score for m in b.matches], atol=1e-4)
        np.testing.assert_allclose([m.offset_s for m in a.matches], [m.offset_s for m in b.matches], atol=1e-3)
        assert a.no_match == b.no_match


def test_a_missing_collection_is_a_clear_error(lite, tmp_path):
    with pytest.raises(IndexLoadError, match="no Earworm window collection 'nope'") as e:
        MilvusWindowStore.open(lite, "nope")
    assert lite in str(e.value)
    with pytest.raises(IndexLoadError, match="absent.db"):
        MilvusWindowStore.open(str(tmp_path / "absent.db"), "windows")
    assert read_collection_version(lite, "nope") is None


def test_releases_duplicates_removal_and_the_model_check(make_index, master_embeddings, lite, embedder):
    from serving.retrieval import Retriever
    from serving.retrieval_types import ModelMismatchError

    base = make_index(track_ids=TRACK_IDS[:2])
    s0 = copy_index(base, lite, "releases")
    e, o = master_embeddings[TRACK_IDS[2]]
    new = TrackInfo(TRACK_IDS[2], "New", "Artist")
    s1 = add_release(lite, "releases", e, np.zeros(len(e), np.int64), o, [new], model_version=embedder.version)
    assert s1.version != s0.version and s1.num_tracks == 3 and s1.num_windows == base.num_windows + len(e)
    assert [r.get("tracks_added") for r in s1.metadata.extra["releases"]] == [2, 1]
    row = s1.track_row(TRACK_IDS[2])
    hits = s1.search_windows(e[:3], 1)
    assert (hits.track_rows[:, 0] == row).all()
    np.testing.assert_allclose(hits.sims[:, 0], 1.0, atol=1e-4)
    with pytest.raises(DuplicateTrackError, match=TRACK_IDS[0]):
        add_release(lite, "releases", e, np.zeros(len(e), np.int64), o, [TrackInfo(TRACK_IDS[0])],
                    model_version=embedder.version)
    with pytest.raises(IndexBuildError, match="model"):
        add_release(lite, "releases", e, np.zeros(len(e), np.int64), o, [TrackInfo("other")], model_version="m-other")
    # the collection keeps the copied index's master hop, and a release cut at another is refused
    assert s1.metadata.extra["master_hop_seconds"] == s1.metadata.master_hop_seconds == 1.0
    with pytest.raises(IndexBuildError, match="every 2 s .* built at 1 s"):
        add_release(lite, "releases", e, np.zeros(len(e), np.int64), o, [TrackInfo("other")],
                    model_version=embedder.version, master_hop_seconds=2.0)
    # a reader that has not reloaded keeps its own track list: the new release's windows are not served
    assert TRACK_IDS[2] not in {s0.tracks[t].track_id for t in s0.search_windows(e[:3], 5).track_rows.ravel() if t >= 0}

    md = remove_tracks(lite, "releases", [TRACK_IDS[0]])
    assert md.num_tracks == 2 and md.version != s1.version
    assert read_collection_version(lite, "releases") == md.version
    s2 = MilvusWindowStore.open(lite, "releases")
    with pytest.raises(KeyError):
        s2.track_row(TRACK_IDS[0])
    gone = master_embeddings[TRACK_IDS[0]][0][:4]
    assert 0 not in s2.search_windows(gone, 10).track_rows  # its windows are deleted
    assert s2.fetch_tracks([0])[0].emb.shape == (0, s2.dim)
    with pytest.raises(KeyError, match="not-there"):
        remove_tracks(lite, "releases", ["not-there"])

    other = build_collection(lite, "other_model", e, np.zeros(len(e), np.int64), o, [new], "m-other")
    with pytest.raises(ModelMismatchError, match="m-other"):
        Retriever(embedder, other)
    with pytest.raises(IndexBuildError, match="already exists"):
        build_collection(lite, "other_model", e, np.zeros(len(e), np.int64), o, [new], "m-other")


def test_the_calibration_travels_with_the_collection(store, embedder):
    from serving.calibration import calibrate_scores
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

    cal = calibrate_scores([0.2, 0.3, 0.4], aggregation="temporal", target_false_accept_rate=0.34,
                           model_version=store.metadata.model_version, index_version=store.version)
    store.save_calibration(cal)
    reopened = MilvusWindowStore.open(store.uri, store.collection)
    r = Retriever(embedder, reopened, RetrievalConfig())
    assert r.threshold_source == "calibration" and r.threshold == pytest.approx(cal.threshold)
    assert reopened.load_calibration("vote") is None


def test_ivf_flat_on_lite_records_its_measured_recall(scann_index, lite):
    s = copy_index(scann_index, lite, "ivf", MilvusIndexConfig("IVF_FLAT", index_params={"nlist": 4},
                                                               search_params={"nprobe": 4}))
    recall = s.metadata.extra["recall"]
    assert s.metadata.recall_at_10 == pytest.approx(1.0) and recall["recall_at_100"] == pytest.approx(1.0)
    assert s.kind == "milvus:IVF_FLAT"
    with pytest.raises(IndexBuildError, match="Milvus Lite builds only"):
        copy_index(scann_index, lite, "diskann", MilvusIndexConfig("DISKANN"))


def test_the_beam_sink_writes_windows_from_a_worker(lite, master_embeddings):
    from beam_pipelines.indexing import TrackEmbeddings, WriteMilvusWindowsFn
    from serving.milvus_index import MilvusWriter

    e, o = master_embeddings[TRACK_IDS[1]]
    writer = MilvusWriter(lite, "sink", dim=e.shape[1], model_version="m")
    fn = WriteMilvusWindowsFn(lite, "sink", first_row=5, batch=7)
    fn.setup()
    fn.start_bundle()
    out = list(fn.process(TrackEmbeddings(2, "x", e, o, 20.0)))
    fn.finish_bundle()
    fn.start_bundle()  # a retried bundle rewrites the same ids: no duplicates
    list(fn.process(TrackEmbeddings(2, "x", e, o, 20.0)))
    fn.finish_bundle()
    assert out == [{"row": 7, "track_id": "x", "windows": len(e)}]
    writer.windows_written = len(e)
    writer.add_tracks([(7, TrackInfo("x"))])
    writer.finish(windows_per_track={7: len(e)})
    s = MilvusWindowStore.open(lite, "sink")
    assert s.num_windows == len(e) and s.track_row("x") == 7
    got = s.fetch_tracks([7])[0]
    np.testing.assert_array_equal(got.offsets_s, o)


def test_index_command_writes_a_milvus_collection(tmp_path, untrained_model_dir):
    from serving.apps.earworm import main
    from tests.beam_pipelines.conftest import IN_PROCESS, make_tiny_catalogue

    manifest = make_tiny_catalogue(tmp_path / "cat", ("t1", "t2"), corrupt="bad")
    release = make_tiny_catalogue(tmp_path / "rel", ("t3",))
    uri = str(tmp_path / "cli.db")
    base = ["--model", str(untrained_model_dir), "--backend", "milvus", "--uri", uri, *IN_PROCESS]
    assert main(["index", "--catalogue", str(manifest), "--collection", "cat", *base]) == 0
    s = MilvusWindowStore.open(uri, "cat")
    assert [t.track_id for t in s.tracks if t.track_id] == ["t1", "t2"]
    assert s.metadata.extra["pipeline"]["errors"] == 1
    assert main(["index", "--catalogue", str(manifest), "--collection", "cat", *base]) == 2  # exists
    assert main(["index", "--catalogue", str(release), "--add-to", "cat", *base]) == 0
    assert main(["index", "--catalogue", str(release), "--add-to", "cat", *base]) == 2  # duplicate
    s = MilvusWindowStore.open(uri, "cat")
    assert s.num_tracks == 3 and json.dumps(s.metadata.extra["releases"]).count("tracks_added") == 2
    windows = s.fetch_tracks([s.track_row("t3")])[0]
    assert windows.emb.shape[0] > 0 and np.all(np.diff(windows.offsets_s) > 0)
    assert main(["index-remove", "--backend", "milvus", "--uri", uri, "--collection", "cat",
                 "--track-id", "t1"]) == 0
    assert MilvusWindowStore.open(uri, "cat").num_tracks == 2
    assert main(["serve", "--model", str(untrained_model_dir), "--backend", "milvus"]) == 2  # no --uri


def test_the_server_serves_a_collection_and_swaps_to_a_new_release(server_factory, make_index, master_embeddings,
                                                                    embedder, good_query, tmp_path):
    from serving.client import RecognizerClient

    uri = str(tmp_path / "served.db")
    copy_index(make_index(track_ids=TRACK_IDS[:2]), uri, "served")
    server, target = server_factory(index_dir=None, index_backend="milvus", milvus_uri=uri,
                                    milvus_collection="served")
    with RecognizerClient(target, timeout=30) as client:
        assert client.identify_audio(good_query, top_k=2).matches[0].track_id == TRACK_IDS[1]
    before = server.components.index.version
    assert server.reload_index() is False  # same version
    e, o = master_embeddings[TRACK_IDS[2]]
    add_release(uri, "served", e, np.zeros(len(e), np.int64), o, [TrackInfo(TRACK_IDS[2])],
                model_version=embedder.version)
    assert server.reload_index() is True
    assert server.components.index.version != before and server.components.index.num_tracks == 3
    server.stop(grace=0)


def test_the_pipeline_writes_from_its_workers_like_from_its_driver(tmp_path, untrained_model_dir):
    """The worker-side path (what a Milvus server URI uses), run in process against Milvus Lite."""
    from beam_pipelines.indexing import run_index
    from beam_pipelines.options import IndexConfig
    from tests.beam_pipelines.conftest import IN_PROCESS, make_tiny_catalogue

    manifest = make_tiny_catalogue(tmp_path / "cat", ("w1", "w2", "w3"), corrupt="bad")
    uri = str(tmp_path / "workers.db")
    stores = {}
    for name, workers in (("by_workers", True), ("by_driver", False)):
        cfg = IndexConfig(catalogue=str(manifest), model_dir=str(untrained_model_dir), out_dir="", backend="milvus",
                          milvus_uri=uri, milvus_collection=name, milvus_worker_writes=workers, batch_tracks=2)
        summary = run_index(cfg, IN_PROCESS)
        assert summary.tracks_indexed == 3 and summary.errors == 1
        stores[name] = MilvusWindowStore.open(uri, name)
    a, b = stores["by_workers"], stores["by_driver"]
    assert a.num_windows == b.num_windows == sum(a._track_windows) and a.num_tracks == 3
    for tid in ("w1", "w2", "w3"):
        wa, wb = a.fetch_tracks([a.track_row(tid)])[0], b.fetch_tracks([b.track_row(tid)])[0]
        np.testing.assert_array_equal(wa.offsets_s, wb.offsets_s)
        np.testing.assert_allclose(wa.emb, wb.emb, atol=1e-5)


def test_index_remove_on_a_scann_index_rebuilds_it_without_the_tracks(make_index, tmp_path):
    from serving.apps.earworm import main

    index = make_index()
    path = tmp_path / "idx"
    index.save(path)
    assert main(["index-remove", "--index", str(path), "--track-id", TRACK_IDS[1]]) == 0
    after = WindowIndex.load(path)
    assert [t.track_id for t in after.tracks] == [TRACK_IDS[0], TRACK_IDS[2]]
    kept = index.fetch_tracks([2])[0]
    np.testing.assert_allclose(after.fetch_tracks([after.track_row(TRACK_IDS[2])])[0].emb, kept.emb, atol=1e-6)
    assert after.metadata.extra["releases"][-1]["tracks_removed"] == 1
    assert main(["index-remove", "--index", str(path), "--track-id", "absent"]) == 2
