"""`earworm eval` as a library: answer every query of a query set with every system, then score.

    result = evaluate(EvalConfig(catalogue=..., queries=..., model_dir=..., out_dir=...))

Steps: validate the manifests and the model (cheap; `ManifestError` / `ModelError` before any heavy
work) -> build or reuse the window index (cached in OUT/index for the same catalogue + model) ->
prepare the baselines (their per-master data cached in OUT/cache or `cache_dir`) -> answer each
query (and, with `crop_seconds`, a crop of it at each length) with each system -> write
OUT/metrics.json, OUT/outcomes.jsonl (one line per query answer), OUT/report.md and PNG plots.

The learned model answers through `serving.retrieval.Retriever`, the server's own code path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_gen import constants as C
from data_gen.audio import AudioError, load_audio
from data_gen.manifest import ManifestError, Query, Track, read_catalogue, read_queries
from serving.retrieval_types import RetrievalConfig
from training.evaluation import metrics as M
from training.evaluation.baselines import BASELINES
from training.evaluation.systems import ModelSystem, RankingSystem, SharedQueryEmbedding

log = logging.getLogger(__name__)

AGGREGATIONS = ("temporal", "vote")
INDEXERS = ("auto", "beam", "inprocess")
INDEX_SUBDIR = "index"
INDEX_KEY_FILE = "eval_index_key.json"
METRICS_FILE = "metrics.json"
OUTCOMES_FILE = "outcomes.jsonl"
REPORT_FILE = "report.md"
FULL = "full"


class EvalError(RuntimeError):
    """The evaluation cannot run as configured (e.g. an index built for another model)."""


@dataclass(frozen=True)
class EvalConfig:
    """Everything one `earworm eval` run needs; defaults live here, not in the CLI."""

    catalogue: Path
    queries: Path
    out_dir: Path
    model_dir: Path | None = None
    """Exported encoder; None evaluates the baselines only."""
    index_dir: Path | None = None
    """An index built for this catalogue and model; None: build one (cached in out_dir/index)."""
    base_index: Path | None = None
    """An index holding some of the catalogue's tracks (same model): only the others are embedded
    and added to it (a new release), instead of embedding the whole catalogue."""
    baselines: tuple[str, ...] = ()
    aggregations: tuple[str, ...] = ("temporal",)
    crop_seconds: tuple[float, ...] = ()
    crop_baselines: bool = True
    """Run the baselines on the crops too (False: the length sweep is for the model only)."""
    top_k: int = 10
    seed: int = 0
    cache_dir: Path | None = None
    """Baselines' per-master cache (default out_dir/cache); share it between runs on one catalogue."""
    thresholds_from: Path | None = None
    """A metrics.json whose calibrated thresholds also score this run's open-set queries."""
    target_far: float = M.DEFAULT_TARGET_FAR
    no_match_threshold: float | None = None
    """Overrides the model's calibrated no-match threshold."""
    limit: int | None = None
    """Evaluate only the first `limit` queries."""
    plots: bool = True
    store_dtype: str = "float32"
    """The index's stored vectors (`SearcherConfig.store_dtype`) when the evaluation builds it."""
    rerank_candidates: int = RetrievalConfig().rerank_candidates
    """Temporal aggregation: the retriever's exact re-ranking depth (0: the first stage only)."""
    query_tempo_rates: tuple[float, ...] = RetrievalConfig().query_tempo_rates
    """The retriever's tempo views of each query ((1.0,): the query as sung only)."""
    tempo_view_penalty: float = RetrievalConfig().tempo_view_penalty
    """The retriever's score penalty of the tempo views, per unit of |ln rate|."""
    explain: bool = False
    """Write the failure table of the model's misses (failures.md / .jsonl / failures/*.png, and a
    section of report.md): `training.evaluation.explain`."""
    indexer: str = "auto"
    """How a missing index is built: "beam" (beam_pipelines.indexing, the production pipeline),
    "inprocess" (embed here, then WindowIndex.build: no pipeline start-up, for small catalogues),
    "auto" (beam when available)."""
    backend: str = "scann"
    """Where the model's window index lives: "scann" (in-process, cached in out_dir/index) or "milvus"
    (a collection at `milvus_uri`: reused when it was built for this catalogue + model, else written
    from --index / the cached out_dir/index when there is one, without re-embedding, else embedded)."""
    milvus_uri: str | None = None
    milvus_collection: str = "earworm_windows"
    milvus_index_type: str = "FLAT"
    milvus_search_params: dict[str, Any] | None = None
    master_hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS
    """How far apart the master windows of an index the evaluation builds start (part of the cache
    key); a given --index keeps its own hop, which the retriever reads from its metadata."""

    def __post_init__(self) -> None:
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
        bad = [a for a in self.aggregations if a not in AGGREGATIONS]
        if bad:
            raise ValueError(f"unknown aggregation(s) {', '.join(bad)}; choose from {', '.join(AGGREGATIONS)}")
        if self.model_dir is None and not self.baselines:
            raise ValueError("nothing to evaluate: give a model and/or baselines")
        if any(c <= 0 for c in self.crop_seconds):
            raise ValueError(f"crop lengths must be positive, got {self.crop_seconds}")
        if self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.rerank_candidates < 0:
            raise ValueError("rerank_candidates must be >= 0")
        RetrievalConfig(query_tempo_rates=self.query_tempo_rates,  # validates them
                        tempo_view_penalty=self.tempo_view_penalty)
        if self.indexer not in INDEXERS:
            raise ValueError(f"indexer must be one of {', '.join(INDEXERS)}, got {self.indexer!r}")
        if self.backend not in ("scann", "milvus"):
            raise ValueError(f"backend must be scann or milvus, got {self.backend!r}")
        if self.backend == "milvus" and not self.milvus_uri:
            raise ValueError("the milvus backend needs a Milvus URI (--uri)")
        from serving.embedder import master_hop_samples

        master_hop_samples(self.master_hop_seconds)  # ValueError unless positive


@dataclass
class EvalInputs:
    tracks: list[Track]
    queries: list[Query]
    warnings: list[str] = field(default_factory=list)


def model_system_name(aggregation: str) -> str:
    return f"earworm-{aggregation}"


# --- validation ----------------------------------------------------------------------------------
def load_inputs(config: EvalConfig) -> EvalInputs:
    """Read and cross-check the manifests (all files must exist). Raises ManifestError."""
    tracks = read_catalogue(config.catalogue)
    queries = read_queries(config.queries)
    ids = {t.track_id for t in tracks}
    unknown = sorted({q.track_id for q in queries if q.track_id is not None and q.track_id not in ids})
    if unknown:
        raise ManifestError(
            f"{config.queries}: {len(unknown)} track_id(s) are not in the catalogue {config.catalogue} "
            f"(e.g. {', '.join(unknown[:5])}); leave track_id empty for a song that is not in it"
        )
    if config.limit is not None:
        queries = queries[: config.limit]
    inputs = EvalInputs(tracks, queries)
    if "melody_dtw" in config.baselines and any(t.melody_midi is None for t in tracks):
        inputs.warnings.append(
            "melody_dtw: the catalogue has no melody_midi for every track, so every master's melody is "
            "its predominant pitch, tracked from the mix (the classic audio-to-audio QbH system)"
        )
    return inputs


def catalogue_fingerprint(catalogue: Path, tracks: Sequence[Track]) -> str:
    """Changes when the manifest or any master file (size, mtime) changes."""
    h = hashlib.sha256(Path(catalogue).read_bytes())
    for t in tracks:
        st = t.path.stat()
        h.update(f"{t.path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


# --- index ---------------------------------------------------------------------------------------
def _embed_catalogue(embedder: Any, tracks: Sequence[Track], master_hop_seconds: float):
    """In-process indexing (`serving.indexer`, the one path): build() arguments of every readable master."""
    from serving.indexer import NothingToIndexError, embed_catalogue

    try:
        cat = embed_catalogue(embedder, tracks, master_hop_seconds=master_hop_seconds)
    except NothingToIndexError as e:
        raise EvalError(str(e)) from e
    return cat.embeddings, cat.track_rows, cat.offsets_s, cat.tracks


def build_or_load_index(config: EvalConfig, inputs: EvalInputs, embedder: Any) -> tuple[Any, dict[str, Any]]:
    """The window index for this catalogue + model: --index, the cached one in OUT/index, or new."""
    from serving.index import WindowIndex

    if config.backend == "milvus":
        index, info = _milvus_store(config, inputs, embedder)
    elif config.index_dir is not None:
        index = WindowIndex.load(config.index_dir)
        info = {"source": "given", "path": str(config.index_dir)}
    else:
        index_dir = config.out_dir / INDEX_SUBDIR
        key = _index_key(config, inputs, embedder)
        key_file = config.out_dir / INDEX_KEY_FILE
        cached = None
        if key_file.is_file() and (index_dir / "metadata.json").is_file():
            try:
                if json.loads(key_file.read_text()) == key:
                    cached = WindowIndex.load(index_dir)
            except (OSError, ValueError, RuntimeError) as e:  # corrupt / partial index: rebuild it
                log.warning("cached index in %s unusable (%s); rebuilding", index_dir, e)
        if cached is not None and not cached.searcher_made_with(_searcher_config(config)):
            # same windows and embeddings, searcher tuned by older settings: re-tune it, no re-embedding
            from serving.index import with_searcher_config

            log.info("cached index in %s was tuned with other searcher settings; re-tuning it", index_dir)
            start = time.perf_counter()
            with_searcher_config(cached, _searcher_config(config)).save(index_dir)
            index = WindowIndex.load(index_dir)
            info = {"source": "re-tuned", "path": str(index_dir),
                    "build_seconds": round(time.perf_counter() - start, 1)}
        elif cached is not None:
            index = cached
            info = {"source": "cached", "path": str(index_dir)}
        else:
            start = time.perf_counter()
            index = _build_index(config, inputs, embedder, index_dir)
            key_file.write_text(json.dumps(key, indent=2) + "\n")
            info = {"source": "built", "path": str(index_dir),
                    "build_seconds": round(time.perf_counter() - start, 1)}
    if index.metadata.model_version != embedder.version:
        raise EvalError(
            f"the index was built with model {index.metadata.model_version!r} but the model is "
            f"{embedder.version!r}; rebuild it (omit --index) or pass the matching model"
        )
    index_ids = {t.track_id for t in index.tracks if t.track_id}
    missing = [t.track_id for t in inputs.tracks if t.track_id not in index_ids]
    if len(missing) == len(inputs.tracks):
        raise EvalError(f"the index {index.path} holds none of the catalogue's tracks; was it built from "
                        "another catalogue?")
    if missing:
        inputs.warnings.append(
            f"the index lacks {len(missing)} catalogue track(s) (e.g. {', '.join(missing[:3])}; unreadable "
            "masters are skipped when indexing): the model can never return them")
    extra = len(index_ids - {t.track_id for t in inputs.tracks})
    if extra:
        inputs.warnings.append(f"the index holds {extra} track(s) that are not in the catalogue manifest")
    info.update(version=index.metadata.version, num_tracks=index.metadata.num_tracks,
                num_windows=index.metadata.num_windows, kind=index.metadata.config.get("kind"),
                recall_at_10=getattr(index.metadata, "recall_at_10", None),
                master_hop_seconds=getattr(index.metadata, "master_hop_seconds", C.MASTER_WINDOW_HOP_SECONDS))
    return index, info


def _index_key(config: EvalConfig, inputs: EvalInputs, embedder: Any) -> dict[str, Any]:
    """What a cached index (OUT/index, a Milvus collection) must have been built for: this catalogue,
    model and master hop (a 2 s index is never served for a 1 s run)."""
    return {"catalogue": catalogue_fingerprint(config.catalogue, inputs.tracks), "model_version": embedder.version,
            "master_window_hop_s": float(config.master_hop_seconds), "window_s": C.WINDOW_SECONDS}


def _milvus_store(config: EvalConfig, inputs: EvalInputs, embedder: Any) -> tuple[Any, dict[str, Any]]:
    """The Milvus collection for this catalogue + model (see EvalConfig.backend)."""
    from serving.index import IndexLoadError, WindowIndex
    from serving.milvus_index import MilvusIndexConfig, MilvusWindowStore, build_collection, copy_index

    uri, name = str(config.milvus_uri), config.milvus_collection
    key = {**_index_key(config, inputs, embedder), "milvus_index_type": config.milvus_index_type}
    where = {"backend": "milvus", "uri": uri, "collection": name}
    try:
        store = MilvusWindowStore.open(uri, name, search_params=config.milvus_search_params)
        if store.metadata.extra.get("eval_key") == key:
            return store, {"source": "cached", **where}
        log.info("Milvus collection %s at %s was built for another catalogue/model: rebuilding it", name, uri)
        store.close()
    except IndexLoadError:
        pass
    mcfg = MilvusIndexConfig(index_type=config.milvus_index_type,
                             search_params=dict(config.milvus_search_params or {}))
    start = time.perf_counter()
    source = None
    if config.index_dir is not None:
        source = WindowIndex.load(config.index_dir)
    else:
        cached_dir, key_file = config.out_dir / INDEX_SUBDIR, config.out_dir / INDEX_KEY_FILE
        try:
            if key_file.is_file() and json.loads(key_file.read_text()) == _index_key(config, inputs, embedder):
                source = WindowIndex.load(cached_dir)
        except (OSError, ValueError, RuntimeError) as e:
            log.warning("cached index in %s unusable (%s)", cached_dir, e)
    if source is not None:
        log.info("writing the windows of index %s to Milvus (no re-embedding)", source.version)
        store = copy_index(source, uri, name, mcfg, overwrite=True, extra={"eval_key": key})
        info = {"source": f"copied from {source.path}", **where}
    else:
        log.info("embedding the catalogue into Milvus collection %s at %s", name, uri)
        emb, rows, offs, infos = _embed_catalogue(embedder, inputs.tracks, config.master_hop_seconds)
        store = build_collection(uri, name, emb, rows, offs, infos, embedder.version, mcfg, overwrite=True,
                                 extra={"eval_key": key, "master_hop_seconds": config.master_hop_seconds})
        info = {"source": "built", **where}
    if config.milvus_search_params:
        store = MilvusWindowStore.open(uri, name, search_params=config.milvus_search_params, client=store._client)
    info["build_seconds"] = round(time.perf_counter() - start, 1)
    return store, info


def _searcher_config(config: EvalConfig) -> Any:
    from serving.index import SearcherConfig

    return SearcherConfig(store_dtype=config.store_dtype)


def _beam_build_index(config: EvalConfig):
    """beam_pipelines.indexing.build_index, or None when the in-process indexer is wanted/only one."""
    if config.indexer == "inprocess":
        return None
    try:
        from beam_pipelines.indexing import build_index
    except ImportError:
        if config.indexer == "beam":
            raise
        return None
    return build_index


def _build_index(config: EvalConfig, inputs: EvalInputs, embedder: Any, index_dir: Path) -> Any:
    from serving.index import WindowIndex

    build_index = _beam_build_index(config)
    if config.base_index is not None:
        return _extend_index(config, inputs, embedder, index_dir)
    if build_index is not None:
        log.info("building the index with beam_pipelines.indexing.build_index")
        path = build_index(config.catalogue, config.model_dir, index_dir, searcher_config=_searcher_config(config),
                           master_hop_seconds=config.master_hop_seconds)
        return WindowIndex.load(path)
    log.info("building the index in-process (master hop %g s)", config.master_hop_seconds)
    emb, rows, offs, infos = _embed_catalogue(embedder, inputs.tracks, config.master_hop_seconds)
    index = WindowIndex.build(emb, rows, offs, infos, model_version=embedder.version,
                              config=_searcher_config(config),
                              extra={"master_hop_seconds": config.master_hop_seconds})
    index.save(index_dir)
    return index


def _extend_index(config: EvalConfig, inputs: EvalInputs, embedder: Any, index_dir: Path) -> Any:
    """The base index plus the catalogue tracks it lacks (embedded now, added as a new release)."""
    from serving.index import WindowIndex

    base_dir = Path(config.base_index)
    base = WindowIndex.load(base_dir)
    if base.metadata.model_version != embedder.version:
        raise EvalError(f"--base-index {base_dir} holds model {base.metadata.model_version!r}, "
                        f"the model is {embedder.version!r}")
    if not math.isclose(base.metadata.master_hop_seconds, config.master_hop_seconds, abs_tol=1e-6):
        raise EvalError(f"--base-index {base_dir} was built at a master hop of "
                        f"{base.metadata.master_hop_seconds:g} s, this run's is {config.master_hop_seconds:g} s "
                        "(--master-hop-seconds)")
    catalogue_ids = {t.track_id for t in inputs.tracks}
    extra = [t.track_id for t in base.tracks if t.track_id not in catalogue_ids]
    if extra:
        raise EvalError(f"--base-index {base_dir} holds {len(extra)} track(s) that are not in the catalogue "
                        f"(e.g. {', '.join(extra[:3])})")
    have = {t.track_id for t in base.tracks}
    missing = [t for t in inputs.tracks if t.track_id not in have]
    log.info("extending index %s (%d tracks) with %d tracks", base_dir, len(have), len(missing))
    if not missing:
        base.save(index_dir)
        return WindowIndex.load(index_dir)
    build_index = _beam_build_index(config)
    if build_index is not None:
        from data_gen.manifest import write_catalogue

        release = config_release_manifest(index_dir)
        write_catalogue(release, missing)
        build_index(release, embedder.model_dir, index_dir, add_to=base_dir,
                    master_hop_seconds=config.master_hop_seconds)
        return WindowIndex.load(index_dir)
    emb, rows, offs, infos = _embed_catalogue(embedder, missing, config.master_hop_seconds)
    index = base.add(emb, rows, offs, infos, master_hop_seconds=config.master_hop_seconds)
    index.save(index_dir)
    return WindowIndex.load(index_dir)


def config_release_manifest(index_dir: Path) -> Path:
    """Where the manifest of the tracks added to a base index is written (beside the index)."""
    return index_dir.parent / "added_tracks_manifest.csv"


# --- systems -------------------------------------------------------------------------------------
def make_systems(config: EvalConfig, inputs: EvalInputs) -> tuple[list[RankingSystem], dict[str, Any]]:
    """The model (one system per aggregation) and the requested baselines, prepared."""
    systems: list[RankingSystem] = []
    info: dict[str, Any] = {}
    if config.model_dir is not None:
        from serving.embedder import Embedder
        from serving.retrieval import Retriever

        embedder = Embedder(config.model_dir)
        index, index_info = build_or_load_index(config, inputs, embedder)
        info["model"] = {"dir": str(config.model_dir), "version": embedder.version,
                         "rerank_candidates": config.rerank_candidates,
                         "query_tempo_rates": list(config.query_tempo_rates),
                         "tempo_view_penalty": config.tempo_view_penalty}
        info["index"] = index_info
        shared = SharedQueryEmbedding(embedder, config.query_tempo_rates)
        for agg in config.aggregations:
            rcfg = RetrievalConfig(top_k=config.top_k, aggregation=agg,
                                   no_match_threshold=config.no_match_threshold,
                                   rerank_candidates=config.rerank_candidates,
                                   query_tempo_rates=config.query_tempo_rates,
                                   tempo_view_penalty=config.tempo_view_penalty)
            retriever = Retriever(embedder, index, rcfg)
            info["model"].setdefault("no_match_threshold", {})[agg] = {
                "threshold": retriever.threshold, "source": retriever.threshold_source}
            systems.append(ModelSystem(
                retriever, model_system_name(agg),
                f"learned encoder ({embedder.version}) + window index, {agg} aggregation; no-match "
                f"threshold {retriever.threshold:.3f} ({retriever.threshold_source})",
                shared=shared,
            ))
    wanted = list(config.baselines)
    if wanted:
        from training.evaluation.baselines.pitch_cache import SharedPitch

        pitch = SharedPitch()
        cache_dir = config.cache_dir or (config.out_dir / "cache")
        for name in wanted:
            if name == "note_histogram":
                from training.evaluation.baselines.note_histogram import NoteHistogramBaseline

                system: RankingSystem = NoteHistogramBaseline(pitch)
            else:
                from training.evaluation.baselines.melody_dtw import MelodyDtwBaseline

                system = MelodyDtwBaseline(pitch)
            start = time.perf_counter()
            system.prepare(inputs.tracks, cache_dir)
            info.setdefault("baselines", {})[name] = {
                "prepare_seconds": round(time.perf_counter() - start, 1),
                "pitch_extractor": pitch.name,
                **({"master_melody": system.source} if hasattr(system, "source") else {}),
            }
            systems.append(system)
    return systems, info


# --- answering -----------------------------------------------------------------------------------
def crop(audio: np.ndarray, seconds: float, rng: np.random.Generator) -> np.ndarray | None:
    """A `seconds`-long excerpt at a random start; None when the audio is not longer than that."""
    n = int(round(seconds * C.SAMPLE_RATE))
    if audio.shape[0] <= n:
        return None
    start = int(rng.integers(0, audio.shape[0] - n + 1))
    return audio[start : start + n]


def _crop_rng(seed: int, query_id: str, seconds: float) -> np.random.Generator:
    digest = hashlib.sha1(f"{seed}|{query_id}|{seconds:g}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _answer(system: RankingSystem, q: Query, kind: str, audio: np.ndarray, top_k: int,
            crop_s: float | None) -> M.QueryOutcome:
    duration = audio.shape[0] / C.SAMPLE_RATE
    start = time.perf_counter()
    try:
        result = system.rank(audio, top_k)
    except AudioError as e:  # e.g. silent or too short for the service: a miss, with the reason
        return M.QueryOutcome(q.query_id, q.track_id, kind, duration, (), (), True,
                              1000.0 * (time.perf_counter() - start), crop_s, error=str(e))
    wall_ms = 1000.0 * (time.perf_counter() - start)
    return M.QueryOutcome(
        q.query_id, q.track_id, kind, duration,
        tuple(m.track_id for m in result.matches), tuple(float(m.score) for m in result.matches),
        bool(result.no_match), system.latency_ms(result, wall_ms), crop_s, reason=result.reason,
    )


def _outcome_cache_path(config: EvalConfig, inputs: EvalInputs, system: RankingSystem) -> Path | None:
    """Where a deterministic system's answers to this query set are cached (None: do not cache)."""
    key = system.cache_key()
    if key is None:
        return None
    h = hashlib.sha256()
    h.update(catalogue_fingerprint(config.catalogue, inputs.tracks).encode())
    h.update(Path(config.queries).read_bytes())
    for q in inputs.queries:
        st = q.path.stat()
        h.update(f"{q.query_id}|{st.st_size}|{st.st_mtime_ns}".encode())
    crops = config.crop_seconds if config.crop_baselines or isinstance(system, ModelSystem) else ()
    h.update(f"{key}|{config.top_k}|{config.seed}|{crops}".encode())
    cache_dir = config.cache_dir or (config.out_dir / "cache")
    return cache_dir / "outcomes" / f"{system.name}-{h.hexdigest()[:20]}.jsonl"


def _read_outcomes(path: Path, labels: Sequence[str]) -> dict[str, list[M.QueryOutcome]] | None:
    out: dict[str, list[M.QueryOutcome]] = {label: [] for label in labels}
    try:
        for line in path.read_text().splitlines():
            d = json.loads(line)
            label = d.pop("label")
            out[label].append(M.QueryOutcome(
                d["query_id"], d["true_track"], d["kind"], float(d["duration_s"]), tuple(d["ranked"]),
                tuple(float(x) for x in d["scores"]), bool(d["no_match"]), float(d["latency_ms"]),
                d["crop_s"], d["error"]))
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring outcome cache %s (%s)", path, e)
        return None
    return out


def _write_outcomes(path: Path, outcomes: dict[str, list[M.QueryOutcome]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for label, outs in outcomes.items():
            for o in outs:
                d = {"label": label, "query_id": o.query_id, "true_track": o.true_track, "kind": o.kind,
                     "duration_s": o.duration_s, "ranked": list(o.ranked), "scores": list(o.scores),
                     "no_match": o.no_match, "latency_ms": o.latency_ms, "crop_s": o.crop_s,
                     "error": o.error}
                f.write(json.dumps(d) + "\n")
    tmp.replace(path)


def answer_queries(config: EvalConfig, inputs: EvalInputs, systems: Sequence[RankingSystem]
                   ) -> dict[str, dict[str, list[M.QueryOutcome]]]:
    """outcomes[system][crop label] -> one QueryOutcome per query ("full" = the whole query).

    Deterministic systems (the baselines) reuse their answers from the outcome cache when the
    catalogue, query set and settings are unchanged.
    """
    labels = [FULL] + [crop_label(c) for c in config.crop_seconds]
    outcomes: dict[str, dict[str, list[M.QueryOutcome]]] = {}
    pending: list[RankingSystem] = []
    cache_paths: dict[str, Path | None] = {}
    for s in systems:
        path = cache_paths[s.name] = _outcome_cache_path(config, inputs, s)
        cached = _read_outcomes(path, labels) if path is not None and path.is_file() else None
        if cached is not None:
            log.info("%s: answers read from %s", s.name, path)
            outcomes[s.name] = cached
        else:
            outcomes[s.name] = {label: [] for label in labels}
            pending.append(s)
    if not pending:
        return outcomes
    for q in tqdm(inputs.queries, desc="queries", unit="query", mininterval=2):
        kind = q.extra.get("kind") or M.UNKNOWN_KIND
        try:
            audio = load_audio(q.path)
        except AudioError as e:
            log.warning("query %s: %s", q.query_id, e)
            for s in pending:
                outcomes[s.name][FULL].append(M.QueryOutcome(
                    q.query_id, q.track_id, kind, float("nan"), (), (), True, 0.0, None, error=str(e)))
            continue
        for s in pending:
            outcomes[s.name][FULL].append(_answer(s, q, kind, audio, config.top_k, None))
        for c in config.crop_seconds:
            piece = crop(audio, c, _crop_rng(config.seed, q.query_id, c))
            if piece is None:
                continue
            for s in pending:
                if config.crop_baselines or isinstance(s, ModelSystem):
                    outcomes[s.name][crop_label(c)].append(_answer(s, q, kind, piece, config.top_k, c))
    for s in pending:
        path = cache_paths[s.name]
        if path is not None:
            _write_outcomes(path, outcomes[s.name])
    return outcomes


def crop_label(seconds: float) -> str:
    return f"crop_{seconds:g}s"


# --- scoring and writing -------------------------------------------------------------------------
def _external_thresholds(path: Path | None) -> dict[str, float]:
    if path is None:
        return {}
    data = json.loads(Path(path).read_text())
    out = {}
    for name, s in data.get("systems", {}).items():
        thr = s.get(FULL, {}).get("calibration", {}).get("impostor_threshold")
        if thr is not None:
            out[name] = float(thr)
    return out


def _query_set_summary(inputs: EvalInputs) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for q in inputs.queries:
        k = q.extra.get("kind") or M.UNKNOWN_KIND
        kinds[k] = kinds.get(k, 0) + 1
    return {
        "num_queries": len(inputs.queries),
        "in_catalogue": sum(q.track_id is not None for q in inputs.queries),
        "open_set": sum(q.track_id is None for q in inputs.queries),
        "kinds": dict(sorted(kinds.items())),
        "num_tracks": len(inputs.tracks),
        "with_melody_midi": sum(t.melody_midi is not None for t in inputs.tracks),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run the whole evaluation; returns the metrics dict also written to OUT/metrics.json."""
    inputs = load_inputs(config)  # ManifestError before anything heavy
    if config.model_dir is not None:
        from serving.embedder import ModelMetadata

        ModelMetadata.read(config.model_dir)  # ModelError for a bad model dir, before heavy work
    config.out_dir.mkdir(parents=True, exist_ok=True)
    for w in inputs.warnings:
        log.warning("%s", w)
    started = time.time()
    systems, system_info = make_systems(config, inputs)
    outcomes = answer_queries(config, inputs, systems)
    external = _external_thresholds(config.thresholds_from)
    results: dict[str, Any] = {}
    for s in systems:
        per_crop = {}
        for label, outs in outcomes[s.name].items():
            if label != FULL and not outs:
                continue  # this system was not run on crops
            per_crop[label] = M.summarize(outs, open_set_threshold=external.get(s.name),
                                          target_far=config.target_far)
            per_crop[label]["median_duration_s"] = (
                float(np.nanmedian([o.duration_s for o in outs])) if outs else None)
        results[s.name] = {"description": s.description, **per_crop}
    report = {
        "format": "earworm-eval/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_seconds": round(time.time() - started, 1),
        "config": _jsonable({k: v for k, v in asdict(config).items()}),
        "catalogue": str(config.catalogue),
        "queries": str(config.queries),
        "query_set": _query_set_summary(inputs),
        "warnings": inputs.warnings,
        "thresholds_from": {"path": str(config.thresholds_from), "thresholds": external} if external else None,
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        **system_info,
        "systems": results,
    }
    report = _jsonable(report)
    (config.out_dir / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    with (config.out_dir / OUTCOMES_FILE).open("w") as f:
        for name, per_crop in outcomes.items():
            for label, outs in per_crop.items():
                for o in outs:
                    f.write(json.dumps(_jsonable({"system": name, "crop": label, **o.to_dict()})) + "\n")
    from training.evaluation.report import write_report

    figures = []
    if config.plots:
        from training.evaluation.plots import write_plots

        figures = write_plots(report, config.out_dir)
    write_report(report, config.out_dir / REPORT_FILE, figures=figures)
    model = next((s for s in systems if isinstance(s, ModelSystem)), None)
    if config.explain and model is not None:
        from training.evaluation.explain import explain_misses, write_failures

        misses = explain_misses(model.retriever, inputs.queries, {t.track_id: t for t in inputs.tracks},
                                outcomes[model.name][FULL], config.out_dir, plots=config.plots)
        text = write_failures(misses, config.out_dir, sum(q.track_id is not None for q in inputs.queries),
                              model.name)
        with (config.out_dir / REPORT_FILE).open("a") as f:
            f.write("\n" + text)
    log.info("wrote %s and %s", config.out_dir / METRICS_FILE, config.out_dir / REPORT_FILE)
    return report


def with_out_dir(config: EvalConfig, out_dir: Path) -> EvalConfig:
    return replace(config, out_dir=out_dir)
