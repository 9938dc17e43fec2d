"""The melody gate: queries with no melody are stopped before retrieval; real hums go through."""

from __future__ import annotations

import numpy as np
import pytest

from data_gen.synth.no_melody import signals, speech
from serving.melody_gate import MelodyGate, MelodyGateConfig, describe
from tests.conftest import sung_tone

TUNE = sung_tone((57, 60, 64, 62, 65, 67, 64, 60, 62, 57), note_s=0.5)


@pytest.fixture(scope="module")
def gate() -> MelodyGate:
    return MelodyGate()


def test_a_sung_tune_has_a_melody(gate):
    check = gate.check(TUNE)
    assert check.has_melody and check.why == ""
    assert check.distinct_notes >= 5
    assert check.pitch_range_semitones >= 7
    assert check.voiced_seconds > 4.0


@pytest.mark.parametrize("name", sorted(signals()))
def test_inputs_with_no_melody_are_stopped(gate, name):
    check = gate.check(signals()[name])
    assert not check.has_melody, (name, check)
    assert check.why.startswith("no melody heard: ")


def test_the_explanations_name_what_is_missing(gate):
    steady = gate.check(signals()["sine_440hz"])
    assert "1 distinct note" in steady.why and steady.voiced_seconds > 9
    noise = gate.check(signals()["white_noise"])
    assert "pitched" in noise.why and noise.voiced_seconds < 0.5


def test_most_speech_is_stopped(gate):
    spoken = speech()
    if not spoken:
        pytest.skip("espeak-ng is not installed (scripts/setup.sh installs it)")
    stopped = [name for name, audio in spoken.items() if not gate.check(audio).has_melody]
    assert len(stopped) >= 2 * len(spoken) // 3, stopped


def test_describe_counts_held_notes_and_phrases():
    frames = 300  # 3 s on the 10 ms grid
    steps = np.repeat([60.0, 62.0, 64.0], 100)
    check = describe(steps, np.ones(frames, bool))
    assert check.has_melody and check.distinct_notes == 3 and check.phrase_seconds == pytest.approx(3.0)
    chopped = np.tile(np.r_[np.ones(10, bool), np.zeros(6, bool)], 20)[:frames]  # 100 ms syllables
    check = describe(steps, chopped)
    assert not check.has_melody and "like speech" in check.why
    assert describe(np.zeros(0), np.zeros(0, bool)).voiced_seconds == 0.0


def test_the_gate_can_be_configured():
    with pytest.raises(ValueError):
        MelodyGateConfig(min_note_seconds=0)
    lenient = MelodyGate(MelodyGateConfig(min_distinct_notes=1, min_pitch_range_semitones=0, min_phrase_seconds=0))
    assert lenient.check(signals()["sine_440hz"]).has_melody


def test_real_hums_reach_retrieval(gate, shared_data_dir):
    import csv

    from data_gen.audio import load_audio

    manifest = shared_data_dir / "qbh_demo" / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} is absent")
    with manifest.open(newline="") as f:
        paths = [manifest.parent / r["path"] for r in csv.DictReader(f)]
    passed = [gate.check(load_audio(p)).has_melody for p in paths]
    assert np.mean(passed) >= 0.95, f"{sum(passed)} of {len(passed)} real hums pass"


def test_retriever_answers_no_melody_without_embedding(index_dir):
    from serving.index import WindowIndex
    from serving.retrieval import Retriever
    from serving.retrieval_types import NO_MELODY, RetrievalConfig

    class CountingEmbedder:
        version = WindowIndex.load(index_dir).metadata.model_version
        calls = 0

        def embed_query(self, audio, tempo_rates=(1.0,)):
            CountingEmbedder.calls += 1
            raise AssertionError("a query with no melody must not be embedded")

    retriever = Retriever(CountingEmbedder(), WindowIndex.load(index_dir), RetrievalConfig(no_match_threshold=0.5))
    result = retriever.identify(signals(seconds=5.0)["sine_440hz"])
    assert result.no_match and result.reason == NO_MELODY and result.matches == []
    assert result.melody is not None and not result.melody.has_melody
    assert CountingEmbedder.calls == 0
    assert result.audio_seconds == pytest.approx(5.0)


def test_a_stream_is_checked_incrementally_with_the_same_verdict(gate):
    tune = np.concatenate([signals(seconds=3.0)["white_noise"], TUNE, TUNE])
    stream = gate.streaming()
    for end in range(8000, tune.size + 1, 7919):  # chunks that do not fall on the frame grid
        part = tune[:end]
        assert stream.check(part) == gate.check(part), end
    assert stream.check(tune) == gate.check(tune) and stream.check(tune).has_melody
    assert len(stream._settled) < 1 + tune.size // 160  # the end is analysed again next time


def test_yin_analysis_of_a_long_recording_is_blockwise_and_identical():
    from data_gen.pitch.yin import BLOCK_FRAMES, YinExtractor

    long = np.tile(TUNE, 3)
    yin = YinExtractor()
    whole = yin.analyse(long)
    assert len(whole) > BLOCK_FRAMES
    tail = yin.analyse(long, first_frame=BLOCK_FRAMES + 7)
    np.testing.assert_array_equal(tail.f0_hz, whole.f0_hz[BLOCK_FRAMES + 7 :])


def test_yin_with_a_frame_step_analyses_every_other_frame_and_holds_it():
    from data_gen.pitch.yin import YinExtractor

    full = YinExtractor(decimate=2).analyse(TUNE)
    stepped = YinExtractor(decimate=2, frame_step=2).analyse(TUNE)
    assert len(stepped) == len(full)
    for a, b in zip((stepped.f0_hz, stepped.aperiodicity, stepped.level), (full.f0_hz, full.aperiodicity, full.level)):
        np.testing.assert_array_equal(a[0::2], b[0::2])  # the analysed frames are the full analysis's own
        np.testing.assert_array_equal(a[1::2], a[0::2][: a[1::2].size])  # and held over the next
    for first in (1, 2, 101, len(full) - 1, len(full), len(full) + 5):  # pieces of a stream
        tail = YinExtractor(decimate=2, frame_step=2).analyse(TUNE, first_frame=first)
        np.testing.assert_array_equal(tail.f0_hz, stepped.f0_hz[first:])
    with pytest.raises(ValueError, match="frame_step"):
        YinExtractor(frame_step=0)
