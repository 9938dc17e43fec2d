"""`earworm catalogue build`: render a synthetic catalogue of polyphonic masters."""

from __future__ import annotations

import argparse
import os

from data_gen.catalogue import AUDIO_FORMATS, CONFIG

SPLIT_CHOICES = ("train", "validation", "test", "all")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "catalogue", help="build a synthetic catalogue of polyphonic master recordings"
    )
    sub = parser.add_subparsers(dest="catalogue_command", metavar="ACTION")
    build = sub.add_parser(
        "build",
        help="render N folk/chorale melodies as arranged songs (audio + melody MIDI + manifest)",
        description="Render the first N usable corpus melodies of a split (deterministic order "
        "for the seed) as polyphonic masters: DIR/audio/<id>.<fmt>, DIR/midi/<id>.mid (the melody, "
        "timed as in the master), DIR/manifest.csv and DIR/catalogue_info.jsonl. Rerunning with "
        "the same arguments reuses finished tracks.",
    )
    build.add_argument("--size", type=int, default=CONFIG.size, help=f"number of tracks (default {CONFIG.size})")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--split", choices=SPLIT_CHOICES, default=CONFIG.split,
                       help=f"melody split to draw from (default {CONFIG.split})")
    build.add_argument("--seed", type=int, default=CONFIG.seed, help=f"order and arrangement seed (default {CONFIG.seed})")
    build.add_argument("--format", choices=sorted(AUDIO_FORMATS), default=CONFIG.audio_format,
                       help=f"audio format (default {CONFIG.audio_format})")
    build.add_argument("--workers", type=int, default=None,
                       help=f"parallel render processes (default: CPU count, here {os.cpu_count()})")
    build.add_argument("--sung-lead-share", type=float, default=0.0,
                       help="share of tracks whose melody a singing voice carries (syllables on the melody, "
                       "sometimes doubled by the instrument) instead of the General MIDI lead (default 0)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=run_build)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def run_build(args: argparse.Namespace) -> int:
    from data_gen.catalogue import CatalogueError, build_catalogue_report
    from data_gen.render import RenderError, SoundfontNotFoundError

    if args.size < 1:
        print("error: --size must be at least 1")
        return 2
    try:
        report = build_catalogue_report(
            args.out, args.size, args.split, args.seed,
            audio_format=args.format, workers=args.workers, progress=not args.no_progress,
            sung_lead_share=args.sung_lead_share,
        )
    except (SoundfontNotFoundError, RenderError, CatalogueError, OSError, ValueError) as e:
        print(f"error: {e}")
        return 1
    per_track = report.seconds / report.tracks if report.tracks else 0.0
    print(f"catalogue: {report.tracks} tracks in {report.manifest.parent} "
          f"({report.rendered} rendered, {report.reused} reused, {report.skipped} melodies skipped)")
    print(f"total {report.seconds:.1f} s, {per_track:.2f} s per track"
          + (f", {report.seconds_per_rendered_track:.2f} s per rendered track" if report.rendered else ""))
    print(f"manifest: {report.manifest}")
    return 0
