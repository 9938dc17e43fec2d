"""`earworm queries make`: a synthetic hum/whistle/tone/sung query set for a catalogue."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    # Defaults live in QuerySetConfig / DeviationConfig; both modules import only numpy/scipy.
    from data_gen.synth.deviations import DeviationConfig
    from data_gen.synth.queries import DEFAULTS

    parser = subparsers.add_parser("queries", help="synthetic query sets (hum, whistle, tone, sung)")
    actions = parser.add_subparsers(dest="queries_action", metavar="ACTION", required=True)
    make = actions.add_parser(
        "make",
        help="perform a random window of every catalogue track's melody as a query",
        description="Reads each track's melody MIDI (the manifest's melody_midi column), performs a "
        "random window of it with human deviations (key, tempo, timing, intonation, vibrato, noise, "
        "phone microphone) and writes OUT/audio/<query_id>.wav, OUT/queries.csv and "
        "OUT/queries_info.jsonl.",
    )
    make.add_argument("--catalogue", type=Path, required=True, help="catalogue manifest.csv")
    make.add_argument("--out", type=Path, required=True, help="output folder")
    make.add_argument("--per-track", type=int, default=DEFAULTS.per_track, help="queries per track (default %(default)s)")
    make.add_argument("--kinds", default=",".join(DEFAULTS.kinds), help="comma-separated kinds, cycled over the queries (default %(default)s)")
    make.add_argument("--min-seconds", type=float, default=DEFAULTS.min_seconds, help="shortest query (default %(default)s)")
    make.add_argument("--max-seconds", type=float, default=DEFAULTS.max_seconds, help="longest query (default %(default)s)")
    make.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed (default %(default)s)")
    make.add_argument("--limit", type=int, default=DEFAULTS.limit, help="only the first N tracks")
    make.add_argument("--strength", type=float, default=DeviationConfig.strength,
                      help="scale of performance errors and channel degradations; 0 = clean (default %(default)s)")
    make.set_defaults(func=run_make)


def run_make(args: argparse.Namespace) -> int:
    from data_gen.manifest import ManifestError
    from data_gen.synth.contour import SynthError
    from data_gen.synth.deviations import DeviationConfig
    from data_gen.synth.queries import QueryGenerationError, make_queries

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    try:
        config = DeviationConfig(strength=args.strength)
        path = make_queries(
            args.catalogue, args.out, kinds=kinds, per_track=args.per_track, seed=args.seed,
            min_s=args.min_seconds, max_s=args.max_seconds, limit=args.limit, config=config,
        )
    except (ManifestError, QueryGenerationError, SynthError) as e:
        print(f"earworm queries make: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
