"""MIR-1K label parsing and time alignment on a real clip; the `earworm pitch bench` command."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from data_gen import cli_pitch
from data_gen import constants as C
from data_gen import pitch
from data_gen.audio import load_audio
from data_gen.pitch import benchmark as B

CLIP = "Ani_1_01"


def _earworm_pitch(argv: list[str]) -> int:
    """Run `earworm pitch ...` through this command module only (other commands are not needed)."""
    parser = argparse.ArgumentParser(prog="earworm")
    cli_pitch.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def mir1k_dir(shared_data_dir):
    d = shared_data_dir / "mir1k"
    if not (d / "pitch" / f"{CLIP}.pv").is_file():
        pytest.skip(f"MIR-1K clip {CLIP} not found under {d}")
    return d


def test_labels_parse_and_line_up_with_the_audio(mir1k_dir):
    labels = B.read_mir1k_labels(mir1k_dir / "pitch" / f"{CLIP}.pv")
    audio = load_audio(mir1k_dir / "audio" / f"{CLIP}.voice.ogg", reject_silence=False)
    seconds = audio.size / C.SAMPLE_RATE
    assert labels.ndim == 1 and labels.size > 100
    voiced = labels[labels > 0]
    assert voiced.size > 0.3 * labels.size and np.all((voiced > 30) & (voiced < 90))  # sung MIDI range
    times = B.mir1k_label_times(labels.size)
    assert times[0] == pytest.approx(0.02) and np.allclose(np.diff(times), 0.02)
    assert seconds - 0.04 < times[-1] <= seconds  # one label per 20 ms hop, to the end of the clip


def test_label_times_fall_on_track_frames_2j_plus_2():
    track = pitch.PitchTrack(100.0 + np.arange(50), np.ones(50), np.ones(50, bool))
    picked = track.at_times(B.mir1k_label_times(10))
    np.testing.assert_allclose(picked.f0_hz, 100.0 + 2 * np.arange(10) + 2)


def test_a_track_built_from_the_labels_scores_perfectly(mir1k_dir):
    labels = B.read_mir1k_labels(mir1k_dir / "pitch" / f"{CLIP}.pv")
    frames = 2 * labels.size + 3
    hz = np.full(frames, 100.0)
    voiced = np.zeros(frames, bool)
    hz[2::2][: labels.size] = np.where(labels > 0, pitch.midi_to_hz(labels), 100.0)
    voiced[2::2][: labels.size] = labels > 0
    scores = B.score_against_labels(pitch.PitchTrack(hz, np.ones(frames), voiced), labels).scores()
    assert scores.raw_pitch_accuracy == 1.0 and scores.overall_accuracy == 1.0
    assert scores.voicing_false_alarm == 0.0
    # Shifted by one label frame (20 ms) the same track is no longer perfect.
    shifted = B.score_against_labels(pitch.PitchTrack(np.roll(hz, 2), np.ones(frames), np.roll(voiced, 2)), labels)
    assert shifted.scores().overall_accuracy < 0.99


def test_clip_listing_and_even_subset(mir1k_dir):
    clips = B.list_mir1k_clips(mir1k_dir)
    subset = B.list_mir1k_clips(mir1k_dir, limit=5)
    assert len(subset) == 5 and subset[0] == clips[0] and subset[-1] == clips[-1]
    assert len({c.clip_id.split("_")[0] for c in subset}) > 1  # spread over singers
    with pytest.raises(FileNotFoundError, match="no MIR-1K clips"):
        B.list_mir1k_clips(mir1k_dir / "nope")


def test_bench_command_json_and_unavailable_backend(mir1k_dir, crepe_weights, capsys, monkeypatch):
    monkeypatch.delenv("EARWORM_SPICE_MODEL", raising=False)
    code = _earworm_pitch(
        ["pitch", "bench", "--data", str(mir1k_dir), "--limit", "1", "--backends", "crepe,spice",
         "--crepe-weights", str(crepe_weights), "--json", "--no-progress"]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    crepe, spice = payload["results"]
    assert crepe["available"] and crepe["clips"] == 1 and crepe["raw_pitch_accuracy"] > 0.8
    assert crepe["audio_seconds_per_second"] > 0
    assert not spice["available"] and "no SPICE model" in spice["reason"]


def test_bench_table_lists_unavailable_backends(mir1k_dir, capsys, monkeypatch):
    monkeypatch.delenv("EARWORM_SPICE_MODEL", raising=False)
    code = _earworm_pitch(["pitch", "bench", "--data", str(mir1k_dir), "--limit", "1", "--backends", "spice"])
    assert code == 1  # nothing could run
    out = capsys.readouterr().out
    assert re.search(r"^spice\s+unavailable \(no SPICE model is available offline", out, re.M), out
