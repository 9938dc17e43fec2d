"""Human-like deviations do what they claim (data_gen.synth.deviations)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.synth import KINDS, DeviationConfig, SynthError, perform
from data_gen.synth.contour import contour_from_notes, hz_to_midi
from data_gen.synth.deviations import degrade, perform_contour, register_shift

# A 16-note tune, 0.4 s per note, starting at 1 s.
PITCHES = [60, 62, 64, 65, 67, 65, 64, 62, 60, 64, 67, 72, 67, 64, 62, 60]
NOTES = [(1.0 + 0.4 * i, 1.0 + 0.4 * i + 0.36, float(p)) for i, p in enumerate(PITCHES)]

ERRORS_OFF = dict(timing_jitter_s=0.0, duration_jitter=0.0, intonation_cents=0.0, drift_cents=0.0,
                  vibrato_prob=0.0, drop_note_prob=0.0, add_note_prob=0.0, reverb_prob=0.0,
                  noise_prob=0.0, mic_prob=0.0, wander_cents=(0.0, 0.0))


def only(**fields) -> DeviationConfig:
    """A clean config (exact) with strength 1 and only the given deviations switched on."""
    return DeviationConfig.exact(**{**ERRORS_OFF, "strength": 1.0, **fields})


def median_pitch_pyin(audio: np.ndarray) -> float:
    import librosa

    f0, voiced, _ = librosa.pyin(audio.astype(np.float64), fmin=150, fmax=700, sr=C.SAMPLE_RATE,
                                 frame_length=1024, hop_length=C.PITCH_HOP)
    return float(np.median(hz_to_midi(f0[voiced])))


def test_exact_reproduces_the_melody():
    p = perform(NOTES, "tone", seed=1, config=DeviationConfig.exact())
    lead = p.info["lead_s"]
    assert [n[2] for n in p.notes_used] == PITCHES
    assert p.notes_used[0][0] == pytest.approx(lead)
    assert p.notes_used[5][0] == pytest.approx(lead + 2.0)
    assert p.info["start_s"] == pytest.approx(1.0)
    assert p.info["tempo_factor"] == 1.0
    np.testing.assert_allclose(np.nanmedian(p.contour.midi()), np.median(PITCHES), atol=1e-3)


def test_transposition_shifts_the_sung_pitch():
    base = perform(NOTES[:5], "hum", seed=2, config=DeviationConfig.exact())  # C4..G4
    up = perform(NOTES[:5], "hum", seed=2, config=DeviationConfig.exact(transpose_range=(5.0, 5.0)))
    assert up.info["total_transpose_semitones"] == pytest.approx(5.0)
    shift = np.nanmedian(up.contour.midi()) - np.nanmedian(base.contour.midi())
    assert shift == pytest.approx(5.0, abs=1e-3)
    heard = median_pitch_pyin(up.audio) - median_pitch_pyin(base.audio)
    assert heard == pytest.approx(5.0, abs=0.3)


def test_register_fit_moves_by_octaves():
    assert register_shift([(0, 1, 84.0)], 95.0, 210.0) == -36  # C6 hummed three octaves down
    assert register_shift([(0, 1, 50.0)], 95.0, 210.0) == 0
    assert register_shift([(0, 1, 30.0)], 95.0, 210.0) == 24
    p = perform(NOTES, "hum", seed=3, config=DeviationConfig.exact(transpose_range=(12.0, 12.0), fit_register=True))
    lo, hi = (95.0, 210.0) if p.info["register"] == "low" else (180.0, 400.0)
    assert lo <= p.contour.median_hz() <= hi * 1.01
    assert p.info["octave_fit_semitones"] % 12 == 0


@pytest.mark.parametrize("tempo", [0.8, 1.25])
def test_tempo_factor_changes_duration(tempo):
    base = perform(NOTES, "tone", seed=4, config=DeviationConfig.exact())
    fast = perform(NOTES, "tone", seed=4, config=DeviationConfig.exact(tempo_range=(tempo, tempo)))
    span = lambda p: p.notes_used[-1][1] - p.notes_used[0][0]  # noqa: E731
    assert span(fast) == pytest.approx(span(base) / tempo, rel=1e-6)
    lead = base.info["lead_s"]
    active_base = base.audio.shape[0] / C.SAMPLE_RATE - lead - 0.3
    active_fast = fast.audio.shape[0] / C.SAMPLE_RATE - lead - 0.3
    assert active_fast == pytest.approx(active_base / tempo, abs=0.02)
    assert fast.info["tempo_factor"] == pytest.approx(tempo)


def test_crop_window_starts_on_a_note_and_has_the_requested_length():
    cfg = DeviationConfig.exact(crop=True, min_seconds=3.0, max_seconds=3.0, tempo_range=(1.2, 1.2))
    for seed in range(4):
        p = perform(NOTES, "tone", seed=seed, config=cfg)
        assert p.audio.shape[0] / C.SAMPLE_RATE == pytest.approx(3.0, abs=0.011)
        assert min(abs(p.info["start_s"] - n[0]) for n in NOTES) < 1e-9
        # source_time = source_offset_s + query_time * tempo_factor maps the first note back.
        first = p.notes_used[0][0]
        assert p.info["source_offset_s"] + first * 1.2 == pytest.approx(p.info["start_s"], abs=1e-3)
        assert all(0 <= a < b <= 3.0 for a, b, _ in p.notes_used)
    starts = {perform(NOTES, "tone", seed=s, config=cfg).info["start_s"] for s in range(8)}
    assert len(starts) > 2  # "anywhere in the song"


def test_intonation_errors_are_per_note_and_sized():
    p = perform(NOTES, "tone", seed=5, config=only(intonation_cents=40.0))
    errors = np.array([100 * (n[2] - s) for n, s in zip(p.notes_used, PITCHES)])
    assert np.all(errors != 0)
    sd = p.info["intonation_cents"]
    assert 0 < sd <= 40.0
    assert np.std(errors) < 3 * sd + 1


def test_timing_jitter_moves_onsets_keeping_order():
    p = perform(NOTES, "tone", seed=6, config=only(timing_jitter_s=0.05, duration_jitter=0.2))
    onsets = np.array([n[0] for n in p.notes_used])
    grid = p.info["lead_s"] + 0.4 * np.arange(len(PITCHES))
    assert np.any(np.abs(onsets - grid) > 1e-4)
    assert np.all(np.diff(onsets) > 0)


def test_drift_and_vibrato_bend_the_contour():
    drift = perform(NOTES, "tone", seed=7, config=only(drift_cents=100.0))
    exact = perform(NOTES, "tone", seed=7, config=DeviationConfig.exact())
    cents = 100 * (drift.contour.midi() - exact.contour.midi())
    total = drift.info["drift_cents"]
    voiced = np.flatnonzero(drift.contour.voiced)
    tail = np.nanmean(cents[voiced[-30:]])
    assert abs(total) > 1 and np.sign(tail) == np.sign(total)
    assert abs(tail - total) < 0.5 * abs(total) + 10

    long_note = [(0.0, 2.0, 60.0)]
    v = perform(long_note, "tone", seed=8, config=only(vibrato_prob=1.0, vibrato_rate_hz=(6.0, 6.0),
                                                     vibrato_depth_cents=(50.0, 50.0)))
    dev = 100 * (v.contour.midi() - 60.0)
    seg = dev[int(0.8 * C.PITCH_FRAME_RATE) : int(1.8 * C.PITCH_FRAME_RATE)]
    assert 35 < np.max(np.abs(seg)) <= 50.0 + 1e-3
    spectrum = np.abs(np.fft.rfft(seg - seg.mean(), 1000))
    peak_hz = np.fft.rfftfreq(1000, 1.0 / C.PITCH_FRAME_RATE)[np.argmax(spectrum)]
    assert peak_hz == pytest.approx(6.0, abs=0.6)


def test_pitch_wander_moves_held_notes_and_no_other_draw():
    long_note = [(0.0, 3.0, 60.0)]
    still = perform(long_note, "tone", seed=4, config=only())
    wander = perform(long_note, "tone", seed=4, config=only(wander_cents=(15.0, 15.0)))
    assert wander.info["wander_cents"] == 15.0 and still.info["wander_cents"] == 0.0
    dev = 100 * (wander.contour.midi() - still.contour.midi())
    held = dev[np.flatnonzero(still.contour.voiced)]
    assert 8.0 < np.std(held) < 25.0  # about its sd, slow: neighbouring frames move together
    assert np.mean(np.abs(np.diff(held))) < 0.25 * np.std(held)
    # its own random stream: every other drawn value of the seed is what it was without it
    a = perform(NOTES, "hum", seed=11)
    b = perform(NOTES, "hum", seed=11, config=DeviationConfig(wander_cents=(0.0, 0.0)))
    assert {k: v for k, v in a.info.items() if k != "wander_cents"} == \
        {k: v for k, v in b.info.items() if k != "wander_cents"}
    assert a.notes_used == b.notes_used and a.info["wander_cents"] > 0


def test_dropped_and_added_notes():
    dropped = perform(NOTES, "tone", seed=9, config=only(drop_note_prob=1.0))
    assert dropped.info["notes_dropped"] == len(NOTES) - 2 and len(dropped.notes_used) == 2
    added = perform(NOTES, "tone", seed=9, config=only(add_note_prob=1.0))
    assert added.info["notes_added"] == len(NOTES)
    assert len(added.notes_used) == 2 * len(NOTES)


@pytest.mark.parametrize("kind", KINDS)
def test_full_deviations_valid_audio_and_info(kind):
    p = perform(NOTES, kind, seed=11)
    a = p.audio
    assert a.dtype == np.float32 and np.all(np.isfinite(a))
    assert np.max(np.abs(a)) <= 1.0 and np.sqrt(np.mean(a.astype(np.float64) ** 2)) > 1e-3
    assert a.shape[0] == p.contour.n_samples
    info = json.loads(json.dumps(p.info))  # JSON-serialisable
    for key in ("start_s", "tempo_factor", "transpose_semitones", "snr_db", "noise_kind", "mic",
                "voice", "total_transpose_semitones", "duration_s", "source_offset_s"):
        assert key in info
    assert info["kind"] == kind
    again = perform(NOTES, kind, seed=11)
    np.testing.assert_array_equal(a, again.audio)
    assert again.info == p.info


def test_strength_zero_is_clean_and_config_is_validated():
    d = DeviationConfig(strength=0.0).sample(3)
    assert d.intonation_cents == 0 and d.noise_kind == "" and d.mic is None and d.drop_note_prob == 0
    assert DeviationConfig().sample(3) == DeviationConfig().sample(3)
    with pytest.raises(SynthError):
        DeviationConfig(min_seconds=8, max_seconds=4)
    with pytest.raises(SynthError):
        DeviationConfig(noise_kinds=("traffic",))
    with pytest.raises(SynthError):
        perform(NOTES, "yodel", seed=0)
    with pytest.raises(SynthError):
        perform([], "hum", seed=0)


def test_perform_contour_and_degrade():
    c = contour_from_notes(NOTES[:6])
    p = perform_contour(c, "whistle", seed=1, config=only(tempo_range=(1.25, 1.25)))
    assert p.contour.n_frames == round(c.n_frames / 1.25)
    assert p.audio.shape[0] == p.contour.n_samples
    assert p.info["whistle_octaves"] >= 1
    audio = np.sin(2 * np.pi * 220 * np.arange(C.SAMPLE_RATE) / C.SAMPLE_RATE).astype(np.float32) * 0.5
    out, info = degrade(audio, seed=2, config=DeviationConfig(noise_prob=1.0, strength=1.0))
    assert out.shape == audio.shape and info["noise_kind"] and np.max(np.abs(out)) <= 1.0
