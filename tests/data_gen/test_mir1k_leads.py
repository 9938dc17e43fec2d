"""MIR-1K lead tracks: the melody of the pitch labels on an instrument, aligned with the clip."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from beam_pipelines.sources import mir1k_snippets
from data_gen import constants as C
from data_gen.audio import load_audio
from serving.apps.earworm import main as earworm
from data_gen.mir1k_leads import LeadConfig, LeadError, lead_path, read_pitch_labels, render_mir1k_leads
from data_gen.pitch.pyin import PyinExtractor
from tests.training.evaluation.test_benchsets import CLIP_PITCHES, make_fake_mir1k


@pytest.fixture(scope="module")
def fake_mir1k(tmp_path_factory):
    from data_gen.render import find_soundfont

    try:
        find_soundfont()
    except FileNotFoundError as e:
        pytest.skip(f"no General-MIDI soundfont ({e}); scripts/setup.sh installs fluid-soundfont-gm")
    return make_fake_mir1k(tmp_path_factory.mktemp("mir1k"))


def test_lead_plays_the_labelled_melody_in_time_with_the_clip(fake_mir1k, tmp_path):
    report = render_mir1k_leads(fake_mir1k, tmp_path / "leads", progress=False)
    assert (report.rendered, report.reused, report.errors) == (2, 0, [])
    for clip, pitches in CLIP_PITCHES.items():
        lead = load_audio(lead_path(tmp_path / "leads", clip), reject_silence=False)
        accomp = load_audio(fake_mir1k / "audio" / f"{clip}.accompaniment.ogg", reject_silence=False)
        assert lead.size == accomp.size  # sample-aligned: the pipeline sums lead + accompaniment
        assert np.max(np.abs(lead + accomp)) <= 1.0
        # the lead's pitch follows the labels (up to octave: GM instruments differ in register)
        track = PyinExtractor().extract(lead)
        labels = read_pitch_labels(fake_mir1k / "pitch" / f"{clip}.pv")
        times = np.arange(track.f0_hz.size) * C.PITCH_HOP_SECONDS
        label_at = np.interp(times, 0.02 + 0.02 * np.arange(labels.size), labels)
        both = track.voiced & (label_at > 0)
        assert both.sum() > 100
        diff = (12 * np.log2(track.f0_hz[both] / 440.0) + 69 - label_at[both] + 6) % 12 - 6
        assert np.mean(np.abs(diff) < 1.0) > 0.7
    rows = list(csv.DictReader((tmp_path / "leads" / "leads.csv").open()))
    assert [r["status"] for r in rows] == ["rendered", "rendered"]
    assert all(int(r["program"]) in LeadConfig().programs for r in rows)


def test_rerun_reuses_and_a_broken_clip_is_reported_not_fatal(fake_mir1k, tmp_path):
    source = tmp_path / "mir1k"
    shutil.copytree(fake_mir1k, source)
    (source / "pitch" / "fake_1_02.pv").write_text("not a number\n")
    out = tmp_path / "leads"
    first = render_mir1k_leads(source, out, progress=False)
    assert first.rendered == 1 and [c for c, _ in first.errors] == ["fake_1_02"]
    assert "pitch labels" in first.errors[0][1]
    again = render_mir1k_leads(source, out, progress=False)
    assert again.reused == 1 and again.rendered == 0 and len(again.errors) == 1


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(LeadError, match="manifest not found"):
        render_mir1k_leads(tmp_path, tmp_path / "out", progress=False)


def test_cli_and_datagen_source_use_lead_plus_accompaniment(fake_mir1k, tmp_path, capsys):
    out = tmp_path / "leads"
    assert earworm(["mir1k-leads", "--source", str(fake_mir1k), "--out", str(out),
                    "--splits", "train,validation,test", "--no-progress"]) == 0
    assert "2 rendered" in capsys.readouterr().out
    snippets = mir1k_snippets(fake_mir1k, leads_dir=out)
    assert [s.master for s in snippets] == [
        (str(out / f"{c}.lead.ogg"), str(fake_mir1k / "audio" / f"{c}.accompaniment.ogg")) for c in CLIP_PITCHES]
    assert all(s.performance.endswith(".voice.ogg") for s in snippets)
    assert earworm(["mir1k-leads", "--out", str(out), "--splits", "nope"]) == 2
