"""serving.indexer: the one in-process indexer (demo, evaluation, benchmarks)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from data_gen import constants as C
from data_gen.manifest import Track


def test_unreadable_masters_are_skipped_and_named(tmp_path, embedder, masters, master_embeddings):
    from serving.indexer import NothingToIndexError, embed_catalogue, index_catalogue, load_master

    tracks = []
    for tid, audio in masters.items():
        sf.write(tmp_path / f"{tid}.wav", audio, C.SAMPLE_RATE, subtype="FLOAT")
        tracks.append(Track(tid, tid.upper(), "someone", tmp_path / f"{tid}.wav"))
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    tracks.insert(1, Track("broken", "", "", tmp_path / "broken.wav"))
    tracks.append(Track("gone", "", "", tmp_path / "missing.wav"))

    cat = embed_catalogue(embedder, tracks, progress=False)
    assert [t.track_id for t in cat.tracks] == list(masters)
    assert set(cat.skipped) == {"broken", "gone"}
    first = master_embeddings[tracks[0].track_id]
    np.testing.assert_allclose(cat.embeddings[cat.track_rows == 0], first[0], atol=1e-5)
    np.testing.assert_array_equal(cat.offsets_s[cat.track_rows == 0], first[1])
    # bytes (a Beam worker's read) decode as the path does
    path = tracks[0].path
    np.testing.assert_array_equal(load_master(path.read_bytes()), load_master(path))

    index = index_catalogue(embedder, tracks, progress=False)
    assert index.num_tracks == len(masters) and set(index.metadata.extra["skipped_tracks"]) == {"broken", "gone"}
    with pytest.raises(NothingToIndexError, match="nothing to index"):
        embed_catalogue(embedder, [tracks[1], tracks[-1]], progress=False)


def test_a_2s_master_hop_halves_the_windows_and_sets_the_retrievers_grids(tmp_path, embedder, masters):
    """index_catalogue(master_hop_seconds=2): windows at 0, 2, 4, ... s (half of the 1 s grid's, the same
    vectors where they coincide), the hop recorded, the retriever's alignment grids at half of it."""
    from serving.indexer import index_catalogue
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

    tid, audio = next(iter(masters.items()))
    sf.write(tmp_path / "m.wav", audio, C.SAMPLE_RATE, subtype="FLOAT")
    tracks = [Track(tid, "T", "A", tmp_path / "m.wav")]
    one = index_catalogue(embedder, tracks, progress=False)
    two = index_catalogue(embedder, tracks, progress=False, master_hop_seconds=2.0)
    assert one.metadata.master_hop_seconds == 1.0 and two.metadata.extra["master_hop_seconds"] == 2.0
    np.testing.assert_array_equal(one.offsets_s, np.arange(17, dtype=np.float32))  # 20 s master, 4 s windows
    np.testing.assert_array_equal(two.offsets_s, np.arange(0, 17, 2, dtype=np.float32))
    np.testing.assert_allclose(np.asarray(two.embeddings), np.asarray(one.embeddings)[::2], atol=1e-5)
    grids = Retriever(embedder, two).config
    assert (grids.offset_bin_seconds, grids.rerank_step_seconds, grids.rerank_tolerance_seconds) == (1.0, 1.0, 1.0)
    assert Retriever(embedder, one).config.offset_bin_seconds == 0.5
    kept = Retriever(embedder, two, RetrievalConfig(rerank_step_seconds=0.25)).config
    assert kept.rerank_step_seconds == 0.25 and kept.offset_bin_seconds == 1.0
    with pytest.raises(ValueError, match="master hop"):
        embedder.embed_master(audio, 0.0)
