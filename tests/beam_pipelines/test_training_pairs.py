"""End to end: `run_datagen` on a tiny MIR-1K-like folder holding a corrupt clip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from beam_pipelines.options import DatagenConfig
from beam_pipelines.training_pairs import run_datagen
from data_gen.melodies import split_of
from tests.beam_pipelines.conftest import CORRUPT_CLIP, IN_PROCESS


def read_examples(path: Path):
    import tensorflow as tf

    from data_gen.examples import from_tf_example

    return [from_tf_example(r.numpy()) for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_mir1k, extractor_name):
    """Two runs of the same input and seed; the second into the first's folder, which also holds a
    stale shard from an imaginary older run (a rerun must replace, never accumulate)."""
    root = tmp_path_factory.mktemp("datagen")
    out = root / "out"
    config = DatagenConfig(out_dir=str(out), mir1k_dir=str(tiny_mir1k), extractor=extractor_name, seed=7)
    first = run_datagen(config, IN_PROCESS)
    copy = root / "first"
    shutil.copytree(out, copy)
    stale = out / "train" / "pairs-00003-of-00009.tfrecord.gz"
    stale.write_bytes(b"stale")
    second = run_datagen(config, IN_PROCESS)
    return out, copy, first, second


def test_the_corrupt_clip_is_reported_and_the_rest_completes(two_runs):
    out, _, summary, _ = two_runs
    errors = [json.loads(line) for line in (out / "errors-00000-of-00001.jsonl").read_text().splitlines()]
    assert [e["snippet_id"] for e in errors] == [f"mir1k:{CORRUPT_CLIP[0]}"]
    assert errors[0]["stage"] == "decode" and "could not be decoded" in errors[0]["reason"]
    assert summary.errors == 1 and summary.counters["errors_decode"] == 1
    assert summary.counters["decoded"] == 3 and summary.counters["pitch_extracted"] == 3
    for kind in ("voice", "hum", "whistle", "tone"):
        assert summary.counters[f"synthesized_{kind}"] == 3
    total = sum(sum(k.values()) for k in summary.examples.values())
    assert total == summary.counters["examples_written"] >= 12
    saved = json.loads((out / "summary.json").read_text())
    assert saved["examples_total"] == total and saved["performance_seconds"] > 13


def test_splits_are_by_song_and_the_test_song_stays_in_test(two_runs):
    out = two_runs[0]
    seen = {}
    for split in ("train", "validation", "test"):
        shards = sorted((out / split).glob("pairs-*-of-*.tfrecord.gz"))
        assert shards, f"{split} has no shard files"
        for shard in shards:
            for ex in read_examples(shard):
                assert ex.split == split == split_of(ex.melody_id)
                seen.setdefault(ex.melody_id, set()).add((split, ex.query_kind))
    assert {s for s, _ in seen["song3"]} == {"test"}
    assert {s for s, _ in seen["alpha_1"]} == {"train"}
    assert {k for _, k in seen["song3"]} == {"voice", "hum", "whistle", "tone"}


def test_examples_hold_aligned_six_second_pairs(two_runs):
    from data_gen import constants as C

    out = two_runs[0]
    examples = [e for shard in sorted(out.glob("*/pairs-*.tfrecord.gz")) for e in read_examples(shard)]
    assert len({e.example_id for e in examples}) == len(examples)
    for e in examples:
        assert e.query_audio.shape == e.master_audio.shape == (C.EXAMPLE_SAMPLES,)
        assert e.source == "mir1k"
        if e.query_kind == "voice":
            # the real voice is on the master's timeline: same offsets, no tempo change
            assert e.tempo_factor == 1.0 and e.transpose == 0.0
            assert e.master_offset_s == pytest.approx(e.query_offset_s)
        else:
            assert 0.8 <= e.tempo_factor <= 1.25


def test_reruns_are_byte_identical_and_replace_old_outputs(two_runs):
    out, first, _, _ = two_runs
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file()) == files
    assert not (out / "train" / "pairs-00003-of-00009.tfrecord.gz").exists()
    assert not (out / ".staging").exists()
    for rel in files:
        if rel.name == "summary.json":
            continue  # holds the wall time
        assert (out / rel).read_bytes() == (first / rel).read_bytes(), rel


def test_catalogue_source_pairs_performances_with_the_right_master_window(tmp_path, extractor_name):
    """Hummed performances of a catalogue's melody MIDI (data_gen.synth.perform): frame by frame,
    the query sings the master's note (up to the recorded transposition) at the mapped time, and
    clearly less so when the mapping is shifted by a note and a half."""
    import numpy as np

    from beam_pipelines.transforms import shared_extractor
    from tests.beam_pipelines.conftest import make_tiny_melody_catalogue

    cat = make_tiny_melody_catalogue(tmp_path / "cat")
    config = DatagenConfig(out_dir=str(tmp_path / "out"), catalogue_dir=str(cat), extractor=extractor_name,
                           catalogue_performances=("hum",), kinds=("tone",), seed=3,
                           performance_seconds=(6.5, 8.0))
    summary = run_datagen(config, IN_PROCESS)
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors-00000-of-00001.jsonl").read_text().splitlines()]
    assert [(e["snippet_id"], e["stage"]) for e in errors] == [("catalogue:c3:hum", "decode")]
    examples = [e for shard in sorted((tmp_path / "out").glob("*/pairs-*.tfrecord.gz"))
                for e in read_examples(shard)]
    assert summary.counters["decoded"] == 2 and examples
    assert {e.split for e in examples if e.melody_id == "song3"} == {"test"}
    assert {e.query_kind for e in examples} == {"hum", "tone"}
    pitch = shared_extractor(extractor_name, config.pitch_stride)

    def agreement(e, q, m, shift_frames: int) -> float:
        frames = np.flatnonzero(q.voiced[:600])
        mf = np.rint(300 + (frames - 300) * e.tempo_factor).astype(int) + shift_frames
        keep = (mf >= 0) & (mf < m.voiced.size)
        frames, mf = frames[keep], mf[keep]
        both = m.voiced[mf]
        if both.sum() < 50:
            return float("nan")
        d = 12 * np.log2(q.f0_hz[frames[both]] / m.f0_hz[mf[both]]) - e.transpose
        return float(np.mean(np.abs((d + 6) % 12 - 6) < 1.0))

    aligned, shifted = [], []
    for e in examples[:6]:
        assert e.source == "catalogue"
        q, m = pitch.extract(e.query_audio), pitch.extract(e.master_audio)
        aligned.append(agreement(e, q, m, 0))
        shifted.append(agreement(e, q, m, 75))
    assert np.nanmean(aligned) > 0.75, aligned
    assert np.nanmean(shifted) < np.nanmean(aligned) - 0.3, (aligned, shifted)
