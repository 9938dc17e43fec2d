"""Pipeline 2: embedding catalogue masters and building / extending the window index."""

from __future__ import annotations

import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines.indexing import EmbedBatchFn, EmbedTracks, IndexPipelineError, TrackRef, build_index
from data_gen import constants as C
from data_gen.manifest import read_catalogue
from tests.beam_pipelines.conftest import IN_PROCESS, make_tiny_catalogue


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return make_tiny_catalogue(tmp_path_factory.mktemp("cat"), ("t1", "t2"), corrupt="bad")


def expected_windows(path) -> int:
    from data_gen.audio import load_audio
    from data_gen.windows import cut_master_windows

    return int(cut_master_windows(load_audio(path))[0].shape[0])


def test_embed_tracks_embeds_every_window_and_reports_bad_tracks(catalogue, untrained_model):
    tracks = read_catalogue(catalogue)
    refs = [TrackRef(i, t.track_id, str(t.path)) for i, t in enumerate(tracks)]
    want = [(t.track_id, expected_windows(t.path), C.EMBEDDING_DIM, True) for t in tracks if t.track_id != "bad"]
    with BeamTestPipeline(options=PipelineOptions(list(IN_PROCESS))) as p:
        out = p | beam.Create(refs) | EmbedTracks(str(untrained_model), batch_tracks=2)
        got = out["main"] | "shape" >> beam.Map(lambda e: (
            e.track_id, e.embeddings.shape[0], e.embeddings.shape[1],
            bool(np.allclose(np.linalg.norm(e.embeddings, axis=1), 1.0, atol=1e-3))
            and e.offsets_s.shape[0] == e.embeddings.shape[0]))
        assert_that(got, equal_to(want), label="main")
        assert_that(out["errors"] | "err" >> beam.Map(lambda r: (r["track_id"], r["stage"], bool(r["reason"]))),
                    equal_to([("bad", "decode", True)]), label="errors")


@pytest.fixture(scope="module")
def built(catalogue, untrained_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "idx"
    # one track per shard: the driver streams several shards into its spill file
    build_index(catalogue, untrained_model, out, runner_args=IN_PROCESS, tracks_per_shard=1)
    return out


def test_the_index_holds_the_in_process_indexers_embeddings(built, catalogue, untrained_model):
    """Beam (front-end once per master, cross-track body batches, shards spilled to disk) and
    serving.indexer.embed_catalogue give the same windows, offsets and embeddings."""
    from serving.embedder import Embedder
    from serving.index import WindowIndex
    from serving.indexer import embed_catalogue

    index = WindowIndex.load(built)
    want = embed_catalogue(Embedder(untrained_model), read_catalogue(catalogue), progress=False)
    assert [t.track_id for t in index.tracks] == [t.track_id for t in want.tracks]
    np.testing.assert_array_equal(index.track_rows, want.track_rows)
    np.testing.assert_array_equal(index.offsets_s, want.offsets_s)
    np.testing.assert_allclose(np.asarray(index.embeddings), want.embeddings, atol=1e-5)


class _FailsInBatches:
    """An embedder whose batches fail and which cannot embed one given master."""

    def __init__(self, real, bad: np.ndarray):
        self.real, self.bad = real, bad

    def embed_masters(self, audios, hop_seconds=C.MASTER_WINDOW_HOP_SECONDS):
        if len(audios) > 1:
            raise RuntimeError("batch failed")
        return self.real.embed_masters(audios, hop_seconds)

    def embed_master(self, audio, hop_seconds=C.MASTER_WINDOW_HOP_SECONDS):
        if audio is self.bad:
            raise RuntimeError("this master breaks the model")
        return self.real.embed_master(audio, hop_seconds)


@pytest.mark.parametrize("split_frontend", [True, False])
def test_embed_batch_gives_the_in_process_embeddings_and_retries_one_by_one(catalogue, untrained_model,
                                                                             split_frontend):
    """EmbedBatchFn batches across tracks through Embedder.embed_masters (or the per-window fallback of
    an export without the front-end signatures); a failing batch is retried track by track."""
    from serving.embedder import Embedder
    from serving.indexer import embed_catalogue, load_master

    tracks = [t for t in read_catalogue(catalogue) if t.track_id != "bad"]
    embedder = Embedder(untrained_model, runtime="tensorflow")  # the per-window fallback has no int8 body
    want = embed_catalogue(embedder, tracks, progress=False)
    if not split_frontend:
        embedder._log_power_fn = None  # as loaded from an older SavedModel
        assert not embedder.splits_frontend
    fn = EmbedBatchFn(str(untrained_model), 64, 25)
    fn.setup()
    fn.embedder = embedder
    audios = [load_master(t.path) for t in tracks]
    batch = [(TrackRef(i, t.track_id, str(t.path)), a, a.shape[0] / C.SAMPLE_RATE)
             for i, (t, a) in enumerate(zip(tracks, audios))]
    got = list(fn.process(batch))
    assert [e.track_id for e in got] == [t.track_id for t in tracks]
    for i, e in enumerate(got):
        np.testing.assert_array_equal(e.offsets_s, want.offsets_s[want.track_rows == i])
        np.testing.assert_allclose(e.embeddings, want.embeddings[want.track_rows == i], atol=1e-5)
    fn.embedder = _FailsInBatches(embedder, audios[0])
    out = list(fn.process(batch))
    assert [o.value["track_id"] for o in out if isinstance(o, beam.pvalue.TaggedOutput)] == [tracks[0].track_id]
    ok = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert [e.track_id for e in ok] == [t.track_id for t in tracks[1:]]
    np.testing.assert_allclose(ok[0].embeddings, got[1].embeddings, atol=1e-6)


def test_build_index_skips_the_bad_track_and_finds_every_window(built, catalogue, untrained_model):
    from serving.embedder import Embedder
    from serving.index import WindowIndex

    index = WindowIndex.load(built)
    assert [t.track_id for t in index.tracks] == ["t1", "t2"]
    assert index.metadata.model_version == Embedder(untrained_model).version
    assert index.metadata.recall_at_10 == pytest.approx(1.0)
    assert index.metadata.extra["pipeline"]["errors"] == 1
    assert index.metadata.extra["master_hop_seconds"] == index.metadata.master_hop_seconds == 1.0
    errors = [json.loads(x) for x in (built / "errors-00000-of-00001.jsonl").read_text().splitlines()]
    assert [(e["track_id"], e["stage"]) for e in errors] == [("bad", "decode")]
    # windows are in track order with increasing offsets; each window finds itself first
    assert np.all(np.diff(index.track_rows) >= 0)
    t1 = index.track_rows == 0
    assert np.all(np.diff(index.offsets_s[t1]) > 0) and index.offsets_s[t1][0] == 0.0
    rows, _ = index.search(np.asarray(index.embeddings[:5]), k=1)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_add_a_release_without_re_embedding_the_old_catalogue(built, untrained_model, tmp_path):
    from serving.index import WindowIndex

    old = WindowIndex.load(built)
    new_cat = make_tiny_catalogue(tmp_path / "release2", ("t3",))
    out = tmp_path / "idx2"
    build_index(new_cat, untrained_model, out, add_to=built, runner_args=IN_PROCESS)
    new = WindowIndex.load(out)
    assert [t.track_id for t in new.tracks] == ["t1", "t2", "t3"]
    n_old = old.num_windows
    np.testing.assert_array_equal(np.asarray(new.embeddings[:n_old]), np.asarray(old.embeddings))
    assert new.num_windows > n_old and set(new.track_rows[n_old:].tolist()) == {2}
    # the same tracks cannot be added twice
    with pytest.raises(IndexPipelineError, match="already in"):
        build_index(new_cat, untrained_model, tmp_path / "idx3", add_to=out, runner_args=IN_PROCESS)


def test_a_2s_hop_index_agrees_with_the_in_process_indexer_and_refuses_a_1s_release(catalogue, untrained_model,
                                                                                   built, tmp_path):
    """--master-hop-seconds 2: Beam and serving.indexer cut and embed the same windows (0, 2, 4 s and
    the end-aligned last one of a 9 s master), the hop is recorded, the retriever's grids follow it,
    and neither a 1 s release added to it nor a 2 s release added to a 1 s index is accepted."""
    from serving.embedder import Embedder
    from serving.index import IndexBuildError, WindowIndex
    from serving.indexer import embed_catalogue
    from serving.retrieval import Retriever

    out = tmp_path / "idx-hop2"
    build_index(catalogue, untrained_model, out, runner_args=IN_PROCESS, master_hop_seconds=2.0)
    index = WindowIndex.load(out)
    embedder = Embedder(untrained_model)
    want = embed_catalogue(embedder, read_catalogue(catalogue), progress=False, master_hop_seconds=2.0)
    np.testing.assert_array_equal(index.track_rows, want.track_rows)
    np.testing.assert_array_equal(index.offsets_s, want.offsets_s)
    np.testing.assert_allclose(np.asarray(index.embeddings), want.embeddings, atol=1e-5)
    np.testing.assert_array_equal(index.offsets_s[index.track_rows == 0], [0.0, 2.0, 4.0, 5.0])
    assert index.num_windows < WindowIndex.load(built).num_windows
    assert index.metadata.master_hop_seconds == 2.0
    assert Retriever(embedder, index).config.offset_bin_seconds == 1.0
    release = make_tiny_catalogue(tmp_path / "release", ("t9",))
    with pytest.raises(IndexBuildError, match="every 1 s .* built at 2 s"):
        build_index(release, untrained_model, tmp_path / "bad1", add_to=out, runner_args=IN_PROCESS)
    with pytest.raises(IndexBuildError, match="every 2 s .* built at 1 s"):
        build_index(release, untrained_model, tmp_path / "bad2", add_to=built, runner_args=IN_PROCESS,
                    master_hop_seconds=2.0)
    with pytest.raises(ValueError, match="master hop"):
        build_index(release, untrained_model, tmp_path / "bad3", runner_args=IN_PROCESS, master_hop_seconds=0.0)


def test_a_master_stored_as_an_mp3_cut_mid_frame_is_indexed(catalogue, untrained_model, tmp_path):
    """Real catalogues hold MP3 excerpts cut mid-frame (libsndfile refuses them; FFmpeg decodes)."""
    from data_gen.audio import load_audio
    from tests.conftest import ffmpeg_encode

    master = load_audio(read_catalogue(catalogue)[0].path)
    mp3 = ffmpeg_encode(master, C.SAMPLE_RATE, "mp3", "libmp3lame")
    path = tmp_path / "excerpt.mp3"
    path.write_bytes(mp3[417:-300])  # starts and ends inside an audio frame
    want = [("cut", expected_windows(path), C.EMBEDDING_DIM)]
    assert want[0][1] >= 5
    with BeamTestPipeline(options=PipelineOptions(list(IN_PROCESS))) as p:
        out = p | beam.Create([TrackRef(0, "cut", str(path))]) | EmbedTracks(str(untrained_model))
        got = out["main"] | beam.Map(lambda e: (e.track_id, e.embeddings.shape[0], e.embeddings.shape[1]))
        assert_that(got, equal_to(want), label="main")
        assert_that(out["errors"], equal_to([]), label="errors")
