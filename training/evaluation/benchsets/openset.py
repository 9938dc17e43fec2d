"""`earworm benchset openset`: real hums of songs that are in none of our catalogues.

Source layout (../shared/data/qbh_demo): manifest.csv with query_id,song,path[,duration_s,...] and the
hums under the folder (hums/<song>/<n>.ogg). The query set points at the source files (no copy) and
leaves track_id empty, so `earworm eval` counts every answer that is not "no match" as a false accept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from data_gen.manifest import ManifestError, Query, read_csv_rows, write_queries
from training.evaluation.benchsets.common import default_source, require_source, write_info

log = logging.getLogger(__name__)

NAME = "qbh_demo"
QUERY_KIND = "hum_real"


def build_openset(out_dir: Path, source: Path | None = None) -> dict[str, Any]:
    """Write OUT/queries.csv (empty track_id, kind=hum_real, song); returns a summary."""
    source = Path(source) if source else default_source(NAME)
    manifest = require_source(source, NAME)
    rows = read_csv_rows(manifest, ("query_id", "song", "path"))
    queries = []
    for i, row in enumerate(rows, start=2):
        path = (manifest.parent / row["path"]).resolve()
        if not path.is_file():
            raise ManifestError(f"{manifest}:{i}: hum not found: {path}")
        queries.append(Query(row["query_id"], path, None, {"kind": QUERY_KIND, "song": row["song"]}))
    if not queries:
        raise ManifestError(f"{manifest}: no hums listed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_queries(out_dir / "queries.csv", queries)
    songs = sorted({q.extra["song"] for q in queries})
    write_info(out_dir, {"benchset": "openset", "source": str(source.resolve()), "queries": len(queries),
                         "songs": songs})
    log.info("openset: %d hums of %d songs", len(queries), len(songs))
    return {"queries": str(out_dir / "queries.csv"), "num_queries": len(queries), "songs": len(songs)}
