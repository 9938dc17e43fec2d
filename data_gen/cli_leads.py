"""`earworm mir1k-leads`: instrument lead tracks for MIR-1K clips (training masters without the voice)."""

from __future__ import annotations

import argparse

SPLITS = ("train", "validation", "test")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mir1k-leads",
        help="render MIR-1K melodies (pitch labels) on GM instruments, for voice-free training masters",
        description="For every MIR-1K clip (of --splits), write OUT/<clip>.lead.ogg: a General-MIDI "
        "instrument playing the notes of the clip's pitch labels, sample-aligned with the clip and "
        "level-matched to its accompaniment, plus OUT/leads.csv. Then `earworm datagen --mir1k "
        "--mir1k-leads OUT` uses lead + accompaniment as each clip's master. Reruns keep finished clips.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--source", default=None,
                        help="MIR-1K folder (manifest.csv, audio/, pitch/); default ../shared/data/mir1k")
    parser.add_argument("--splits", default="train,validation",
                        help="comma-separated splits by song id (default train,validation: test songs "
                        "stay unseen)")
    parser.add_argument("--limit", type=int, default=None, help="first N clips only")
    parser.add_argument("--seed", type=int, default=0, help="instrument and level draws")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from data_gen.mir1k_leads import LeadConfig, LeadError, render_mir1k_leads
    from data_gen.paths import shared_data_dir
    from data_gen.render import SoundfontNotFoundError

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        print(f"error: --splits must name some of {', '.join(SPLITS)}, got {args.splits!r}")
        return 2
    source = args.source or str(shared_data_dir() / "mir1k")
    try:
        report = render_mir1k_leads(source, args.out, splits=splits, limit=args.limit,
                                    config=LeadConfig(seed=args.seed), progress=not args.no_progress)
    except (LeadError, SoundfontNotFoundError, OSError) as e:
        print(f"error: {e}")
        return 1
    print(f"MIR-1K leads in {report.out_dir}: {report.rendered} rendered, {report.reused} reused, "
          f"{len(report.errors)} error(s)")
    for clip, reason in report.errors[:20]:
        print(f"  {clip}: {reason}")
    return 0
