"""`earworm pitch bench`: pitch-tracker accuracy and speed on the real singing of MIR-1K.

    earworm pitch bench [--data DIR] [--backends crepe,pyin,spice] [--limit N]
                        [--decoder viterbi|average] [--json [PATH]]

Prints one row per backend: raw pitch / chroma accuracy (50 cents), voicing recall and false alarm,
overall accuracy, and seconds of audio processed per second. Backends whose model cannot be found
are listed as "unavailable (reason)".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PitchBenchConfig:
    """Defaults of `earworm pitch bench` (data dir resolved at run time from data_gen.paths)."""

    backends: str = "crepe,pyin,spice"
    decoder: str = "viterbi"
    crepe_capacity: str = "tiny"
    crepe_threshold: float = 0.5
    crepe_batch_size: int = 512
    spice_threshold: float = 0.9


DEFAULTS = PitchBenchConfig()


def default_mir1k_dir() -> Path:
    from data_gen import paths

    return paths.shared_data_dir() / "mir1k"


def register(subparsers: argparse._SubParsersAction) -> None:
    pitch = subparsers.add_parser("pitch", help="pitch extraction tools")
    actions = pitch.add_subparsers(dest="pitch_command", metavar="ACTION")
    pitch.set_defaults(func=lambda args: (pitch.print_help(), 2)[1])
    bench = actions.add_parser(
        "bench",
        help="accuracy and speed of the pitch backends on MIR-1K",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--data", type=Path, default=None, help="MIR-1K folder (default ../shared/data/mir1k)")
    bench.add_argument("--backends", default=DEFAULTS.backends, help="comma-separated: crepe,pyin,spice")
    bench.add_argument("--limit", type=int, default=None, help="evenly spaced subset of N clips")
    bench.add_argument("--decoder", choices=("viterbi", "average"), default=DEFAULTS.decoder, help="CREPE decoder")
    bench.add_argument("--crepe-weights", default=None, help="CREPE HDF5 weights (default: looked up)")
    bench.add_argument("--crepe-capacity", default=DEFAULTS.crepe_capacity, help="CREPE model size")
    bench.add_argument("--crepe-threshold", type=float, default=DEFAULTS.crepe_threshold, help="CREPE voicing threshold")
    bench.add_argument("--crepe-batch-size", type=int, default=DEFAULTS.crepe_batch_size, help="CREPE frames per batch")
    bench.add_argument("--spice-model", default=None, help="SPICE SavedModel folder or TF Hub handle")
    bench.add_argument("--spice-threshold", type=float, default=DEFAULTS.spice_threshold, help="SPICE voicing threshold")
    bench.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write results as JSON to PATH (or to stdout instead of the table when no PATH is given)",
    )
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(func=run_bench)


def _backend_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "crepe":
        return dict(
            capacity=args.crepe_capacity,
            weights_path=args.crepe_weights,
            decoder=args.decoder,
            voicing_threshold=args.crepe_threshold,
            batch_size=args.crepe_batch_size,
        )
    if name == "spice":
        return dict(model=args.spice_model, voicing_threshold=args.spice_threshold)
    return {}


def _describe(name: str, extractor: Any) -> str:
    config = getattr(extractor, "config", None)
    if name == "crepe" and config is not None:
        return f"CREPE {config.capacity}, {config.decoder} decoder, voiced if confidence > {config.voicing_threshold:g}"
    if name == "spice" and config is not None:
        return f"SPICE, voiced if confidence > {config.voicing_threshold:g}"
    if name == "pyin" and config is not None:
        return f"pYIN {config.fmin:g}-{config.fmax:g} Hz, frame {config.frame_length}"
    return name


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def run_bench(args: argparse.Namespace) -> int:
    from data_gen.pitch import BACKENDS, PitchModelUnavailableError, make_extractor
    from data_gen.pitch.benchmark import format_table, list_mir1k_clips, run_benchmark

    names = [n.strip().lower() for n in args.backends.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        print(f"error: unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    data_dir = args.data or default_mir1k_dir()
    try:
        clips = list_mir1k_clips(data_dir, args.limit)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    extractors: dict[str, Any] = {}
    descriptions: dict[str, str] = {}
    for name in names:
        try:
            extractor = make_extractor(name, **_backend_options(name, args))
        except PitchModelUnavailableError as e:
            logger.warning("%s unavailable: %s", name, e)
            extractors[name] = str(e).split(". ")[0]
            descriptions[name] = name
            continue
        extractors[name] = extractor
        descriptions[name] = _describe(name, extractor)

    logger.info("benchmarking %s on %d MIR-1K clips from %s", ", ".join(names), len(clips), data_dir)
    results = run_benchmark(extractors, clips, descriptions=descriptions, progress=not args.no_progress)
    payload = {
        "data": str(data_dir),
        "clips": len(clips),
        "limit": args.limit,
        "results": [_json_safe(r.to_dict()) for r in results],
    }
    if args.json == "-":
        print(json.dumps(payload, indent=2))
    else:
        print(f"MIR-1K voice channel, {len(clips)} clips, {data_dir}")
        for r in results:
            if r.available:
                print(f"  {r.name}: {r.description}")
        print(format_table(results))
        if args.json:
            Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
            print(f"wrote {args.json}")
    return 0 if any(r.available for r in results) else 1
