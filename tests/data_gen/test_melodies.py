"""Corpus melodies: parsing and normalisation, splits, ordering, conversions to seconds/MIDI."""

from __future__ import annotations

import collections

import pretty_midi
import pytest

from data_gen import melodies as M


def _ref(path: str, number: int | None, collection: str, title: str = "t") -> M.MelodyRef:
    return M.MelodyRef(M._melody_id(collection, path, number), path, number, collection, title)


def _assert_normalised(m: M.Melody) -> None:
    starts = [n.start for n in m.notes]
    assert starts == sorted(starts)
    for a, b in zip(m.notes, m.notes[1:]):
        assert a.end <= b.start + 1e-9, "notes overlap"
    assert all(n.duration > 0 for n in m.notes), "zero-length (grace) notes kept"
    assert m.notes[-1].end <= m.length_beats + 1e-9


def test_essen_tune_parses_to_a_normalised_melody():
    m = M.load_melody(_ref("essenFolksong/erk30.abc", 3, "essenFolksong", "Ei was bin ich"))
    assert m.melody_id == "essen-erk30-3"
    assert m.source == "essenFolksong"
    assert m.time_signature == "6/8"
    assert len(m.notes) >= 12
    assert 48 <= min(n.pitch for n in m.notes) <= max(n.pitch for n in m.notes) <= 84
    _assert_normalised(m)
    assert m.notes[0].start == 0.0
    assert 60 <= m.bpm <= 150


def test_pickup_bar_is_detected():
    # "Fare You Well" (O'Neill's no. 2) starts with an eighth-note anacrusis in 2/4.
    m = M.load_melody(_ref("oneills1850/0001-0050.abc", 2, "oneills1850"))
    assert m.time_signature == "2/4"
    assert m.pickup_beats == pytest.approx(0.5)
    assert m.notes[0].start == 0.0
    # Downbeats are at pickup + k * bar: the second note (on the first downbeat) sits at 0.5.
    assert any(abs(n.start - 0.5) < 1e-9 for n in m.notes)
    _assert_normalised(m)


def test_chorale_melody_is_the_soprano():
    from music21 import corpus

    m = M.load_melody(_ref("bach/bwv101.7.mxl", None, "bach"))
    assert m.melody_id == "bach-bwv101.7"
    soprano = corpus.parse("bach/bwv101.7.mxl").parts[0]
    expected = [n.pitch.midi for n in soprano.stripTies().flatten().notes]
    assert [n.pitch for n in m.notes] == expected
    _assert_normalised(m)


def test_ties_grace_notes_and_double_stops_are_normalised():
    from music21 import chord, meter, note, stream, tie

    part = stream.Part()
    part.append(meter.TimeSignature("4/4"))
    a = note.Note("C4", quarterLength=1.0)
    a.tie = tie.Tie("start")
    b = note.Note("C4", quarterLength=1.0)
    b.tie = tie.Tie("stop")
    grace = note.Note("D4").getGrace()
    part.append([a, b, grace, chord.Chord(["E4", "G4"], quarterLength=1.0), note.Rest(quarterLength=1.0),
                 note.Note("A4", quarterLength=2.0)])
    m = M.melody_from_stream(part.makeMeasures(), melody_id="x", title="x", source="test")
    assert [(n.pitch, n.start, n.duration) for n in m.notes] == [
        (60, 0.0, 2.0),  # tied quarters merged
        (67, 2.0, 1.0),  # double stop -> top note; the grace note is gone
        (69, 4.0, 2.0),  # the rest stays a gap
    ]


def test_split_is_deterministic_and_80_10_10():
    ids = [f"essen-file{i // 100}-{i}" for i in range(20000)]
    counts = collections.Counter(M.split_of(i) for i in ids)
    assert abs(counts["train"] / len(ids) - 0.8) < 0.015
    assert abs(counts["validation"] / len(ids) - 0.1) < 0.01
    assert abs(counts["test"] / len(ids) - 0.1) < 0.01
    assert [M.split_of(i) for i in ids[:50]] == [M.split_of(i) for i in ids[:50]]
    # Pinned values: the split must never change across runs, machines or Python versions.
    assert M.split_of("essen-erk30-1") == "train"
    assert M.split_of("bach-bwv101.7") == "test"


@pytest.fixture(scope="module")
def refs():
    return M.list_melody_refs()


def test_listing_covers_the_collections_with_unique_ids(refs):
    ids = [r.melody_id for r in refs]
    assert len(ids) == len(set(ids)) > 12000
    by_collection = collections.Counter(r.collection for r in refs)
    assert set(by_collection) == set(M.COLLECTIONS)
    assert 350 <= by_collection["bach"] <= 400
    assert M.get_melody_ref("essen-erk30-3").number == 3


def test_iter_melodies_is_deterministic_per_seed_and_split(refs):
    first = [m.melody_id for m in M.iter_melodies("test", seed=1, limit=3)]
    again = [m.melody_id for m in M.iter_melodies("test", seed=1, limit=3)]
    assert first == again and len(first) == 3
    assert all(M.split_of(i) == "test" for i in first)
    other = [r.melody_id for r in M.iter_melody_refs("test", seed=2)][:3]
    assert other != [r.melody_id for r in M.iter_melody_refs("test", seed=1)][:3]
    excluded = list(M.iter_melody_refs("test", seed=1, exclude_melody_ids=first[:1]))
    assert first[0] not in {r.melody_id for r in excluded}


def _tiny() -> M.Melody:
    notes = tuple(M.Note(60 + i % 5, 0.5 + i * 1.0, 0.75) for i in range(12))
    return M.Melody("tiny", "Tiny", "test", notes, bpm=120.0, time_signature="4/4", pickup_beats=0.0,
                    length_beats=16.0)


def test_notes_in_seconds_and_midi_agree(tmp_path):
    m = _tiny()
    secs = M.melody_notes_seconds(m, 120.0, offset_seconds=1.0, transpose=2)
    assert secs[0] == pytest.approx((1.25, 1.625, 62))
    assert secs[1] == pytest.approx((1.75, 2.125, 63))
    path = tmp_path / "tiny.mid"
    M.melody_to_pretty_midi(m, 120.0, offset_seconds=1.0, transpose=2).write(str(path))
    back = pretty_midi.PrettyMIDI(str(path)).instruments[0].notes
    assert len(back) == len(secs)
    for n, (on, off, pitch) in zip(back, secs):
        assert (n.pitch, round(n.start, 4), round(n.end, 4)) == (pitch, round(on, 4), round(off, 4))


def test_too_small_tunes_are_refused():
    m = _tiny()
    with pytest.raises(M.MelodyError):
        M.check_usable(m, min_notes=13)
    with pytest.raises(M.MelodyError):
        M.check_usable(m, min_notes=12, min_seconds=10.0)
    M.check_usable(m, min_notes=12, min_seconds=5.0)
