"""`earworm benchset zalo`: real hums against the real commercial recordings they hum.

Source layout (../shared/data/zalo_mini): manifest.csv (track_id,title,artist,path: the ~12 s song
excerpts, polyphonic MP3 with vocals) and queries.csv (query_id,path,track_id,kind: phone-recorded
hums). The benchmark points at the source files (no copy) and pads the catalogue with rendered
distractor masters (`--distractors N`, default 1,000: the first N tracks of the synthetic benchmark
catalogue), so that each hum must pick its song out of N + 20 recordings.

The only real-hum-vs-real-recording pairs we have: measure on them, never train on them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data_gen.manifest import ManifestError, Query, read_catalogue, read_queries, write_catalogue, write_queries
from training.evaluation.benchsets.common import default_source, pad_with_distractors, require_source, write_info

log = logging.getLogger(__name__)

NAME = "zalo_mini"
QUERY_KIND = "hum_real"
DEFAULT_DISTRACTORS = 1000


def build_zalo(out_dir: Path, source: Path | None = None, *, distractors: Path | None = None) -> dict[str, Any]:
    """Write OUT/catalogue/manifest.csv and OUT/queries/queries.csv; returns a summary.

    distractors: a catalogue manifest whose tracks pad the catalogue (None: the 20 songs alone)."""
    source = Path(source) if source else default_source(NAME)
    manifest = require_source(source, NAME)
    songs = read_catalogue(manifest)
    queries_csv = require_source(source, NAME, "queries.csv")
    hums = read_queries(queries_csv)
    known = {t.track_id for t in songs}
    unknown = sorted({q.track_id for q in hums if q.track_id and q.track_id not in known})
    if unknown:
        raise ManifestError(f"{queries_csv}: hums of songs not in {manifest}: {unknown[:5]}")
    if not hums:
        raise ManifestError(f"{queries_csv}: no hums listed")
    tracks = pad_with_distractors(songs, distractors)
    queries = [Query(q.query_id, q.path, q.track_id, {**q.extra, "kind": q.extra.get("kind") or QUERY_KIND})
               for q in hums]
    out_dir = Path(out_dir).resolve()
    write_catalogue(out_dir / "catalogue" / "manifest.csv", tracks)
    write_queries(out_dir / "queries" / "queries.csv", queries)
    write_info(out_dir, {"benchset": "zalo", "source": str(source.resolve()), "songs": len(songs),
                         "distractors": len(tracks) - len(songs),
                         "distractor_catalogue": str(distractors) if distractors else None,
                         "queries": len(queries)})
    log.info("zalo: %d real songs (+%d distractors), %d real hums", len(songs), len(tracks) - len(songs),
             len(queries))
    return {"catalogue": str(out_dir / "catalogue" / "manifest.csv"),
            "queries": str(out_dir / "queries" / "queries.csv"), "songs": len(songs), "tracks": len(tracks),
            "num_queries": len(queries)}
