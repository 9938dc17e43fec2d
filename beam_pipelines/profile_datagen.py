"""Where datagen's time goes, stage by stage, and how far CREPE's contour of a rendered performance
is from the f0 the synthesizer actually sang.

    python -m beam_pipelines.profile_datagen --catalogue DIR [--limit 30] [--performance-seconds 6,8]
        [--rendered-pitch extract|known] [--json OUT.json]

Runs the pipeline's own steps (the same functions the DoFns call) in one process, one snippet at a
time, without Beam, and charges each step's CPU seconds (process time: every thread, TF's
included) to a stage. The Beam overhead (worker start-up, pickling between stages, shuffles) is
what a real `earworm datagen` run takes beyond the sum of these stages.

With `--rendered-pitch extract` (the round trip) it also reports, per snippet and overall, the
pitch extractor's contour against the known f0: voicing agreement, and the cents error on frames
both call voiced (median, mean absolute, share within 50 cents, share of octave errors).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from data_gen import constants as C


@dataclass
class StageClock:
    """CPU seconds per stage (process time) and wall seconds in total."""

    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def charge(self, stage: str, t0: float) -> float:
        now = time.process_time()
        self.cpu[stage] += now - t0
        return now

    def table(self, snippets: int) -> str:
        total = sum(self.cpu.values())
        lines = [f"{'stage':<34}{'CPU s':>9}{'share':>8}{'ms/snippet':>12}"]
        for stage, sec in sorted(self.cpu.items(), key=lambda kv: -kv[1]):
            lines.append(f"{stage:<34}{sec:>9.2f}{sec / total:>8.1%}{1000 * sec / max(snippets, 1):>12.0f}")
        lines.append(f"{'total':<34}{total:>9.2f}{1:>8.0%}{1000 * total / max(snippets, 1):>12.0f}")
        return "\n".join(lines)


def compare_contours(known, extracted) -> dict[str, float]:
    """A pitch extractor's track against the known f0 (both PitchTracks on the 10 ms grid)."""
    n = min(len(known), len(extracted))
    kv, ev = known.voiced[:n], extracted.voiced[:n]
    both = kv & ev
    cents = 1200.0 * np.log2(extracted.f0_hz[:n][both].astype(np.float64)
                             / known.f0_hz[:n][both].astype(np.float64))
    err = np.abs(cents)
    return {
        "frames": int(n),
        "known_voiced": int(kv.sum()),
        "voicing_agreement": float(np.mean(kv == ev)) if n else float("nan"),
        "voicing_recall": float(both.sum() / max(kv.sum(), 1)),
        "voicing_false_alarm": float((ev & ~kv).sum() / max((~kv).sum(), 1)),
        "both_voiced": int(both.sum()),
        "median_abs_cents": float(np.median(err)) if err.size else float("nan"),
        "mean_abs_cents": float(np.mean(err)) if err.size else float("nan"),
        "within_50_cents": float(np.mean(err <= 50.0)) if err.size else float("nan"),
        "octave_errors": float(np.mean(np.abs(np.abs(cents) - 1200.0) <= 100.0)) if err.size else float("nan"),
        "over_100_cents": float(np.mean(err > 100.0)) if err.size else float("nan"),
    }


def melody_agreement(track, notes, time_map, transpose: float) -> dict[str, float]:
    """How well a contour (PitchTrack on the performance's grid) sings the master's melody: for
    its voiced frames, the melody note sounding at the mapped master time (`notes`: (onset_s,
    offset_s, midi) in master seconds); share of frames within 50 cents of that note after removing
    the recorded transposition (`in_tune`), the same modulo octaves (`in_tune_any_octave`), and the
    share of voiced frames where the melody is silent (`voiced_over_silence`)."""
    notes = sorted(notes)
    on = np.array([n[0] for n in notes]); off = np.array([n[1] for n in notes])
    pitch = np.array([n[2] for n in notes], dtype=np.float64)
    frames = np.flatnonzero(track.voiced)
    t_master = np.asarray(time_map.to_master(frames / C.PITCH_FRAME_RATE), np.float64)
    idx = np.clip(np.searchsorted(on, t_master, side="right") - 1, 0, len(notes) - 1)
    sounding = (t_master >= on[idx]) & (t_master < off[idx])
    midi = 69.0 + 12.0 * np.log2(track.f0_hz[frames].astype(np.float64) / 440.0) - transpose
    d = (midi - pitch[idx])[sounding]
    return {
        "in_tune": float(np.mean(np.abs(d) <= 0.5)) if d.size else float("nan"),
        "in_tune_any_octave": float(np.mean(np.abs((d + 6.0) % 12.0 - 6.0) <= 0.5)) if d.size else float("nan"),
        "voiced_over_silence": float(1.0 - sounding.mean()) if frames.size else float("nan"),
    }


def run(args: argparse.Namespace) -> dict:
    t_start = time.monotonic()
    clock = StageClock()
    t = time.process_time()
    import tensorflow as tf  # noqa: F401 - the workers import it too (examples, TFRecords)

    from beam_pipelines.options import DatagenConfig
    from beam_pipelines.pairs import aligned_windows, make_example
    from beam_pipelines.sources import catalogue_snippets, sample_limit
    from beam_pipelines.synthesis import render_performance, synthesize_query
    from beam_pipelines.transforms import decode_master, seed_for, shared_extractor
    from beam_pipelines.outputs import write_tfrecords
    from data_gen.examples import to_tf_example
    from data_gen.synth import notes_from_midi

    t = clock.charge("imports (once per worker)", t)
    config = DatagenConfig(out_dir="", catalogue_dir=args.catalogue, performance_seconds=args.performance_seconds,
                           rendered_pitch=args.rendered_pitch, seed=args.seed)
    snippets = sample_limit(catalogue_snippets(args.catalogue, config.catalogue_performances), args.limit)
    perf_dev, q_dev = config.performance_deviations(), config.query_deviations(tempo=False)
    extractor = None
    if args.rendered_pitch == "extract":
        extractor = shared_extractor(config.extractor, config.pitch_stride)
        extractor.extract(np.zeros(C.SAMPLE_RATE, np.float32))  # trace the model once
        t = clock.charge("pitch model load (once per worker)", t)
    comparisons = []
    pooled: list[np.ndarray] = []
    records: list[bytes] = []
    audio_s = 0.0
    for s in snippets:
        t = time.process_time()
        spec = s.generator_spec
        perf = render_performance(spec["midi"], spec.get("kind", "sung"),
                                  seed_for(config.seed, s.snippet_id, "perform"), perf_dev)
        t = clock.charge("render performance (sung)", t)
        master = decode_master(s.master)
        t = clock.charge("decode master", t)
        audio_s += perf.audio.shape[0] / C.SAMPLE_RATE
        known = perf.known_pitch()
        t = clock.charge("known pitch track", t)
        track = known
        if extractor is not None:
            track = extractor.extract(perf.audio)
            t = clock.charge("pitch extraction (CREPE)", t)
            row = compare_contours(known, track)
            row["snippet_id"] = s.snippet_id
            melody = notes_from_midi(spec["midi"])
            for name, tr in (("known", known), ("extracted", track)):
                for k, v in melody_agreement(tr, melody, perf.time_map, perf.transpose).items():
                    row[f"{name}_{k}"] = v
            n = min(len(known), len(track))
            both = known.voiced[:n] & track.voiced[:n]
            pooled.append(1200.0 * np.log2(track.f0_hz[:n][both].astype(np.float64)
                                           / known.f0_hz[:n][both].astype(np.float64)))
            comparisons.append(row)
            t = time.process_time()
        renditions = [(perf.kind, perf.audio, np.asarray(track.voiced), perf.time_map, perf.transpose, "real")]
        for kind in config.kinds:
            q = synthesize_query(kind, track, seed_for(config.seed, s.snippet_id, kind), q_dev)
            renditions.append((kind, q.audio, q.voiced, perf.time_map.after(q.time_map),
                               perf.transpose + q.transpose, "synth"))
            t = clock.charge(f"synthesize {kind} (+ channel)", t)
        for kind, audio, voiced, tmap, transpose, origin in renditions:
            for item in aligned_windows(audio, master, tmap, voiced, hop_s=config.example_hop_s,
                                        min_voiced_fraction=config.min_voiced_fraction,
                                        max_windows=config.max_windows):
                if isinstance(item, float):
                    continue
                ex = make_example(melody_id=s.melody_id, split=s.split, source=s.source, kind=kind,
                                  snippet_id=s.snippet_id, pair=item, tempo_factor=tmap.tempo_factor,
                                  transpose=transpose, origin=origin)
                t = clock.charge("cut windows", t)
                records.append(to_tf_example(ex))
                t = clock.charge("serialize tf.Example", t)
    t = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        write_tfrecords(f"{tmp}/shard.tfrecord.gz", sorted(records))
    clock.charge("write GZIP TFRecords", t)
    out = {
        "snippets": len(snippets), "examples": len(records), "performance_seconds": round(audio_s, 1),
        "rendered_pitch": args.rendered_pitch, "wall_seconds": round(time.monotonic() - t_start, 1),
        "cpu_seconds": {k: round(v, 3) for k, v in clock.cpu.items()},
        "table": clock.table(len(snippets)),
    }
    if comparisons:
        keys = [k for k in comparisons[0] if k not in ("snippet_id", "frames", "known_voiced", "both_voiced")]
        out["contour_vs_known"] = {k: round(float(np.nanmean([c[k] for c in comparisons])), 4) for k in keys}
        out["contour_vs_known"]["snippets"] = len(comparisons)
        err = np.abs(np.concatenate(pooled))
        out["contour_vs_known_pooled_frames"] = {
            "frames": int(err.size), "median_abs_cents": round(float(np.median(err)), 2),
            "mean_abs_cents": round(float(np.mean(err)), 2),
            "within_50_cents": round(float(np.mean(err <= 50)), 4),
            "octave_errors": round(float(np.mean(np.abs(err - 1200) <= 100)), 4),
            "snippets_with_5pct_octave_errors": int(sum(c["octave_errors"] > 0.05 for c in comparisons)),
        }
        out["contour_vs_known_per_snippet"] = comparisons
    return out


def _floats(value: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in value.split(","))
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", required=True)
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--performance-seconds", type=_floats, default=(6.0, 8.0))
    p.add_argument("--rendered-pitch", choices=("known", "extract"), default="extract")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    out = run(args)
    print(out["table"])
    print(f"{out['snippets']} snippets, {out['examples']} examples, {out['performance_seconds']} s of "
          f"performances, wall {out['wall_seconds']} s")
    if "contour_vs_known" in out:
        print("pitch extractor vs known f0 (mean over snippets):",
              json.dumps(out["contour_vs_known"], sort_keys=True))
        print("pitch extractor vs known f0 (pooled frames):",
              json.dumps(out["contour_vs_known_pooled_frames"], sort_keys=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
