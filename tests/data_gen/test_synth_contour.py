"""Contours from notes and melody MIDI files (data_gen.synth.contour)."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.synth.contour import (
    Contour,
    SynthError,
    contour_from_notes,
    hz_to_midi,
    midi_to_hz,
    monophonic,
    note_segments,
    notes_from_midi,
)

NOTES = [(0.1, 0.5, 60.0), (0.5, 0.9, 62.0), (1.2, 1.6, 64.5)]


def write_midi(path, notes, program=0):
    import pretty_midi

    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=program)
    for onset, offset, pitch in notes:
        inst.notes.append(pretty_midi.Note(velocity=90, pitch=int(pitch), start=onset, end=offset))
    pm.instruments.append(inst)
    pm.write(str(path))
    return path


def test_contour_from_notes_pitch_voicing_and_gaps():
    c = contour_from_notes(NOTES, gap_s=0.05)
    rate = C.PITCH_FRAME_RATE
    assert c.n_frames == int(round((1.6 + 0.2) * rate))
    assert c.n_samples == c.n_frames * C.PITCH_HOP
    assert not c.voiced[: int(0.1 * rate)].any()
    # Middle of each note: voiced at the note's pitch (fractional pitches allowed).
    for onset, offset, pitch in NOTES:
        mid = int(round((onset + offset) / 2 * rate))
        assert c.voiced[mid]
        assert c.f0_hz[mid] == pytest.approx(float(midi_to_hz(pitch)), rel=1e-5)
    # Articulation gap before a note that follows immediately; unvoiced frames hold 0.
    assert not c.voiced[int(0.47 * rate)]
    assert c.f0_hz[int(0.47 * rate)] == 0.0
    assert not c.voiced[int(1.0 * rate) : int(1.2 * rate)].any()
    assert list(c.onsets) == [10, 50, 120]
    assert [s for s, _ in note_segments(c)] == [10, 50, 120]


def test_legato_glide_is_voiced_and_monotonic():
    c = contour_from_notes(NOTES[:2], glide_s=0.08)
    rate = C.PITCH_FRAME_RATE
    assert c.voiced[int(0.1 * rate) : int(0.9 * rate)].all()  # no gap at a legato boundary
    glide = hz_to_midi(c.f0_hz[int(0.44 * rate) : int(0.56 * rate)])
    assert np.all(np.diff(glide) >= -1e-6)
    assert glide[0] < 60.5 and glide[-1] > 61.5
    # Two notes inside one voiced run: the onsets keep them apart.
    assert len(note_segments(c)) == 2


def test_legato_flags_per_boundary():
    c = contour_from_notes(NOTES, glide_s=0.06, legato=[False, True])
    rate = C.PITCH_FRAME_RATE
    assert not c.voiced[int(0.48 * rate)]  # first boundary detached
    with pytest.raises(SynthError, match="legato"):
        contour_from_notes(NOTES, legato=[True])


def test_monophonic_cuts_overlaps_and_keeps_top_note():
    notes = [(0.0, 1.0, 60), (0.0, 1.0, 64), (0.5, 1.5, 62), (2.0, 1.0, 70)]
    assert monophonic(notes) == [(0.0, 0.5, 64.0), (0.5, 1.5, 62.0)]


def test_notes_from_midi_roundtrip(tmp_path):
    path = write_midi(tmp_path / "m.mid", [(0.5, 1.0, 60), (1.0, 1.5, 67), (0.5, 0.8, 55)])
    notes = notes_from_midi(path)
    assert [n[2] for n in notes] == [60.0, 67.0]
    assert notes[0][0] == pytest.approx(0.5, abs=1e-3)
    assert notes[1][1] == pytest.approx(1.5, abs=1e-3)


def test_notes_from_midi_errors(tmp_path):
    import pretty_midi

    empty = tmp_path / "empty.mid"
    pretty_midi.PrettyMIDI().write(str(empty))
    with pytest.raises(SynthError, match="no instruments"):
        notes_from_midi(empty)
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not a midi file")
    with pytest.raises(SynthError, match="cannot read"):
        notes_from_midi(bad)


def test_contour_validation_and_helpers():
    with pytest.raises(SynthError, match="frames"):
        Contour(np.ones(3), np.ones(4, bool))
    with pytest.raises(SynthError, match="positive"):
        Contour(np.zeros(3), np.ones(3, bool))
    with pytest.raises(SynthError, match="NaN"):
        Contour(np.array([np.nan, 1, 1]), np.ones(3, bool))
    tracked = Contour(np.array([np.nan, 220.0, np.nan]), np.array([0, 1, 0], bool))  # pyin-style
    assert list(tracked.f0_hz) == [0.0, 220.0, 0.0]
    c = Contour(np.array([0, 200, 0, 0, 400, 0], np.float32), np.array([0, 1, 0, 0, 1, 0], bool))
    filled = c.filled_f0()
    assert filled[0] == pytest.approx(200) and filled[-1] == pytest.approx(400)
    assert filled[2] == pytest.approx(200 * 2 ** (1 / 3), rel=1e-4)  # log-frequency interpolation
    assert c.transpose(12).median_hz() == pytest.approx(600.0)
    assert np.isnan(c.midi()[0]) and c.midi()[1] == pytest.approx(float(hz_to_midi(200.0)))
    # Without onsets, note segments come from voicing and pitch jumps.
    jump = Contour(np.array([200, 200, 300, 300], np.float32), np.ones(4, bool))
    assert note_segments(jump) == [(0, 2), (2, 4)]
    with pytest.raises(SynthError, match="no notes"):
        contour_from_notes([])
