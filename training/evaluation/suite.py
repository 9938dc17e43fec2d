"""`earworm eval-suite`: the full results table for one model and both baselines.

Runs `earworm eval` on each benchmark set (building a missing set first, from ../shared/data), the
real recordings first (they are how a model is judged; the synthetic sets are regression checks):
- zalo:          20 real phone hums against the 20 real pop recordings they hum (zalo_mini), padded
                 with the 1,000 rendered masters of synthetic-1k; with the failure table (--explain);
- adc2004:       the 20 real polyphonic ADC2004 excerpts as masters, queried by hums, whistles and
                 tones synthesized from their annotated melody, padded the same way (+ CREPE's raw
                 pitch accuracy on the mixes);
- synthetic-1k:  test-split songs, synthetic hum/whistle/sung queries, 1,000-track catalogue
                 (+ the query-length sweep);
- synthetic-10k: the same queries against 10,000 tracks (index = the 1k index + 9,000 added tracks);
- mir1k-cross:   real MIR-1K singing against accompaniment + lead-instrument masters, padded with the
                 synthetic 1k tracks as distractors;
- openset:       real hums of songs in no catalogue, against the synthetic 1k catalogue; false
                 accepts at each system's own decision and at the threshold calibrated (the same way
                 for every system) on synthetic-1k's in-catalogue queries.
Writes OUT/<set>/ (metrics.json, report.md, plots) and OUT/suite.md (the combined table) +
OUT/suite.json. Baselines' per-master data and answers are cached in OUT/cache across sets and runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_gen import constants as C
from serving.vectors import STORE_DTYPES
from training.evaluation import benchsets
from training.evaluation.metrics import DEFAULT_TARGET_FAR
from training.evaluation.report import fmt, ms, pct, table

log = logging.getLogger(__name__)

REAL_SETS = ("zalo", "adc2004")
SETS = (*REAL_SETS, "synthetic-1k", "synthetic-10k", "mir1k-cross", "openset")
SUITE_MD = "suite.md"
SUITE_JSON = "suite.json"


@dataclass(frozen=True)
class SuiteConfig:
    model_dir: Path
    out_dir: Path
    bench_dir: Path | None = None
    """Benchmark sets folder (default ARTIFACTS/benchsets: synthetic/, mir1k-cross/, openset/)."""
    sets: tuple[str, ...] = SETS
    baselines: tuple[str, ...] = ("note_histogram", "melody_dtw")
    aggregations: tuple[str, ...] = ("temporal", "vote")
    crop_seconds: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    """Query-length sweep, on synthetic-1k only (its queries are 5-10 s: a crop needs a longer query)."""
    crop_baselines: bool = False
    """Also run the baselines on the crops (their pitch tracking costs ~1 s per clip on CPU)."""
    build_missing: bool = True
    limit: int | None = None
    indexer: str = "auto"
    """How indexes are built (see EvalConfig.indexer)."""
    target_far: float = DEFAULT_TARGET_FAR
    master_hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS
    """Master windows of the indexes the suite builds start this far apart (the hop trade-off:
    accuracy against index bytes; EvalConfig.master_hop_seconds)."""
    store_dtype: str = "float32"
    """The stored vectors of the indexes the suite builds (EvalConfig.store_dtype)."""

    def __post_init__(self) -> None:
        bad = [s for s in self.sets if s not in SETS]
        if bad:
            raise ValueError(f"unknown benchmark set(s) {', '.join(bad)}; choose from {', '.join(SETS)}")
        if not self.master_hop_seconds > 0:
            raise ValueError(f"master_hop_seconds must be > 0, got {self.master_hop_seconds}")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype must be one of {STORE_DTYPES}, got {self.store_dtype!r}")


def _bench(cfg: SuiteConfig) -> Path:
    return (cfg.bench_dir or benchsets.default_bench_dir()).resolve()


def _synthetic_manifest(cfg: SuiteConfig, tracks: int) -> Path:
    return benchsets.catalogue_dir(_bench(cfg) / "synthetic", tracks) / "manifest.csv"


def _synthetic(cfg: SuiteConfig, tracks: int) -> tuple[Path, Path]:
    root = _bench(cfg) / "synthetic"
    manifest = _synthetic_manifest(cfg, tracks)
    queries = root / "queries" / "queries.csv"
    if not (manifest.is_file() and queries.is_file()):
        if not cfg.build_missing:
            raise FileNotFoundError(f"{manifest} not built (run: earworm benchset synthetic --out {root} "
                                    f"--tracks {tracks})")
        benchsets.build_synthetic(root, benchsets.SyntheticConfig(tracks=tracks))
    return manifest, queries


def _mir1k(cfg: SuiteConfig) -> tuple[Path, Path]:
    root = _bench(cfg) / "mir1k-cross"
    manifest, queries = root / "catalogue" / "manifest.csv", root / "queries" / "queries.csv"
    if not (manifest.is_file() and queries.is_file()):
        if not cfg.build_missing:
            raise FileNotFoundError(f"{manifest} not built (run: earworm benchset mir1k-cross --out {root} "
                                    f"--distractors {_synthetic_manifest(cfg, 1000)})")
        distractors, _ = _synthetic(cfg, 1000)
        benchsets.build_mir1k_cross(root, distractors=distractors)
    return manifest, queries


def _real(cfg: SuiteConfig, name: str) -> tuple[Path, Path]:
    """zalo / adc2004, padded with the synthetic-1k masters (built when missing)."""
    root = _bench(cfg) / name
    manifest, queries = root / "catalogue" / "manifest.csv", root / "queries" / "queries.csv"
    if not (manifest.is_file() and queries.is_file()):
        if not cfg.build_missing:
            raise FileNotFoundError(f"{manifest} not built (run: earworm benchset {name} --out {root})")
        source = benchsets.default_source("zalo_mini" if name == "zalo" else name)
        if not source.is_dir():  # before rendering 1,000 distractors for nothing
            raise FileNotFoundError(f"the {name} recordings are not here ({source})")
        distractors = benchsets.rendered_distractors(_bench(cfg), benchsets.DEFAULT_DISTRACTORS)
        build = benchsets.build_zalo if name == "zalo" else benchsets.build_adc2004
        build(root, distractors=distractors)
    return manifest, queries


def _openset(cfg: SuiteConfig) -> Path:
    root = _bench(cfg) / "openset"
    queries = root / "queries.csv"
    if not queries.is_file():
        if not cfg.build_missing:
            raise FileNotFoundError(f"{queries} not built (run: earworm benchset openset --out {root})")
        benchsets.build_openset(root)
    return queries


def _eval(cfg: SuiteConfig, name: str, catalogue: Path, queries: Path, **kw: Any) -> dict[str, Any]:
    from training.evaluation.runner import EvalConfig, evaluate

    log.info("eval-suite: %s", name)
    ecfg = EvalConfig(catalogue=catalogue, queries=queries, out_dir=cfg.out_dir / name, model_dir=cfg.model_dir,
                      baselines=cfg.baselines, aggregations=cfg.aggregations, cache_dir=cfg.out_dir / "cache",
                      limit=cfg.limit, target_far=cfg.target_far, indexer=cfg.indexer,
                      master_hop_seconds=cfg.master_hop_seconds, store_dtype=cfg.store_dtype, **kw)
    return evaluate(ecfg)


def _index_of(cfg: SuiteConfig, name: str) -> Path | None:
    """The index an earlier set of this run (or an earlier run into the same OUT) built, when it was
    built the way this run builds: the same master hop and stored vectors (else None: built anew)."""
    from serving.index import IndexMetadata

    p = cfg.out_dir / name / "index"
    try:
        meta = IndexMetadata.from_json(json.loads((p / "metadata.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    store = meta.config.get("searcher", {}).get("store_dtype", "float32")
    if abs(meta.master_hop_seconds - cfg.master_hop_seconds) > 1e-9 or store != cfg.store_dtype:
        log.info("eval-suite: not reusing %s (master hop %g s, %s store; this run: %g s, %s)", p,
                 meta.master_hop_seconds, store, cfg.master_hop_seconds, cfg.store_dtype)
        return None
    return p


def run_suite(cfg: SuiteConfig) -> str:
    """Run every set; returns the combined markdown table (also written to OUT/suite.md)."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    reports: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name in REAL_SETS:
        if name in cfg.sets:
            try:
                cat, queries = _real(cfg, name)
            except FileNotFoundError as e:
                skipped[name] = str(e)
                log.warning("eval-suite: skipping %s: %s", name, e)
                continue
            # the distractors' windows come from synthetic-1k's index when an earlier run left one
            reports[name] = _eval(cfg, name, cat, queries, base_index=_index_of(cfg, "synthetic-1k"),
                                  explain=True)
    need_1k = any(s in cfg.sets for s in ("synthetic-1k", "synthetic-10k", "mir1k-cross", "openset"))
    if need_1k:
        cat1k, queries = _synthetic(cfg, 1000)
        if "synthetic-1k" in cfg.sets or "openset" in cfg.sets:
            reports["synthetic-1k"] = _eval(cfg, "synthetic-1k", cat1k, queries, crop_seconds=cfg.crop_seconds,
                                            crop_baselines=cfg.crop_baselines)
    if "synthetic-10k" in cfg.sets:
        try:
            cat10k, queries = _synthetic(cfg, 10000)
        except benchsets.BenchsetBusyError as e:
            skipped["synthetic-10k"] = str(e)
            log.warning("eval-suite: skipping synthetic-10k: %s", e)
        else:
            reports["synthetic-10k"] = _eval(cfg, "synthetic-10k", cat10k, queries,
                                             base_index=_index_of(cfg, "synthetic-1k"))
    if "mir1k-cross" in cfg.sets:
        cat, queries = _mir1k(cfg)
        reports["mir1k-cross"] = _eval(cfg, "mir1k-cross", cat, queries, base_index=_index_of(cfg, "synthetic-1k"))
    if "openset" in cfg.sets:
        queries = _openset(cfg)
        reports["openset"] = _eval(cfg, "openset", cat1k, queries, index_dir=_index_of(cfg, "synthetic-1k"),
                                   thresholds_from=cfg.out_dir / "synthetic-1k" / "metrics.json")
    reports = {k: reports[k] for k in SETS if k in reports and (k in cfg.sets)}
    text = suite_markdown(reports, cfg, time.time() - started, skipped)
    (cfg.out_dir / SUITE_MD).write_text(text)
    (cfg.out_dir / SUITE_JSON).write_text(json.dumps(
        {name: {"catalogue": r["catalogue"], "queries": r["queries"], "query_set": r["query_set"],
                "model": r.get("model"), "index": r.get("index"),
                "systems": {s: v["full"] for s, v in r["systems"].items()}} for name, r in reports.items()},
        indent=2) + "\n")
    return text


def _real_notes(reports: dict[str, dict[str, Any]], cfg: SuiteConfig) -> list[str]:
    """The melody gate's stops per set, CREPE on the ADC2004 mixes, and the zalo failure table."""
    lines = []
    gated = {name: s["full"].get("no_melody", 0) for name, r in reports.items()
             for sname, s in r["systems"].items() if sname.startswith("earworm-")}
    if any(gated.values()):
        lines += ["Queries the melody gate answered \"no melody\" (never searched; counted as misses): "
                  + ", ".join(f"{k} {v}" for k, v in gated.items()) + ".", ""]
    info = _bench(cfg) / "adc2004" / "benchset.json"
    if "adc2004" in reports and info.is_file():
        pitch = (json.loads(info.read_text()).get("pitch_on_mix") or {}).get("overall")
        if pitch:
            lines += [f"CREPE tiny on the ADC2004 *mixes* against the annotated melody: raw pitch accuracy "
                      f"{pct(pitch.get('raw_pitch_accuracy'))}, raw chroma accuracy "
                      f"{pct(pitch.get('raw_chroma_accuracy'))}, voicing recall {pct(pitch.get('voicing_recall'))}, "
                      f"voicing false alarm {pct(pitch.get('voicing_false_alarm'))} (how far pitch tracking "
                      "is from usable on full mixes).", ""]
    failures = cfg.out_dir / "zalo" / "failures.md"
    if "zalo" in reports and failures.is_file():
        lines += [failures.read_text().replace("## Failure table", "### zalo failure table"), ""]
    return lines


def _crop_n(report: dict[str, Any], crop: str) -> int:
    """In-catalogue queries long enough for this crop (the same for every system that ran on it)."""
    return max((s[crop]["in_catalogue"].get("n", 0) for s in report["systems"].values() if crop in s), default=0)


def suite_markdown(reports: dict[str, dict[str, Any]], cfg: SuiteConfig, elapsed_s: float,
                   skipped: dict[str, str] | None = None) -> str:
    rows = []
    for set_name, r in reports.items():
        qs = r["query_set"]
        for system, s in r["systems"].items():
            full = s["full"]
            ins, ops, lat = full["in_catalogue"], full["open_set"], full["latency"]
            accepted = full.get("calibration", {}).get("accepted_top1_at_threshold")
            openset_only = not ins.get("n")
            rows.append([
                set_name, f"{qs['num_tracks']:,}", f"`{system}`",
                str(ops.get("n", 0) if openset_only else ins.get("n", 0)),
                "–" if openset_only else fmt(ins.get("mrr@10")),
                "–" if openset_only else pct(ins.get("hit@1")),
                "–" if openset_only else pct(ins.get("hit@5")),
                "–" if openset_only else pct(ins.get("hit@10")),
                "–" if openset_only else pct(accepted),
                (pct(ops.get("false_accept_rate")) + " / " + pct(ops.get("false_accept_rate_at_threshold")))
                if ops.get("n") else "–",
                f"{ms(lat.get('p50_ms'))} / {ms(lat.get('p95_ms'))}",
            ])
    header = ["benchmark", "tracks", "system", "queries", "MRR@10", "top-1", "top-5", "top-10",
              "top-1 accepted (calibrated)", "false accepts (own / calibrated)", "latency p50 / p95"]
    model = next((r.get("model") for r in reports.values() if r.get("model")), None)
    lines = ["# Earworm retrieval benchmarks", ""]
    if model:
        lines.append(f"Model `{model['version']}`; {time.strftime('%Y-%m-%d', time.gmtime())}; "
                     f"suite took {elapsed_s / 60:.0f} min on this machine (CPU); indexes built with "
                     f"master windows every {cfg.master_hop_seconds:g} s, {cfg.store_dtype} vectors.")
        lines.append("")
    lines += [table(header, rows), ""]
    for name, why in (skipped or {}).items():
        lines += [f"*{name}: not run — {why}.*", ""]
    sweep = reports.get("synthetic-1k")
    if sweep and cfg.crop_seconds:
        crops = sorted({k for s in sweep["systems"].values() for k in s if k.startswith("crop_")},
                       key=lambda k: float(k[len("crop_"):-1]))
        lines += ["MRR@10 against query length (synthetic-1k, each query cropped at a random start):", "",
                  table(["system", *(f'{c[len("crop_"):]} (n={_crop_n(sweep, c)})' for c in crops), "full (5-10 s)"],
                        [[f"`{n}`", *(fmt(s[c]["in_catalogue"].get("mrr@10")) if c in s else "–" for c in crops),
                          fmt(s["full"]["in_catalogue"].get("mrr@10"))] for n, s in sweep["systems"].items()]),
                  ""]
    lines += _real_notes(reports, cfg)
    lines += [
        "- *zalo*: 20 real phone hums (Vietnamese pop, Zalo AI 2021) against the ~12 s excerpts of the real "
        "commercial recordings they hum (vocals and full production), padded with 1,000 rendered masters. "
        "*adc2004*: the 20 real ADC2004 excerpts (pop, jazz, opera, synthesized voice, MIDI) as masters, "
        "queried by hums, whistles and tones synthesized from their annotated melody at other keys and "
        "tempi, padded the same way. These real sets are how a model is judged; the synthetic ones below "
        "are regression checks.",
        "- *synthetic-1k / 10k*: held-out (test-split) folk and chorale melodies rendered as polyphonic "
        "masters; queries are synthetic hums, whistles and sung snippets (5-10 s, anywhere in the song, "
        "other key and tempo, human-like deviations); the rest of the catalogue are distractor masters.",
        "- *mir1k-cross*: real amateur singing (MIR-1K voice channel, 5-8 s) against masters made of the "
        "real accompaniment plus a GM lead instrument playing the labelled melody, time-stretched by "
        "2-6 %; padded with the synthetic 1k masters. Only the MIR-1K songs of the test split "
        f"({reports['mir1k-cross']['query_set']['num_tracks'] - 1000 if 'mir1k-cross' in reports else '–'} "
        "songs): a small set, read it with care.",
        "- *openset*: real hums of 6 songs that are in no catalogue, against the synthetic 1k catalogue; "
        "every answer that is not \"no match\" is a false accept. *own*: the system's own decision (the "
        "model's calibrated/default no-match threshold; the baselines never say no match). *calibrated*: "
        f"the same rule for every system — the score the best wrong track exceeds on only "
        f"{cfg.target_far:.0%} of synthetic-1k's in-catalogue queries. *top-1 accepted (calibrated)*: "
        "in-catalogue queries whose top answer is right and clears that set's own calibrated threshold "
        "(the other side of the trade-off).",
        "- `note_histogram`: 128-bin note histogram of the query's pitch track vs the master audio's "
        "(the popular vector-DB hum-search demo). `melody_dtw`: classic query-by-humming, subsequence DTW "
        "of the key-normalised pitch contour against each master's *true melody MIDI* — a privilege the "
        "learned model, which only hears the polyphonic master, does not have; on zalo (no melody MIDI) "
        "against each master's predominant pitch tracked from the mix, the classic audio QbH system.",
        "- Latency: per query on this machine's CPU (2 shared cores), audio decoding excluded; "
        "model = melody check + embed + search + aggregate; baselines = pitch tracking + matching.",
    ]
    return "\n".join(lines) + "\n"
