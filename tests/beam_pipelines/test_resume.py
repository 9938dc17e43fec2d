"""Resumable datagen (beam_pipelines.resume): a rerun skips the shards done, a shard left half
written is redone, and a run with other arguments is never mixed with the old shards.

Rendered catalogue snippets with their known pitch (no pitch model), one snippet per shard, the
in-process runner: a few seconds per run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from beam_pipelines.options import DatagenConfig
from beam_pipelines.resume import DatagenStateError
from beam_pipelines.training_pairs import run_datagen
from tests.beam_pipelines.conftest import IN_PROCESS, make_tiny_melody_catalogue


def config_for(cat: Path, out: Path, **kw) -> DatagenConfig:
    base = dict(out_dir=str(out), catalogue_dir=str(cat), catalogue_performances=("hum",), kinds=("tone",),
                seed=5, performance_seconds=(6.5, 8.0), rendered_pitch="known", snippets_per_shard=1)
    return DatagenConfig(**{**base, **kw})


def output_files(root: Path) -> dict[str, bytes]:
    """Every file datagen leaves in OUT except the summary (it holds the wall time) and the lock."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("summary.json", "lock")}


def shard_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/pairs-*.tfrecord.gz"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cat = make_tiny_melody_catalogue(root / "cat")
    out = root / "out"
    summary = run_datagen(config_for(cat, out), IN_PROCESS)
    return cat, out, summary, output_files(out)


def test_a_fresh_run_writes_every_shard_with_a_marker(first_run):
    _, out, summary, files = first_run
    # c1 (alpha_1) is train, c2 (song3) and c3 (song4, corrupt master) test; validation: one empty shard
    assert summary.shards == {"train": 1, "validation": 1, "test": 2}
    assert summary.shards_written == 4 and summary.shards_skipped == 0
    assert summary.counters["pitch_known"] == 2 and "pitch_extracted" not in summary.counters
    markers = sorted(p.name for p in (out / ".datagen" / "done").iterdir())
    assert markers == ["test-00000.json", "test-00001.json", "train-00000.json", "validation-00000.json"]
    state = json.loads((out / ".datagen" / "state.json").read_text())
    assert state["config"]["rendered_pitch"] == "known" and "out_dir" not in state["config"]
    errors = [json.loads(x) for x in (out / "errors-00000-of-00001.jsonl").read_text().splitlines()]
    assert [(e["snippet_id"], e["stage"]) for e in errors] == [("catalogue:c3:hum", "decode")]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_a_rerun_skips_every_done_shard_and_changes_nothing(first_run, tmp_path):
    cat, out, summary, files = first_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    mtimes = {p: p.stat().st_mtime_ns for p in shard_files(copy)}
    again = run_datagen(config_for(cat, copy), IN_PROCESS)
    assert again.shards_written == 0 and again.shards_skipped == 4
    assert again.counters == {}  # no pipeline ran
    assert {p: p.stat().st_mtime_ns for p in shard_files(copy)} == mtimes
    assert output_files(copy) == files
    assert again.examples == summary.examples and again.errors == summary.errors == 1


def test_a_killed_shard_is_redone_and_the_result_matches_an_uninterrupted_run(first_run, tmp_path):
    cat, out, summary, files = first_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    train = copy / "train" / "pairs-00000-of-00001.tfrecord.gz"
    # killed while writing the train shard: a temp file, no shard, no marker
    (copy / "train" / ".pairs-00000-of-00001.tfrecord.gz.tmp-deadbeef").write_bytes(b"half a shard")
    train.unlink()
    (copy / ".datagen" / "done" / "train-00000.json").unlink()
    # killed between the test shard's rename and its marker: the shard counts as not done
    (copy / ".datagen" / "done" / "test-00000.json").unlink()
    # a torn marker file of another kill
    (copy / ".datagen" / "done" / ".validation-00000.json.tmp-0123").write_text("{")
    again = run_datagen(config_for(cat, copy), IN_PROCESS)
    assert again.shards_written == 2 and again.shards_skipped == 2
    assert not [p for p in copy.rglob("*") if ".tmp-" in p.name]
    assert output_files(copy) == files


def test_changed_arguments_are_refused_and_restart_redoes_everything(first_run, tmp_path):
    cat, out, _, files = first_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    changed = config_for(cat, copy, seed=6)
    with pytest.raises(DatagenStateError, match=r"seed: 5 -> 6.*--restart"):
        run_datagen(changed, IN_PROCESS)
    assert output_files(copy) == files  # untouched
    redone = run_datagen(changed, IN_PROCESS, restart=True)
    assert redone.shards_written == 4 and redone.shards_skipped == 0
    fresh = tmp_path / "fresh"
    run_datagen(config_for(cat, fresh, seed=6), IN_PROCESS)
    assert output_files(copy) == output_files(fresh)
    assert output_files(copy) != files


def test_changed_inputs_are_refused(first_run, tmp_path):
    import os

    cat, out, _, _ = first_run
    copy_cat, copy_out = tmp_path / "cat", tmp_path / "out"
    shutil.copytree(cat, copy_cat)
    shutil.copytree(out, copy_out)
    # the snippets name the copied catalogue's files: different paths, so a different run
    with pytest.raises(DatagenStateError, match="snippets|input files"):
        run_datagen(config_for(copy_cat, copy_out), IN_PROCESS)
    # same paths, a re-rendered melody file (new size and time): also refused
    fresh_out = tmp_path / "out2"
    run_datagen(config_for(copy_cat, fresh_out), IN_PROCESS)
    midi = copy_cat / "midi" / "c1.mid"
    midi.write_bytes(midi.read_bytes() + b"\0")
    os.utime(midi, ns=(1, 1))
    with pytest.raises(DatagenStateError, match="input files"):
        run_datagen(config_for(copy_cat, fresh_out), IN_PROCESS)


def test_outputs_of_an_older_datagen_are_not_mixed_in(first_run, tmp_path):
    cat, _, _, _ = first_run
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "pairs-00000-of-00004.tfrecord.gz").write_bytes(b"old")
    with pytest.raises(DatagenStateError, match="older datagen"):
        run_datagen(config_for(cat, out), IN_PROCESS)


def test_the_cli_default_output_lives_under_earworm_artifacts(first_run, tmp_path, monkeypatch):
    import argparse

    from beam_pipelines.cli import register

    cat = first_run[0]
    monkeypatch.setenv("EARWORM_ARTIFACTS", str(tmp_path / "cache"))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["datagen", "--catalogue", str(cat), "--performances", "hum", "--kinds", "tone",
                              "--seed", "5", "--performance-seconds", "6.5,8", "--snippets-per-shard", "1",
                              *IN_PROCESS])
    assert args.func(args) == 0
    out = tmp_path / "cache" / "training_data" / "cat"
    assert (out / ".datagen" / "state.json").is_file() and shard_files(out)
    assert args.func(args) == 0  # the rerun continues there (nothing left to do)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards_written"] == 0 and summary["shards_skipped"] == 4
