"""Indexing a catalogue in this process: the one path the demo, the evaluation and the benchmarks use.

Per track (the same rules as the Beam indexing pipeline, `beam_pipelines/indexing.py`, which batches
many tracks' windows through the model on many workers): decode the master with the `load_audio`
rules, at most `MAX_MASTER_SECONDS`, and embed its windows (`Embedder.embed_master`: 4 s windows every
`master_hop_seconds`, default MASTER_WINDOW_HOP_SECONDS, recorded in the index's metadata). A master
that cannot be read is skipped and named, never fatal, unless nothing at all could be read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_gen import constants as C
from data_gen.audio import AudioError, decode_audio, load_audio
from serving.window_store import TrackInfo

log = logging.getLogger(__name__)


class NothingToIndexError(ValueError):
    """No master of the catalogue could be read."""


@dataclass
class CatalogueEmbeddings:
    """`WindowIndex.build` arguments for the readable tracks, and the tracks that were skipped."""

    embeddings: np.ndarray
    track_rows: np.ndarray
    offsets_s: np.ndarray
    tracks: list[TrackInfo]
    skipped: dict[str, str] = field(default_factory=dict)
    """track id -> why it could not be read."""


def load_master(source: Any) -> np.ndarray:
    """A master's audio as every indexer reads it (mono float32 at SAMPLE_RATE, at most
    MAX_MASTER_SECONDS), from a path or from the file's bytes (what a Beam worker read)."""
    if isinstance(source, (bytes, bytearray)):
        return decode_audio(bytes(source), max_seconds=C.MAX_MASTER_SECONDS)
    return load_audio(source, max_seconds=C.MAX_MASTER_SECONDS)


def embed_catalogue(embedder: Any, tracks: Sequence[Any], *, progress: bool = True,
                    master_hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS) -> CatalogueEmbeddings:
    """Embed every readable master of `tracks` (data_gen.manifest.Track: track_id, title, artist, path),
    its windows starting every `master_hop_seconds`."""
    from tqdm import tqdm

    embs, rows, offs, infos, skipped = [], [], [], [], {}
    for t in tqdm(tracks, desc="embedding masters", unit="track", mininterval=5, disable=not progress):
        try:
            audio = load_master(t.path)
        except (AudioError, OSError) as e:
            log.warning("not indexing %s: %s", t.track_id, e)
            skipped[t.track_id] = str(e)
            continue
        e, o = embedder.embed_master(audio, master_hop_seconds)
        embs.append(e)
        offs.append(o)
        rows.append(np.full(len(e), len(infos), np.int32))
        infos.append(TrackInfo(t.track_id, t.title, t.artist))
    if not infos:
        raise NothingToIndexError(f"no master of the catalogue could be read ({len(skipped)} tried): nothing to index")
    return CatalogueEmbeddings(np.concatenate(embs), np.concatenate(rows), np.concatenate(offs), infos, skipped)


def index_catalogue(embedder: Any, tracks: Sequence[Any], config: Any = None, *, progress: bool = True,
                    master_hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS) -> Any:
    """A `WindowIndex` (searcher `config`, default sized to the data) over the readable masters,
    windows every `master_hop_seconds` (recorded in metadata.extra for the retriever's grids)."""
    from serving.index import WindowIndex

    cat = embed_catalogue(embedder, tracks, progress=progress, master_hop_seconds=master_hop_seconds)
    extra: dict[str, Any] = {"master_hop_seconds": float(master_hop_seconds)}
    if cat.skipped:
        extra["skipped_tracks"] = cat.skipped
    return WindowIndex.build(cat.embeddings, cat.track_rows, cat.offsets_s, cat.tracks, embedder.version, config,
                             extra=extra)


__all__ = ["CatalogueEmbeddings", "NothingToIndexError", "embed_catalogue", "index_catalogue", "load_master"]
