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
