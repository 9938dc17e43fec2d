"""The window index on Milvus: a `WindowStore` backed by a Milvus collection (pymilvus).

The same client code talks to Milvus Lite (embedded, one local file: `uri` = a path such as
`artifacts/milvus/earworm.db`, what the tests and the demo use) and to Milvus Standalone/Distributed
or Zilliz Cloud (`uri` = `http://host:19530` / `https://...`, token from $EARWORM_MILVUS_TOKEN). A
cluster shards, replicates and compacts the windows; Earworm only writes and searches them.

Layout (format "earworm-milvus/1") for a collection NAME:
    NAME              the windows: id INT64 primary key (= track_row * 2**20 + window number: a
                      retried insert from a Beam worker is an idempotent upsert, and a track's windows
                      are fetched by primary key), track_row INT64 (INVERTED scalar index: deletes),
                      offset_s FLOAT (window start in the master, seconds), embedding
                      FLOAT_VECTOR[dim] (metric IP, index type configurable: FLAT, IVF_FLAT, IVF_SQ8,
                      HNSW on Lite; also IVF_PQ, SCANN, DISKANN on a cluster).
                      Collection properties: "earworm.format", "earworm.metadata" (serving.index
                      IndexMetadata as JSON: version, model_version, num_tracks, num_windows, dim,
                      config {backend, index_type, index_params, search_params}, created, extra
                      {releases, next_track_row, master_hop_seconds}), "earworm.calibration" (the
                      calibration.json document of serving.calibration: the no-match threshold
                      travels with the data).
    NAME_tracks       the track table: track_row INT64 primary key, track_id, title, artist VARCHAR,
                      num_windows INT64, and a 2-d placeholder vector (Milvus requires one vector
                      field per collection).

Writes: the windows first, then the track rows, then the metadata property with a new version: a
reader that sees a version sees all of its windows. Windows of tracks the reader does not know yet
(a release being written) or no longer knows (a removed track) are dropped from its hits, so a
server keeps answering, consistently, while a release is added in place; it swaps to the new version
when it sees the property change (`read_collection_version`).

Releases: `add_release` appends new tracks only (a track id already present raises
DuplicateTrackError, like `WindowIndex.add`); `remove_tracks` deletes tracks' windows and rows. Both
refuse embeddings of another model (IndexBuildError), `add_release` also windows cut at another
master hop than the collection's (`IndexMetadata.master_hop_seconds`), and every reader compares the
metadata's model_version with its embedder (`serving.retrieval_types.ModelMismatchError`, the
server's check).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from serving.index import (DuplicateTrackError, IndexBuildError, IndexLoadError, IndexMetadata, _new_version,
                           _now, check_master_hop, perturbed_queries)
from serving.window_store import CandidateWindows, TrackInfo, TrackWindows, WindowHits

log = logging.getLogger(__name__)

MILVUS_FORMAT = "earworm-milvus/1"
DEFAULT_COLLECTION = "earworm_windows"
TRACKS_SUFFIX = "_tracks"
PROP_FORMAT = "earworm.format"
PROP_METADATA = "earworm.metadata"
PROP_CALIBRATION = "earworm.calibration"
TOKEN_ENV = "EARWORM_MILVUS_TOKEN"
WINDOW_ID_STRIDE = 1 << 20
"""Window id = track_row * WINDOW_ID_STRIDE + window number within the track."""
INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "SCANN", "DISKANN", "AUTOINDEX")
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")
"""What Milvus Lite 3.2 builds (faiss inside); a cluster builds every type of INDEX_TYPES."""
FETCH_CACHE_WINDOWS = 65_536
"""Windows of recently fetched tracks a store keeps (about 34 MB at dim 128): the tempo views of one
query re-rank mostly the same tracks, and a store is immutable (a new version is a new store)."""
MAX_QUERY_ROWS = 16_000
"""Milvus answers at most 16,384 rows per query (maxQueryResultWindow): fetches are chunked below it."""
SEARCH_BATCH = 512
"""Query vectors per search call."""
_PLACEHOLDER_DIM = 2
_VARCHAR = 4096


class MilvusUnavailableError(IndexLoadError):
    """pymilvus (or milvus-lite for a local file) is not installed, or the server cannot be reached."""


def is_lite_uri(uri: str) -> bool:
    """A local file (Milvus Lite) rather than a server URI."""
    return "://" not in str(uri)


def _client(uri: str, token: str | None = None):
    try:
        from pymilvus import MilvusClient
    except ImportError as e:  # pragma: no cover - pinned in pyproject.toml
        raise MilvusUnavailableError(f"pymilvus is not installed ({e}); pip install 'pymilvus[milvus-lite]'") from e
    uri = str(uri)
    if is_lite_uri(uri):
        uri = str(Path(uri).expanduser().resolve())
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    try:
        return MilvusClient(uri=uri, token=token or "")
    except Exception as e:  # noqa: BLE001 - connection refused, lite file locked by another process...
        hint = (" (Milvus Lite opens a file in one process at a time: stop the server that holds it)"
                if is_lite_uri(uri) else "")
        raise MilvusUnavailableError(f"cannot open Milvus at {uri}: {e}{hint}") from e


@dataclass(frozen=True)
class MilvusIndexConfig:
    """The server-side vector index of the windows collection, and how it is searched."""

    index_type: str = "FLAT"
    """FLAT (exact, the default: the same answers as ScaNN's brute force), IVF_FLAT, IVF_SQ8, HNSW
    (Milvus Lite and clusters), IVF_PQ, SCANN, DISKANN (clusters only); AUTOINDEX lets Zilliz Cloud
    choose."""
    index_params: dict[str, Any] = field(default_factory=dict)
    """Build parameters; missing ones are sized to the data (`resolved`): nlist = 4 * sqrt(windows)
    for the IVF family and SCANN, m = dim / 4 for IVF_PQ, M = 16 / efConstruction = 200 for HNSW."""
    search_params: dict[str, Any] = field(default_factory=dict)
    """Search parameters; missing ones: nprobe = nlist / 8 (IVF, SCANN; measured recall@100 vs exact in
    the metadata), ef = 2 x the neighbours asked (HNSW), search_list = 2 x k (DISKANN)."""
    shards_num: int = 1
    """Collection shards (a cluster spreads writes over them; Lite ignores it)."""
    insert_batch: int = 8192
    """Windows per insert call (memory bounded by one batch)."""
    measure_recall: bool = True
    """After a build on an approximate index: recall@10 and @100 of perturbed own windows against an
    exact scan (skipped above `recall_max_windows`)."""
    recall_max_windows: int = 2_000_000

    def __post_init__(self) -> None:
        if self.index_type.upper() not in INDEX_TYPES:
            raise ValueError(f"Milvus index type must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}")
        object.__setattr__(self, "index_type", self.index_type.upper())
        if self.insert_batch < 1 or self.shards_num < 1:
            raise ValueError("insert_batch and shards_num must be >= 1")

    def resolved(self, num_windows: int, dim: int) -> "MilvusIndexConfig":
        """Index and search parameters filled in for a collection of this size."""
        p, s = dict(self.index_params), dict(self.search_params)
        nlist = int(p.get("nlist") or max(1, min(65536, round(4 * np.sqrt(max(num_windows, 1))))))
        if self.index_type in ("IVF_FLAT", "IVF_SQ8", "IVF_PQ", "SCANN"):
            p.setdefault("nlist", nlist)
            s.setdefault("nprobe", max(1, int(p["nlist"]) // 8))
        if self.index_type == "IVF_PQ":
            p.setdefault("m", max(1, dim // 4))
            p.setdefault("nbits", 8)
        if self.index_type == "SCANN":
            p.setdefault("with_raw_data", True)
            s.setdefault("reorder_k", 500)
        if self.index_type == "HNSW":
            p.setdefault("M", 16)
            p.setdefault("efConstruction", 200)
        return replace(self, index_params=p, search_params=s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "MilvusIndexConfig":
        known = set(MilvusIndexConfig.__dataclass_fields__)
        return MilvusIndexConfig(**{k: v for k, v in (d or {}).items() if k in known})


def _window_schema(dim: int):
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("track_row", DataType.INT64)
    s.add_field("offset_s", DataType.FLOAT)
    s.add_field("embedding", DataType.FLOAT_VECTOR, dim=int(dim))
    return s


def _track_schema():
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("track_row", DataType.INT64, is_primary=True)
    s.add_field("track_id", DataType.VARCHAR, max_length=_VARCHAR)
    s.add_field("title", DataType.VARCHAR, max_length=_VARCHAR)
    s.add_field("artist", DataType.VARCHAR, max_length=_VARCHAR)
    s.add_field("num_windows", DataType.INT64)
    s.add_field("placeholder", DataType.FLOAT_VECTOR, dim=_PLACEHOLDER_DIM)
    return s


def _in_filter(field_name: str, values: Iterable[int]) -> str:
    return f"{field_name} in [{', '.join(str(int(v)) for v in values)}]"


def _missing(uri: str, collection: str) -> IndexLoadError:
    return IndexLoadError(f"no Earworm window collection {collection!r} at Milvus {uri} (build it with "
                          f"`earworm index --backend milvus --uri {uri} --collection {collection} ...`)")


def _read_properties(client: Any, uri: str, collection: str) -> tuple[IndexMetadata, dict[str, str]]:
    if not client.has_collection(collection):
        raise _missing(uri, collection)
    props = dict(client.describe_collection(collection).get("properties") or {})
    if props.get(PROP_FORMAT) != MILVUS_FORMAT or PROP_METADATA not in props:
        raise IndexLoadError(f"Milvus collection {collection!r} at {uri} is not a complete Earworm window "
                             f"collection (format {props.get(PROP_FORMAT)!r}, expected {MILVUS_FORMAT!r}; "
                             "an interrupted build leaves no metadata: build it again)")
    try:
        return IndexMetadata.from_json(json.loads(props[PROP_METADATA])), props
    except (KeyError, TypeError, ValueError) as e:
        raise IndexLoadError(f"Milvus collection {collection!r} at {uri}: unreadable metadata ({e!r})") from e


def read_collection_version(uri: str, collection: str = DEFAULT_COLLECTION, client: Any = None) -> str | None:
    """The index version recorded on the collection (None when it is missing or unreadable)."""
    try:
        c = client or _client(uri)
        return _read_properties(c, uri, collection)[0].version
    except Exception:  # noqa: BLE001 - a watcher polls this: any failure means "unknown now"
        return None


# --- the store ---------------------------------------------------------------------------------

class MilvusWindowStore:
    """A Milvus window collection as a `serving.window_store.WindowStore` (thread-safe reads).

    `tracks[row]` is TrackInfo("") for a row whose track was removed or failed to embed (rows are
    never renumbered: the windows carry them)."""

    path: Path | None = None

    def __init__(self, client: Any, uri: str, collection: str, metadata: IndexMetadata,
                 tracks: list[TrackInfo], track_windows: np.ndarray, properties: dict[str, str]):
        self._client = client
        self.uri = str(uri)
        self.collection = collection
        self.metadata = metadata
        self.tracks = tracks
        self._track_windows = track_windows
        self._properties = properties
        self._track_index = {t.track_id: i for i, t in enumerate(tracks) if t.track_id}
        cfg = metadata.config or {}
        self.index_config = MilvusIndexConfig.from_dict(cfg.get("milvus") or {})
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, TrackWindows] = OrderedDict()
        self._cached_windows = 0

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str | os.PathLike[str], collection: str = DEFAULT_COLLECTION, *,
             token: str | None = None, search_params: dict[str, Any] | None = None,
             client: Any = None) -> "MilvusWindowStore":
        """Open (and load) a window collection. IndexLoadError names the URI and collection when it
        is missing or incomplete; MilvusUnavailableError when Milvus cannot be reached."""
        uri = str(uri)
        if is_lite_uri(uri) and not Path(uri).expanduser().exists():
            raise _missing(uri, collection)
        client = client or _client(uri, token)
        metadata, props = _read_properties(client, uri, collection)
        tracks_name = collection + TRACKS_SUFFIX
        if not client.has_collection(tracks_name):
            raise IndexLoadError(f"Milvus collection {collection!r} at {uri} has no track table {tracks_name!r}")
        client.load_collection(collection)
        client.load_collection(tracks_name)
        rows = _query_all(client, tracks_name, ["track_row", "track_id", "title", "artist", "num_windows"],
                          int(metadata.extra.get("next_track_row", 0)))
        size = max([int(r["track_row"]) for r in rows] + [int(metadata.extra.get("next_track_row", 0)) - 1, -1]) + 1
        tracks = [TrackInfo("")] * size
        counts = np.zeros(size, np.int64)
        for r in rows:
            tracks[int(r["track_row"])] = TrackInfo(str(r["track_id"]), str(r["title"]), str(r["artist"]))
            counts[int(r["track_row"])] = int(r["num_windows"])
        live = sum(1 for t in tracks if t.track_id)
        if live != metadata.num_tracks:
            raise IndexLoadError(f"Milvus collection {collection!r} at {uri} is inconsistent: the track table "
                                 f"holds {live} tracks, the metadata says {metadata.num_tracks}")
        store = cls(client, uri, collection, metadata, tracks, counts, props)
        if search_params:
            store.index_config = replace(store.index_config,
                                         search_params={**store.index_config.search_params, **search_params})
        return store

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # noqa: BLE001
            pass

    # -- WindowStore ----------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def num_windows(self) -> int:
        return int(self.metadata.num_windows)

    @property
    def num_tracks(self) -> int:
        return int(self.metadata.num_tracks)

    @property
    def dim(self) -> int:
        return int(self.metadata.dim)

    @property
    def kind(self) -> str:
        return f"milvus:{self.index_config.index_type}"

    def track_row(self, track_id: str) -> int:
        return self._track_index[track_id]

    def _search_params(self, k: int) -> dict[str, Any]:
        params = dict(self.index_config.search_params)
        t = self.index_config.index_type
        if t == "HNSW":
            params["ef"] = max(int(params.get("ef", 0)), 2 * k)
        if t == "DISKANN":
            params["search_list"] = max(int(params.get("search_list", 0)), 2 * k)
        return {"metric_type": "IP", "params": params}

    def search_windows(self, queries: np.ndarray, k: int) -> WindowHits:
        """The k nearest windows of each query (IP), as track rows/offsets/similarities [q, k]."""
        queries = np.asarray(queries, np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [m, {self.dim}], got {queries.shape}")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = queries.shape[0]
        out = WindowHits.empty(q, k)
        if q == 0:
            return out
        params = self._search_params(k)
        known = len(self.tracks)
        for start in range(0, q, SEARCH_BATCH):
            block = queries[start : start + SEARCH_BATCH]
            res = self._client.search(self.collection, data=[v for v in block], limit=k,
                                      output_fields=["track_row", "offset_s"], search_params=params,
                                      anns_field="embedding")
            for i, hits in enumerate(res):
                j = 0
                for h in hits:
                    ent = h["entity"]
                    row = int(ent["track_row"])
                    if row >= known or not self.tracks[row].track_id:
                        continue  # a release still being written, or a removed track: not served yet
                    out.track_rows[start + i, j] = row
                    out.offsets_s[start + i, j] = float(ent["offset_s"])
                    out.sims[start + i, j] = float(h["distance"])
                    j += 1
                    if j == k:
                        break
        return out

    def fetch_candidates(self, track_rows: Sequence[int]) -> CandidateWindows:
        """`fetch_tracks` laid out for the re-ranking."""
        rows = np.asarray(track_rows, np.int64).reshape(-1)
        return CandidateWindows.of(rows, self.fetch_tracks(rows), self.dim)

    def fetch_tracks(self, track_rows: Sequence[int]) -> list[TrackWindows]:
        """Every window of each track (emb float32 [w, d], offsets float64 [w]) in time order: primary-key
        lookups (chunked under Milvus's rows-per-query cap), sorted by offset; recently fetched tracks
        come from a small cache."""
        rows = [int(t) for t in track_rows]
        with self._lock:
            cached = {t: self._cache[t] for t in rows if t in self._cache}
            for t in cached:
                self._cache.move_to_end(t)
        got: dict[int, list[tuple[float, list[float]]]] = {t: [] for t in rows if t not in cached}
        # by primary key (window ids are track_row * WINDOW_ID_STRIDE + 0..n-1, n from the track table):
        # a point lookup, where a `track_row in [...]` filter scans (Milvus Lite, 300k windows: 85 ms
        # against 1.2 s for 50 tracks)
        ids = [t * WINDOW_ID_STRIDE + w for t in got
               if 0 <= t < len(self._track_windows) for w in range(int(self._track_windows[t]))]
        for a in range(0, len(ids), MAX_QUERY_ROWS):
            for r in self._client.get(self.collection, ids=ids[a : a + MAX_QUERY_ROWS],
                                      output_fields=["track_row", "offset_s", "embedding"]):
                got[int(r["track_row"])].append((float(r["offset_s"]), r["embedding"]))
        fetched = {}
        for t, items in got.items():
            items.sort(key=lambda x: x[0])
            emb = np.asarray([e for _, e in items], np.float32).reshape(len(items), self.dim)
            fetched[t] = TrackWindows(emb, np.asarray([o for o, _ in items], np.float64))
        with self._lock:
            for t, w in fetched.items():
                if t not in self._cache:
                    self._cache[t] = w
                    self._cached_windows += w.emb.shape[0]
            while self._cached_windows > FETCH_CACHE_WINDOWS and self._cache:
                _, old = self._cache.popitem(last=False)
                self._cached_windows -= old.emb.shape[0]
        return [cached[t] if t in cached else fetched[t] for t in rows]

    # -- calibration ----------------------------------------------------------------------------
    def load_calibration(self, aggregation: str):
        """The calibration for `aggregation` stored on the collection (serving.calibration), or None."""
        from serving.calibration import CALIBRATION_FORMAT, Calibration, CalibrationError

        text = self._properties.get(PROP_CALIBRATION)
        if not text:
            return None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"collection {self.collection}: unreadable calibration ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"collection {self.collection}: calibration format "
                                   f"{doc.get('format') if isinstance(doc, dict) else None!r}")
        entry = (doc.get("entries") or {}).get(aggregation)
        return None if entry is None else Calibration.from_json(entry)

    def save_calibration(self, calibration: Any) -> str:
        """Merge `calibration` into the collection's calibration property (one entry per aggregation;
        entries of other aggregations of the same model kept). Returns where it was written."""
        from serving.calibration import CALIBRATION_FORMAT

        entries: dict[str, Any] = {}
        try:
            old = json.loads(self._properties.get(PROP_CALIBRATION) or "{}")
            if old.get("model_version") == calibration.model_version:
                entries = dict(old.get("entries") or {})
        except (json.JSONDecodeError, AttributeError):
            pass
        entries[calibration.aggregation] = calibration.to_json()
        doc = {"format": CALIBRATION_FORMAT, "model_version": calibration.model_version,
               "index_version": calibration.index_version, "created": calibration.created, "entries": entries}
        text = json.dumps(doc)
        self._client.alter_collection_properties(self.collection, {PROP_CALIBRATION: text})
        self._properties[PROP_CALIBRATION] = text
        where = f"{self.uri} collection {self.collection} (property {PROP_CALIBRATION})"
        log.info("saved the %s no-match threshold %.4f to %s", calibration.aggregation, calibration.threshold, where)
        return where

    def describe(self) -> str:
        return f"Milvus {self.uri} collection {self.collection}"


def _query_all(client: Any, collection: str, fields: list[str], upper: int, *, key: str = "track_row",
               page: int = 10_000) -> list[dict]:
    """Every row whose unique integer `key` lies in [0, upper), a page of key values per query (each
    under Milvus's rows-per-query cap; Milvus Lite has no query iterator)."""
    out: list[dict] = []
    for low in range(0, max(int(upper), 0), page):
        out.extend(client.query(collection, filter=f"{key} >= {low} and {key} < {low + page}",
                                output_fields=fields))
    return out


# --- writing -----------------------------------------------------------------------------------

def _window_rows(track_rows: np.ndarray, offsets_s: np.ndarray, emb: np.ndarray,
                 first_window: dict[int, int]) -> list[dict]:
    """Insert rows for one batch; window numbers continue per track across batches (`first_window`)."""
    rows = []
    for tr, off, e in zip(track_rows.tolist(), offsets_s.tolist(), emb):
        w = first_window.get(tr, 0)
        first_window[tr] = w + 1
        if w >= WINDOW_ID_STRIDE:
            raise IndexBuildError(f"track row {tr} has more than {WINDOW_ID_STRIDE} windows")
        rows.append({"id": tr * WINDOW_ID_STRIDE + w, "track_row": int(tr), "offset_s": float(off), "embedding": e})
    return rows


class MilvusWriter:
    """Builds a window collection batch by batch (memory bounded by one batch), then `finish()`es it
    with the track table and the metadata. Also used to add a release to an existing collection."""

    def __init__(self, uri: str, collection: str = DEFAULT_COLLECTION, *, dim: int, model_version: str,
                 config: MilvusIndexConfig | None = None, overwrite: bool = False, token: str | None = None,
                 client: Any = None, _existing: IndexMetadata | None = None,
                 _properties: dict[str, str] | None = None):
        self.uri, self.collection = str(uri), collection
        self.client = client or _client(self.uri, token)
        self.dim, self.model_version = int(dim), model_version
        self.config = config or MilvusIndexConfig()
        if is_lite_uri(self.uri) and self.config.index_type not in LITE_INDEX_TYPES:
            raise IndexBuildError(f"Milvus Lite builds only {', '.join(LITE_INDEX_TYPES)} indexes; "
                                  f"{self.config.index_type} needs a Milvus server (--uri http://host:19530)")
        self.existing = _existing
        self._properties = dict(_properties or {})
        self._pending_tracks: list[tuple[int, TrackInfo]] = []
        self._windows_per_track: dict[int, int] = {}
        self.windows_written = 0
        self._exact = _ExactTopK() if _existing is None and self.config.index_type != "FLAT" \
            and self.config.measure_recall else None
        if _existing is None:
            self._create(overwrite)

    def _create(self, overwrite: bool) -> None:
        c, name = self.client, self.collection
        for n in (name, name + TRACKS_SUFFIX):
            if c.has_collection(n):
                if not overwrite:
                    raise IndexBuildError(f"Milvus collection {n!r} already exists at {self.uri}: add a "
                                          "release with --add-to, or choose another --collection")
                c.drop_collection(n)
        c.create_collection(name, schema=_window_schema(self.dim), consistency_level="Strong",
                            shards_num=self.config.shards_num, properties={PROP_FORMAT: "building"})
        c.create_collection(name + TRACKS_SUFFIX, schema=_track_schema(), consistency_level="Strong")
        ip = c.prepare_index_params()
        ip.add_index(field_name="placeholder", index_type="FLAT", metric_type="L2")
        c.create_index(name + TRACKS_SUFFIX, ip, sync=not is_lite_uri(self.uri))  # Lite: no AllocTimestamp
        c.load_collection(name + TRACKS_SUFFIX)

    def write(self, track_rows: np.ndarray, offsets_s: np.ndarray, embeddings: np.ndarray, *,
              upsert: bool = False) -> int:
        """Write windows (track rows are final rows of the collection). Returns windows written."""
        emb = np.ascontiguousarray(embeddings, np.float32)
        track_rows = np.asarray(track_rows, np.int64)
        offsets_s = np.asarray(offsets_s, np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise IndexBuildError(f"embeddings must be [n, {self.dim}], got {emb.shape}")
        if track_rows.shape != (emb.shape[0],) or offsets_s.shape != (emb.shape[0],):
            raise IndexBuildError("track_rows and offsets_s must be [n] like the embeddings")
        if emb.size and not np.all(np.isfinite(emb)):
            raise IndexBuildError("embeddings contain NaN or infinite values")
        step = self.config.insert_batch
        for a in range(0, emb.shape[0], step):
            rows = _window_rows(track_rows[a : a + step], offsets_s[a : a + step], emb[a : a + step],
                                self._windows_per_track)
            (self.client.upsert if upsert else self.client.insert)(self.collection, rows)
            if self._exact is not None:
                self._exact.observe(emb[a : a + step], track_rows[a : a + step])
        self.windows_written += int(emb.shape[0])
        return int(emb.shape[0])

    def add_tracks(self, tracks: Iterable[tuple[int, TrackInfo]]) -> None:
        """Track rows to record at `finish()` (row, TrackInfo)."""
        self._pending_tracks.extend(tracks)

    def finish(self, extra: dict[str, Any] | None = None, *, windows_per_track: dict[int, int] | None = None
               ) -> IndexMetadata:
        """Index the vectors (new collection), write the track table, then the metadata with a new
        version (last: readers see a version only once all its windows are there)."""
        c, name = self.client, self.collection
        counts = dict(self._windows_per_track)
        counts.update(windows_per_track or {})
        tracks = self._pending_tracks
        if not tracks:
            raise IndexBuildError("no track to write")
        ids = [t.track_id for _, t in tracks]
        if len(set(ids)) != len(ids) or any(not i for i in ids):
            raise DuplicateTrackError("duplicate or empty track id(s) in the release")
        c.flush(name)
        t0 = time.perf_counter()
        if self.existing is None:
            ip = c.prepare_index_params()
            total = self.windows_written
            cfg = self.config.resolved(total, self.dim)
            # the classic `params` JSON key: Milvus servers and Milvus Lite both read it (Lite ignores
            # the flattened keys pymilvus 3 sends otherwise)
            ip.add_index(field_name="embedding", index_type=cfg.index_type, metric_type="IP",
                         params={"params": json.dumps(cfg.index_params)} if cfg.index_params else None)
            ip.add_index(field_name="track_row", index_type="INVERTED")
            c.create_index(name, ip, sync=not is_lite_uri(self.uri))
        else:
            cfg = self.config
        c.load_collection(name)
        build_s = time.perf_counter() - t0
        for a in range(0, len(tracks), 4096):
            c.insert(name + TRACKS_SUFFIX, [
                {"track_row": int(r), "track_id": t.track_id, "title": t.title[:_VARCHAR - 1],
                 "artist": t.artist[:_VARCHAR - 1], "num_windows": int(counts.get(int(r), 0)),
                 "placeholder": [0.0] * _PLACEHOLDER_DIM} for r, t in tracks[a : a + 4096]])
        c.flush(name + TRACKS_SUFFIX)
        created = _now()
        next_row = max(int(r) for r, _ in tracks) + 1
        old = self.existing
        num_tracks = len(tracks) + (old.num_tracks if old else 0)
        num_windows = self.windows_written + (old.num_windows if old else 0)
        version = _new_version(self.model_version, num_tracks, num_windows, created)
        releases = list((old.extra.get("releases") if old else None) or [])
        releases.append({"version": version, "created": created, "tracks_added": len(tracks),
                         "windows_added": self.windows_written, **({"parent": old.version} if old else {})})
        meta_extra = dict(old.extra) if old else dict(extra or {})
        if old and extra:
            meta_extra.update({k: v for k, v in extra.items() if k not in ("releases", "next_track_row")})
        meta_extra.update(releases=releases,
                          next_track_row=max(next_row, int(old.extra.get("next_track_row", 0)) if old else 0))
        if old is None:
            meta_extra["build_seconds"] = round(build_s, 3)
        recall = old.recall_at_10 if old else (1.0 if cfg.index_type == "FLAT" else None)
        metadata = IndexMetadata(
            version=version, model_version=self.model_version, num_tracks=num_tracks, num_windows=num_windows,
            dim=self.dim, config={"backend": "milvus", "kind": f"milvus:{cfg.index_type}",
                                  "milvus": cfg.to_dict()},
            created=old.created if old else created, extra=meta_extra, recall_at_10=recall)
        if self._exact is not None and self.existing is None and num_windows <= cfg.recall_max_windows:
            metadata = self._measure(metadata, cfg)
        _set_metadata(c, name, metadata)
        log.info("Milvus %s collection %s: version %s, %d tracks, %d windows (%s)", self.uri, name, version,
                 num_tracks, num_windows, cfg.index_type)
        return metadata

    def _measure(self, metadata: IndexMetadata, cfg: MilvusIndexConfig) -> IndexMetadata:
        """recall@10/@100 of the index's search against the exact top-k kept while writing."""
        exact = self._exact
        if exact is None or exact.queries is None:
            return metadata
        tracks = [TrackInfo(f"r{i}") for i in range(metadata.extra.get("next_track_row", 0))]
        store = MilvusWindowStore(self.client, self.uri, self.collection, metadata, tracks,
                                  np.zeros(len(tracks), np.int64), {})
        store.index_config = cfg
        k = exact.k
        hits = store.search_windows(exact.queries, k)
        recalls = {}
        for kk in (10, k):
            n = min(kk, exact.scores.shape[1])  # fewer windows than k: all of them
            kth = exact.scores[:, n - 1 : n]
            found = np.sum(hits.sims[:, :n] >= kth - 1e-5, axis=1)
            recalls[kk] = float(np.mean(np.minimum(found, n) / n))
        metadata.extra["recall"] = {f"recall_at_{kk}": round(v, 4) for kk, v in recalls.items()}
        metadata.extra["recall"]["queries"] = int(exact.queries.shape[0])
        metadata.extra["recall"]["search_params"] = dict(cfg.search_params)
        return replace(metadata, recall_at_10=round(recalls[10], 4))


class _ExactTopK:
    """The exact top-k of a few perturbed windows of the first batch, merged over every batch written
    (memory: queries x k), for the recall of an approximate index."""

    def __init__(self, num_queries: int = 200, k: int = 100, seed: int = 0):
        self.m, self.k, self.rng = num_queries, k, np.random.default_rng(seed)
        self.queries: np.ndarray | None = None
        self.scores = np.zeros((0, 0), np.float32)

    def observe(self, emb: np.ndarray, _rows: np.ndarray) -> None:
        if self.queries is None:
            pick = self.rng.choice(emb.shape[0], size=min(self.m, emb.shape[0]), replace=False)
            self.queries = perturbed_queries(emb[np.sort(pick)], 0.6, self.rng)
            self.scores = np.full((self.queries.shape[0], 0), -np.inf, np.float32)
        s = self.queries @ emb.T
        both = np.concatenate([self.scores, s], axis=1)
        kk = min(self.k, both.shape[1])
        self.scores = -np.sort(-both, axis=1)[:, :kk]


def _set_metadata(client: Any, collection: str, metadata: IndexMetadata) -> None:
    client.alter_collection_properties(collection, {PROP_FORMAT: MILVUS_FORMAT,
                                                    PROP_METADATA: json.dumps(metadata.to_json())})


def build_collection(uri: str, collection: str, embeddings: np.ndarray, track_rows: np.ndarray,
                     offsets_s: np.ndarray, tracks: Sequence[TrackInfo], model_version: str,
                     config: MilvusIndexConfig | None = None, *, overwrite: bool = False,
                     extra: dict[str, Any] | None = None, token: str | None = None) -> MilvusWindowStore:
    """A new window collection from in-memory arrays (like `WindowIndex.build`); returns it opened."""
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise IndexBuildError(f"cannot build a collection from embeddings of shape {emb.shape}")
    writer = MilvusWriter(uri, collection, dim=emb.shape[1], model_version=model_version, config=config,
                          overwrite=overwrite, token=token)
    writer.write(track_rows, offsets_s, emb)
    writer.add_tracks(enumerate(tracks))
    writer.finish(extra)
    return MilvusWindowStore.open(uri, collection, client=writer.client)


def copy_index(index: Any, uri: str, collection: str, config: MilvusIndexConfig | None = None, *,
               overwrite: bool = False, extra: dict[str, Any] | None = None) -> MilvusWindowStore:
    """A window collection holding exactly the windows of an in-process `WindowIndex` (its stored
    embeddings, no re-embedding): moving an index to Milvus, and the evaluation's comparisons."""
    writer = MilvusWriter(uri, collection, dim=index.dim, model_version=index.metadata.model_version,
                          config=config, overwrite=overwrite)
    step = (writer.config.insert_batch * 8)
    vectors = getattr(index, "vectors", None)  # the index's stored copy (float32, or int8 + scales)
    for a in range(0, index.num_windows, step):
        part = (vectors.rows(slice(a, a + step)) if vectors is not None
                else np.asarray(index.embeddings[a : a + step], np.float32))
        writer.write(index.track_rows[a : a + step], index.offsets_s[a : a + step], part)
    writer.add_tracks(enumerate(index.tracks))
    writer.finish({**(extra or {}), "master_hop_seconds": index.metadata.master_hop_seconds,
                   "copied_from": {"version": index.version, "path": str(index.path or "")}})
    return MilvusWindowStore.open(uri, collection, client=writer.client)


def open_release_writer(uri: str, collection: str = DEFAULT_COLLECTION, *, model_version: str,
                        track_ids: Sequence[str], token: str | None = None, client: Any = None,
                        master_hop_seconds: float | None = None) -> tuple[MilvusWriter, int]:
    """A writer that adds a release to an existing collection, and the first free track row.

    Refuses (IndexBuildError) a release embedded with another model or (when given) cut at another
    master hop, and (DuplicateTrackError) track ids already in the collection: a release only adds
    tracks."""
    store = MilvusWindowStore.open(uri, collection, token=token, client=client)
    md = store.metadata
    if md.model_version != model_version:
        raise IndexBuildError(f"the release was embedded with model {model_version!r} but collection "
                              f"{collection!r} holds {md.model_version!r} embeddings; rebuild instead")
    check_master_hop(md.master_hop_seconds, master_hop_seconds, f"collection {collection!r} ({md.version})")
    clash = sorted({t for t in track_ids if t in store._track_index})
    if clash:
        raise DuplicateTrackError(
            f"{len(clash)} track id(s) already in collection {collection!r} ({md.version}): "
            f"{', '.join(clash[:5])}" + (" ..." if len(clash) > 5 else "")
            + "; adding refuses to replace tracks (remove them first, or rebuild)")
    if len(set(track_ids)) != len(track_ids):
        raise DuplicateTrackError("duplicate track id(s) within the release")
    first = max(len(store.tracks), int(md.extra.get("next_track_row", 0)))
    writer = MilvusWriter(uri, collection, dim=md.dim, model_version=md.model_version,
                          config=store.index_config, client=store._client, _existing=md,
                          _properties=store._properties)
    return writer, first


def add_release(uri: str, collection: str, embeddings: np.ndarray, track_rows_local: np.ndarray,
                offsets_s: np.ndarray, tracks: Sequence[TrackInfo], *, model_version: str,
                token: str | None = None, master_hop_seconds: float | None = None) -> MilvusWindowStore:
    """Add a release in place (like `WindowIndex.add`: new tracks only, same model and, when given,
    same master hop); new version."""
    tracks = list(tracks)
    writer, first = open_release_writer(uri, collection, model_version=model_version,
                                        track_ids=[t.track_id for t in tracks], token=token,
                                        master_hop_seconds=master_hop_seconds)
    writer.write(np.asarray(track_rows_local, np.int64) + first, offsets_s, embeddings)
    writer.add_tracks((first + i, t) for i, t in enumerate(tracks))
    writer.finish()
    return MilvusWindowStore.open(uri, collection, client=writer.client)


def remove_tracks(uri: str, collection: str, track_ids: Sequence[str], *, token: str | None = None,
                  client: Any = None) -> IndexMetadata:
    """Delete tracks (their windows, then their rows) and record a new version. KeyError lists ids
    that are not in the collection (nothing is deleted then)."""
    store = MilvusWindowStore.open(uri, collection, token=token, client=client)
    unknown = [t for t in track_ids if t not in store._track_index]
    if unknown:
        raise KeyError(f"not in collection {collection!r}: {', '.join(unknown[:5])}")
    rows = sorted({store.track_row(t) for t in track_ids})
    c = store._client
    windows = int(sum(store._track_windows[r] for r in rows))
    for a in range(0, len(rows), 1000):
        c.delete(collection, filter=_in_filter("track_row", rows[a : a + 1000]))
        c.delete(collection + TRACKS_SUFFIX, filter=_in_filter("track_row", rows[a : a + 1000]))
    c.flush(collection)
    c.flush(collection + TRACKS_SUFFIX)
    md = store.metadata
    created = _now()
    version = _new_version(md.model_version, md.num_tracks - len(rows), md.num_windows - windows, created)
    releases = list(md.extra.get("releases") or [])
    releases.append({"version": version, "created": created, "tracks_removed": len(rows),
                     "windows_removed": windows, "parent": md.version, "removed": list(track_ids)[:100]})
    new = replace(md, version=version, num_tracks=md.num_tracks - len(rows), num_windows=md.num_windows - windows,
                  extra={**md.extra, "releases": releases})
    _set_metadata(c, collection, new)
    return new


def drop_collection(uri: str, collection: str = DEFAULT_COLLECTION, *, token: str | None = None) -> None:
    c = _client(uri, token)
    for n in (collection, collection + TRACKS_SUFFIX):
        if c.has_collection(n):
            c.drop_collection(n)
    c.close()


# --- the Beam sink (workers write to a Milvus server) --------------------------------------------

def window_batches(track_rows: np.ndarray, offsets_s: np.ndarray, emb: np.ndarray, batch: int
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    for a in range(0, emb.shape[0], batch):
        yield track_rows[a : a + batch], offsets_s[a : a + batch], emb[a : a + batch]


__all__ = [
    "DEFAULT_COLLECTION", "INDEX_TYPES", "LITE_INDEX_TYPES", "MILVUS_FORMAT", "MilvusIndexConfig",
    "MilvusUnavailableError", "MilvusWindowStore", "MilvusWriter", "add_release", "build_collection",
    "copy_index", "drop_collection", "is_lite_uri", "open_release_writer", "read_collection_version",
    "remove_tracks",
]


# --- command-line flags shared by index, serve, eval, calibrate -----------------------------------

BACKENDS = ("scann", "milvus")


def add_backend_arguments(p: Any, *, index_type: bool = False, search_params: bool = True) -> None:
    """--backend, --uri, --collection [, --milvus-index-type] [, --milvus-search-params]."""
    p.add_argument("--backend", choices=BACKENDS, default="scann",
                   help="where the window index lives: scann (in-process, a directory; the default) or milvus "
                        "(a Milvus collection: --uri, --collection)")
    p.add_argument("--uri", default=None,
                   help="Milvus URI (--backend milvus): a local file for the embedded Milvus Lite "
                        "(e.g. artifacts/milvus/earworm.db) or a server, http://host:19530 "
                        f"(token from ${TOKEN_ENV})")
    p.add_argument("--collection", default=DEFAULT_COLLECTION,
                   help=f"Milvus collection of the windows (default {DEFAULT_COLLECTION}; the track table is "
                        f"COLLECTION{TRACKS_SUFFIX})")
    if index_type:
        p.add_argument("--milvus-index-type", default=MilvusIndexConfig().index_type, type=str.upper,
                       choices=INDEX_TYPES,
                       help="server-side vector index (default FLAT: exact; Milvus Lite: FLAT or IVF_FLAT; "
                            "a cluster also IVF_SQ8, IVF_PQ, HNSW, SCANN, DISKANN)")
        p.add_argument("--milvus-index-params", type=json.loads, default=None, metavar="JSON",
                       help='build parameters, e.g. \'{"nlist": 1024}\' (default: sized to the data)')
    if search_params:
        p.add_argument("--milvus-search-params", type=json.loads, default=None, metavar="JSON",
                       help='search parameters, e.g. \'{"nprobe": 64}\' or \'{"ef": 200}\' (default: recorded '
                            "with the collection)")


def backend_error(args: Any, scann_needs: tuple[str, str] | None = None) -> str | None:
    """Why the backend flags do not fit together (None when they do). scann_needs: (attribute, message)
    of the flag the ScaNN backend cannot do without (e.g. ("index", "--index is required"))."""
    milvus = getattr(args, "backend", "scann") == "milvus"
    if milvus and not getattr(args, "uri", None):
        return "--backend milvus needs --uri (a Milvus Lite file such as artifacts/milvus/earworm.db, or http://host:19530)"
    if scann_needs is not None and not milvus and not getattr(args, scann_needs[0], None):
        return scann_needs[1]
    return None


def index_config_from_args(args: Any) -> MilvusIndexConfig:
    return MilvusIndexConfig(index_type=getattr(args, "milvus_index_type", None) or "FLAT",
                             index_params=dict(getattr(args, "milvus_index_params", None) or {}),
                             search_params=dict(getattr(args, "milvus_search_params", None) or {}))


def ensure_copy(index_dir: str | os.PathLike[str], uri: str, collection: str = DEFAULT_COLLECTION,
                config: MilvusIndexConfig | None = None) -> MilvusWindowStore:
    config = config or MilvusIndexConfig()
    """The collection holding the windows of the index in `index_dir` (copied once; reused while the
    collection records that index version): benchmarks of the Milvus backend on an existing index."""
    from serving.index import WindowIndex

    index = WindowIndex.load(index_dir)
    try:
        store = MilvusWindowStore.open(uri, collection)
        if ((store.metadata.extra.get("copied_from") or {}).get("version") == index.version
                and store.index_config.index_type == config.index_type):
            store.close()
            return store
        store.close()
    except IndexLoadError:
        pass
    store = copy_index(index, uri, collection, config, overwrite=True)
    store.close()
    return store
