"""Arranging and rendering masters: polyphony, level, length, determinism, melody timing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pretty_midi
import pytest

from data_gen import arrangement as A
from data_gen import arrangement_styles
from data_gen import constants as C
from data_gen import render as R
from data_gen.band_names import band_name
from data_gen.melodies import Melody, Note, melody_notes_seconds


def _tune(n_notes: int = 16, pickup: float = 0.0, ts: str = "4/4", bpm: float = 100.0) -> Melody:
    """A small C-major tune in quarter notes: C E G E F D B C ..."""
    steps = [0, 4, 7, 4, 5, 2, -1, 0]
    notes = tuple(Note(60 + steps[i % 8], i * 1.0, 1.0) for i in range(n_notes))
    return Melody("test-tune", "Test Tune", "test", notes, bpm=bpm, time_signature=ts,
                  pickup_beats=pickup, length_beats=float(n_notes))


def _soundfont_or_skip():
    try:
        return R.find_soundfont()
    except R.SoundfontNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def master() -> R.RenderedMaster:
    _soundfont_or_skip()
    return R.render_master(_tune(), seed=3, style="pop_band")


def _sounding_instruments(pm: pretty_midi.PrettyMIDI, t: float) -> int:
    return sum(any(n.start <= t < n.end for n in inst.notes) for inst in pm.instruments)


def _below_melody_share(audio: np.ndarray, arr: A.Arrangement) -> float:
    """Share of the spectral energy lying a few semitones below the lowest melody note sounding
    at the time: a melody alone has (almost) none there, a band's bass and chords a lot."""
    hop, n_fft = 512, 4096
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [frames, bins]
    freqs = np.fft.rfftfreq(n_fft, 1.0 / C.SAMPLE_RATE)
    spb = arr.seconds_per_beat
    below = total = 0.0
    for n in arr.lead.notes:
        f0 = int((n.start * spb * C.SAMPLE_RATE) / hop) + 2
        f1 = int((n.end * spb * C.SAMPLE_RATE - n_fft) / hop)
        if f1 <= f0:
            continue
        limit = 440.0 * 2 ** ((n.pitch - 3 - 69) / 12)  # three semitones under the melody note
        band = power[f0:f1]
        below += band[:, (freqs > 30) & (freqs < limit)].sum()
        total += band[:, freqs > 30].sum()
    return float(below / total)


def test_master_is_polyphonic(master):
    full = master.midi_full
    assert len(full.instruments) >= 3
    times = np.arange(0.0, master.duration_seconds - 2.0, 0.25)
    multi = np.mean([_sounding_instruments(full, t) >= 2 for t in times])
    assert multi > 0.6, "instruments rarely overlap"
    # The audio itself is not one line: much of its energy lies under the melody's pitch
    # (bass, chords), unlike in a render of the lead alone.
    arr = master.arrangement
    solo = dataclasses.replace(arr, parts=tuple(
        p if p.role == "lead" else dataclasses.replace(p, notes=()) for p in arr.parts))
    solo_audio, _ = R.synthesize(solo)
    assert _below_melody_share(solo_audio, arr) < 0.005
    assert _below_melody_share(master.audio, arr) > 0.03


def test_master_level_length_and_format(master):
    audio = master.audio
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert master.sample_rate == C.SAMPLE_RATE
    assert 20.0 <= master.duration_seconds <= 40.0
    assert np.max(np.abs(audio)) == pytest.approx(10 ** (-1 / 20), abs=1e-3)
    # Sound all along: no 2-second window is (near) silent, the rendering is not just a tail.
    win = 2 * C.SAMPLE_RATE
    rms = [np.sqrt(np.mean(audio[i:i + win] ** 2)) for i in range(0, audio.size - win, win)]
    assert min(rms) > 10 * C.SILENCE_RMS


def test_render_is_deterministic_for_a_seed(master):
    again = R.render_master(_tune(), seed=3, style="pop_band")
    assert np.array_equal(master.audio, again.audio)
    other = R.render_master(_tune(), seed=4, style="pop_band")
    assert other.audio.shape != master.audio.shape or not np.array_equal(other.audio, master.audio)


def test_melody_midi_is_timed_like_the_master(master, tmp_path):
    arr = master.arrangement
    path = tmp_path / "melody.mid"
    master.midi_melody.write(str(path))
    melody = pretty_midi.PrettyMIDI(str(path))
    assert len(melody.instruments) == 1
    played = sorted(melody.instruments[0].notes, key=lambda n: n.start)
    # Same notes, same times as the lead part of the full MIDI that was rendered.
    lead = next(i for i in master.midi_full.instruments if i.name == "melody")
    assert [(n.pitch, round(n.start, 3)) for n in played] == [
        (n.pitch, round(n.start, 3)) for n in sorted(lead.notes, key=lambda n: n.start)]
    # And the notated tune at the master's tempo, offset and transposition (first copy).
    spb = 60.0 / arr.bpm
    expected = melody_notes_seconds(_tune(), arr.bpm, offset_seconds=arr.melody_offset_beats * spb,
                                    transpose=arr.key_shift)
    assert arr.copies >= 2  # the tune is 9.6 s at 100 bpm: repeated to reach 20 s
    for n, (on, off, pitch) in zip(played, expected):
        assert n.pitch == pitch
        assert n.start == pytest.approx(on, abs=2e-3)
        assert n.start < n.end <= off + 2e-3
    assert master.info["bpm"] == arr.bpm and master.info["key_shift"] == arr.key_shift
    # The audio has the lead's energy where the MIDI says: louder during notes than the intro gap.
    assert played[0].start == pytest.approx(master.info["melody_offset_seconds"], abs=2e-3)


def test_long_tunes_are_cut_at_a_note_boundary():
    _soundfont_or_skip()
    long_tune = _tune(n_notes=120, bpm=100.0)  # 72 s at 100 bpm
    m = R.render_master(long_tune, seed=1, style="strings")
    assert 20.0 <= m.duration_seconds <= 40.0
    assert m.info["cut"] is True
    notes = m.midi_melody.instruments[0].notes
    assert notes[-1].end <= m.duration_seconds - 1.0  # the melody ends before the release tail
    onsets = {round(n.start, 4) for n in notes}
    spb = 60.0 / m.info["bpm"]
    # every note kept is a whole note of the tune (none cut in the middle)
    assert all(n.end - n.start <= 1.0 * spb + 1e-6 for n in notes) and len(onsets) == len(notes)


@pytest.mark.parametrize("style", sorted(arrangement_styles.STYLES))
def test_every_style_arranges_a_full_band(style):
    tune = _tune(pickup=1.0, ts="3/4" if style == "folk_acoustic" else "4/4")
    tune = Melody(tune.melody_id, tune.title, tune.source, tuple(Note(n.pitch, n.start, n.duration)
                  for n in tune.notes), tune.bpm, tune.time_signature, 1.0, tune.length_beats)
    arr = A.arrange(tune, seed=7, style=style)
    roles = {p.role for p in arr.parts}
    assert {"lead", "chords"} <= roles
    assert arr.style == style
    for p in arr.parts:
        assert p.notes, f"{style}: empty {p.role} part"
        assert all(0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 and n.end > n.start for n in p.notes)
        assert max(n.end for n in p.notes) <= arr.end_beats + 1e-6
    lead = arr.lead.notes
    assert [n.pitch for n in lead[:16]] == [n.pitch + arr.key_shift for n in tune.notes]
    # The pickup ends on a downbeat of the accompaniment's bar grid: after whole intro bars, or
    # (no intro) the band comes in right after the unaccompanied pickup.
    bar = A.Meter.from_time_signature(tune.time_signature).bar_len
    first_downbeat = arr.melody_offset_beats + tune.pickup_beats
    if arr.intro_beats:
        assert arr.intro_beats == pytest.approx(first_downbeat)
        assert first_downbeat / bar == pytest.approx(round(first_downbeat / bar))
        assert arr.chords[0].start == 0.0
    else:
        assert arr.melody_offset_beats == 0.0
        assert arr.chords[0].start == pytest.approx(tune.pickup_beats)
    for c in arr.chords:
        assert ((c.start - first_downbeat) / (bar / 2)) == pytest.approx(round((c.start - first_downbeat) / (bar / 2)))


def test_chords_fit_the_melody():
    tune = _tune(n_notes=32)
    arr = A.arrange(tune, seed=2, style="pop_band")
    assert (arr.key_tonic - arr.key_shift) % 12 == 0 and arr.key_mode == "major"
    lead = arr.lead.notes
    fits = []
    for n in lead:
        chord = next(c for c in arr.chords if c.start - 1e-9 <= n.start < c.end)
        fits.append(n.pitch % 12 in chord.pcs)
    assert np.mean(fits) > 0.6


def test_key_estimate_matches_music21():
    from music21 import stream, note

    pitches = [69, 71, 72, 74, 76, 72, 69, 64, 69, 68, 69, 71, 72, 71, 69]  # A minor tune
    s = stream.Stream([note.Note(p) for p in pitches])
    k = s.analyze("key.krumhanslkessler")
    tonic, mode = A.estimate_key(pitches)
    assert (tonic, mode) == (k.tonic.pitchClass, k.mode)


def test_band_names_are_deterministic():
    assert band_name("jazz_trio", "x") == band_name("jazz_trio", "x")
    assert band_name("jazz_trio", "x").endswith("Trio")
    assert len({band_name("pop_band", str(i)) for i in range(20)}) > 10


def test_missing_soundfont_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(R.SOUNDFONT_ENV, str(tmp_path / "none.sf2"))
    with pytest.raises(R.SoundfontNotFoundError, match="EARWORM_SOUNDFONT"):
        R.find_soundfont()


# --- masters whose melody a voice sings (RenderConfig.sung_lead_share) --------------------------------

def test_sung_lead_share_draws_deterministically():
    never, always = dataclasses.replace(R.CONFIG, sung_lead_share=0.0), dataclasses.replace(R.CONFIG, sung_lead_share=1.0)
    half = dataclasses.replace(R.CONFIG, sung_lead_share=0.5)
    assert all(R.SungLead.draw(s, never) is None for s in range(200))
    sung = [R.SungLead.draw(s, always) for s in range(200)]
    assert all(x is not None for x in sung)
    doubled = sum(x.doubled_db is not None for x in sung)
    assert 0.2 * 200 < doubled < 0.5 * 200  # sung_lead_doubled 0.35
    assert all(-14.0 <= x.doubled_db <= -6.0 for x in sung if x.doubled_db is not None)
    share = sum(R.SungLead.draw(s, half) is not None for s in range(200)) / 200
    assert 0.38 < share < 0.62
    assert R.SungLead.draw(17, half) == R.SungLead.draw(17, half)


def test_a_sung_lead_carries_the_melody_in_a_singers_register(master):
    from data_gen.pitch.yin import YinExtractor
    from data_gen.synth.contour import hz_to_midi

    arr = master.arrangement
    total = master.audio.shape[0]
    vocal, shift, singer = R._sing_lead(arr, R.SungLead(seed=5), total, C.SAMPLE_RATE)
    assert vocal.shape == (total,) and shift % 12 == 0 and singer["register"] in ("low", "high")
    track = YinExtractor().extract(vocal.astype(np.float32))
    hits = total_notes = 0
    for on, off, pitch, _ in R._note_seconds(arr, arr.lead):
        if off - on < 0.25:
            continue
        frames = np.arange(int((on + 0.08) * 100), int((off - 0.05) * 100))
        frames = frames[frames < track.voiced.shape[0]]
        sung = hz_to_midi(track.f0_hz[frames][track.voiced[frames]])
        total_notes += 1
        hits += sung.size > 0 and abs(float(np.median(sung)) - (pitch + shift)) < 0.6
    assert total_notes >= 5 and hits >= 0.8 * total_notes


def test_render_master_with_a_sung_lead():
    _soundfont_or_skip()
    sung_cfg = dataclasses.replace(R.CONFIG, sung_lead_share=1.0, sung_lead_doubled=0.0)
    plain = R.render_master(_tune(), seed=3, style="pop_band")
    sung = R.render_master(_tune(), seed=3, style="pop_band", config=sung_cfg)
    assert plain.info["lead_voice"] == "instrument" and "singer" not in plain.info
    assert sung.info["lead_voice"] == "sung" and sung.info["lead_doubled_db"] is None
    assert sung.audio.shape == plain.audio.shape and np.max(np.abs(sung.audio)) == pytest.approx(0.891, abs=0.01)
    assert not np.allclose(sung.audio, plain.audio)
    shift = sung.info["lead_sung_shift"]
    plain_pitches = [n.pitch for n in plain.midi_melody.instruments[0].notes]
    assert [n.pitch for n in sung.midi_melody.instruments[0].notes] == [p + shift for p in plain_pitches]
