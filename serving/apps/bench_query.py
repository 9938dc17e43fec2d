"""`earworm bench-query`: where one query's time goes, stage by stage, single-threaded.

Runs the retrieval path of one request in this process (no gRPC, no decoding) over distinct hum-like
queries and prints, per stage, the median milliseconds and the share of the total:

    melody gate      YIN pitch of the query (is there a melody?)
    tempo views      the other tempo views' windows stretched along time from the spectrogram
                     (resampling the audio, for an older export without the split front-end)
    front-end        log filterbank power: one pass over the query (and some silence after it) that
                     the windows of every view are read from (every window's own, for an older export)
    body             the encoder's convolutional body over all windows
    search           the first stage: nearest catalogue windows of every query window (k each)
    aggregation      hits -> time-consistent track scores, per view
    re-ranking       exact time-aligned scores of the best tracks against all their windows
    glue             the rest of `Retriever.identify` (end to end minus the stages above)

With `--compare-per-window`, the embedding is also timed the old way (every window through the
whole encoder on its own) in the same run, for a side-by-side figure. The index is `--index DIR` or
a random `--synthetic-tracks N` one, as for `earworm bench-load`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from data_gen import constants as C
from serving.apps.machine_speed import format_machine_line, one_thread_matmul_gflops

log = logging.getLogger(__name__)

STAGES = ("melody gate", "tempo views", "front-end", "body", "search", "aggregation", "re-ranking", "glue")


@dataclass
class QueryBreakdown:
    queries: int
    query_seconds: float
    tempo_views: tuple[float, ...]
    windows: int
    index_tracks: int
    index_windows: int
    stage_ms: dict[str, float]
    """Median milliseconds per stage."""
    total_ms: float
    """Median end-to-end `Retriever.identify` milliseconds (measured on its own)."""
    per_window_embed_ms: float | None = None
    """Median milliseconds of the old embedding path (every window through the whole encoder)."""
    split_frontend: bool = True
    extra: dict[str, float] = field(default_factory=dict)
    matmul_gflops: float | None = None
    """This machine's one-thread float32 matmul speed (`machine_speed`), for comparing runs."""
    body_mflop_per_window: float | None = None
    """The body's work per window (`training.encoder.body_flops`); None when the export has no config."""

    @property
    def body_gflops(self) -> float | None:
        """The body's achieved speed: its work over all windows divided by its median time."""
        if self.body_mflop_per_window is None or self.stage_ms.get("body", 0.0) <= 0:
            return None
        return self.body_mflop_per_window * self.windows / self.stage_ms["body"]  # MFLOP per ms = GFLOP/s


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _body_mflop_per_window(metadata: dict) -> float | None:
    """The exported model's body work per window, from its saved encoder config (None without one)."""
    from training.encoder import EncoderConfig, body_flops

    config = metadata.get("config")
    return body_flops(EncoderConfig.from_dict(config)) / 1e6 if isinstance(config, dict) else None


def run_breakdown(model_dir: Path, index_dir: Path, *, queries: int = 30, query_seconds: float = 10.0,
                  tempo_views: tuple[float, ...] | None = None, compare_per_window: bool = False,
                  seed: int = 0) -> QueryBreakdown:
    from data_gen.windows import cut_query_views, tempo_fraction, tempo_view
    from data_gen.synth.test_signals import hum_like_audio
    from serving.embedder import Embedder, single_threaded_tensorflow
    from serving.index import WindowIndex
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig

    if not single_threaded_tensorflow():  # as a server runs it (LiteRT runs the body on one thread)
        log.warning("TensorFlow is already initialised: its thread pools stay as they are")
    embedder = Embedder(model_dir)
    index = WindowIndex.load(index_dir)
    config = RetrievalConfig()
    if tempo_views:
        config = replace(config, query_tempo_rates=tuple(tempo_views))
    retriever = Retriever(embedder, index, config)
    rates = config.query_tempo_rates
    audios = [hum_like_audio(query_seconds, seed + i) for i in range(queries)]
    for a in audios[:2]:  # warm-up: the first calls trace the model and allocate
        retriever.identify(a)
    rows: dict[str, list[float]] = {s: [] for s in STAGES}
    totals, old_embed = [], []
    windows = 0
    for audio in audios:
        t0 = time.perf_counter()
        retriever.identify(audio)
        totals.append(_ms(t0))

        t0 = time.perf_counter()
        if retriever.gate is not None:
            retriever.gate.check(audio)
        rows["melody gate"].append(_ms(t0))
        if embedder.splits_frontend:  # as Embedder.query_log_power, stage by stage
            t0 = time.perf_counter()
            others = [r for r in rates if tempo_fraction(r) != 1]
            source = embedder.stretch_source(audio, rates) if others else None
            as_sung, (sung_starts,) = embedder.window_log_power([audio], C.QUERY_WINDOW_HOP, wholes=[source])
            rows["front-end"].append(_ms(t0))
            t0 = time.perf_counter()
            stretched = {r: embedder.stretched_view(source, audio.shape[0], r)[:2] for r in others}
            rows["tempo views"].append(_ms(t0))
            parts = [(as_sung, sung_starts) if tempo_fraction(r) == 1 else stretched[r] for r in rates]
            logp = np.concatenate([p for p, _ in parts])
            offsets = np.concatenate([s / C.SAMPLE_RATE for _, s in parts])
            view_ids = np.concatenate([np.full(s.shape[0], v) for v, (_, s) in enumerate(parts)])
            t0 = time.perf_counter()
            emb = embedder.embed_log_power(logp)
            rows["body"].append(_ms(t0))
        else:
            t0 = time.perf_counter()
            views = [tempo_view(audio, float(r)) for r in rates]
            rows["tempo views"].append(_ms(t0))
            t0 = time.perf_counter()
            w, offsets, view_ids = cut_query_views(audio, rates)
            emb = embedder.embed_windows(w)
            rows["front-end"].append(0.0)
            rows["body"].append(_ms(t0))
        windows = emb.shape[0]
        result = retriever.identify_embeddings(emb, offsets, audio.size / C.SAMPLE_RATE, views=view_ids)
        t = result.timings_ms
        rows["search"].append(t["search"])
        rows["aggregation"].append(t["aggregate"])
        rows["re-ranking"].append(t.get("rerank", 0.0))
        if compare_per_window:
            t0 = time.perf_counter()
            embedder.embed_windows(cut_query_views(audio, rates)[0])
            old_embed.append(_ms(t0))
    med = {s: float(np.median(v)) for s, v in rows.items() if s != "glue"}
    total = float(np.median(totals))
    med["glue"] = max(total - sum(med.values()), 0.0)
    return QueryBreakdown(queries, query_seconds, tuple(rates), windows, index.num_tracks, index.num_windows,
                          med, total, float(np.median(old_embed)) if old_embed else None,
                          embedder.splits_frontend, matmul_gflops=one_thread_matmul_gflops(),
                          body_mflop_per_window=_body_mflop_per_window(embedder.metadata.raw))


def format_breakdown(b: QueryBreakdown) -> str:
    lines = [f"one {b.query_seconds:g} s query, single-threaded, median of {b.queries}: {b.windows} windows in "
             f"{len(b.tempo_views)} tempo view(s) {','.join(f'{r:g}' for r in b.tempo_views)}; index "
             f"{b.index_tracks} tracks, {b.index_windows} windows",
             f"{'stage':<14}{'ms':>9}{'share':>8}"]
    total = sum(b.stage_ms.values())
    for s in STAGES:
        ms = b.stage_ms.get(s, 0.0)
        lines.append(f"{s:<14}{ms:>9.2f}{ms / max(total, 1e-9):>8.0%}")
    lines.append(f"{'total':<14}{b.total_ms:>9.2f}")
    embed = b.stage_ms["front-end"] + b.stage_ms["body"]
    lines.append(f"embedding ({'front-end once per view' if b.split_frontend else 'per window'}): {embed:.2f} ms")
    if b.per_window_embed_ms is not None:
        lines.append(f"embedding per window (every window through the whole encoder), same run: "
                     f"{b.per_window_embed_ms:.2f} ms ({b.per_window_embed_ms / max(embed, 1e-9):.2f}x)")
    if b.matmul_gflops is not None:
        machine = format_machine_line(b.matmul_gflops)
        if b.body_gflops is not None:
            machine += (f"; body {b.body_mflop_per_window:.1f} MFLOP per window x {b.windows} = "
                        f"{b.body_gflops:.1f} GFLOP/s ({b.body_gflops / b.matmul_gflops:.0%} of that)")
        lines.append(machine)
    return "\n".join(lines)


def register(subparsers) -> None:
    from serving.arg_types import positive_float, positive_int
    from serving.retrieval_types import parse_tempo_rates

    p = subparsers.add_parser(
        "bench-query", help="per-stage time of one query (single-threaded)", allow_abbrev=False,
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="exported model")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--index", type=Path, help="index directory")
    where.add_argument("--synthetic-tracks", type=positive_int, help="a random index of N tracks (built once)")
    p.add_argument("--synthetic-dir", type=Path, default=None, help="where synthetic indexes are kept")
    p.add_argument("--queries", type=positive_int, default=30, help="distinct queries (default 30)")
    p.add_argument("--query-seconds", type=positive_float, default=10.0, help="default 10")
    p.add_argument("--tempo-views", type=parse_tempo_rates, default=None, help="default: the retriever's")
    p.add_argument("--compare-per-window", action="store_true",
                   help="also time the per-window embedding path in the same run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=None, help="also write the figures as JSON")
    p.set_defaults(func=run_bench_query)


def run_bench_query(args: argparse.Namespace) -> int:
    from serving.apps.bench_load import synthetic_index_for_model

    index_dir = args.index
    if index_dir is None:
        index_dir = synthetic_index_for_model(args.model, args.synthetic_tracks, root=args.synthetic_dir,
                                              seed=args.seed)
    b = run_breakdown(args.model, index_dir, queries=args.queries, query_seconds=args.query_seconds,
                      tempo_views=args.tempo_views, compare_per_window=args.compare_per_window, seed=args.seed)
    print(format_breakdown(b))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(asdict(b), indent=2) + "\n")
    return 0
