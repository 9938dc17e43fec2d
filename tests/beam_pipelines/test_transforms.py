"""Each composite transform of the training-pair pipeline on tiny inputs (TestPipeline)."""

from __future__ import annotations

import numpy as np
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines.pairs import TimeMap
from beam_pipelines.sources import Snippet, mir1k_snippets
from beam_pipelines.transforms import (
    CutPairs,
    DecodeAndExtract,
    DecodedSnippet,
    Rendition,
    SynthesizeQueries,
)
from data_gen import constants as C
from data_gen.pitch import PitchTrack
from tests.beam_pipelines.conftest import IN_PROCESS
from tests.conftest import sung_tone


def pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(options=PipelineOptions(list(IN_PROCESS)))


def built(p, name: str, specs: list, make) -> beam.PCollection:
    """Inputs holding audio are made inside the pipeline: `beam.Create` pickles (and bz2-compresses)
    its elements into the pipeline proto, which is slow for arrays."""
    return p | f"{name}Specs" >> beam.Create(specs) | f"{name}Make" >> beam.Map(lambda s: make(*s))


def snippet(sid: str = "mir1k:x_1_01", melody: str = "x_1", split: str = "train") -> Snippet:
    return Snippet(sid, melody, split, "mir1k", "voice.ogg", "", ("voice.ogg",), "sample")


def track_of_notes(notes=(60, 62, 64, 65, 67, 69, 71, 72), note_s=0.6) -> PitchTrack:
    """A clean PitchTrack (10 ms grid) singing `notes`, with a short gap between notes."""
    per = int(note_s * C.PITCH_FRAME_RATE)
    f0 = np.concatenate([np.full(per, 440.0 * 2 ** ((m - 69) / 12)) for m in notes]).astype(np.float32)
    voiced = np.ones_like(f0, bool)
    voiced[per - 3 :: per] = False
    return PitchTrack(f0, voiced.astype(np.float32), voiced)


def decoded(sid: str = "mir1k:x_1_01", pitch: PitchTrack | None = None) -> DecodedSnippet:
    pitch = pitch if pitch is not None else track_of_notes()
    audio = sung_tone((60, 62, 64, 65, 67, 69, 71, 72), note_s=0.6)
    return DecodedSnippet(snippet(sid), audio, audio * 0.8, pitch, "voice")


def stage_of(error: dict) -> tuple[str, str]:
    assert error["reason"], error
    return error["snippet_id"], error["stage"]


def test_decode_and_extract_routes_the_corrupt_clip_to_errors(tiny_mir1k, extractor_name):
    snippets = mir1k_snippets(tiny_mir1k)
    with pipeline() as p:
        out = p | beam.Create(snippets) | DecodeAndExtract(extractor_name, seed=0)
        ok = out.main | "ok" >> beam.Map(
            lambda d: (d.snippet.snippet_id, d.real_kind, bool(d.pitch.voiced.mean() > 0.5)))
        assert_that(ok, equal_to([("mir1k:alpha_1_01", "voice", True), ("mir1k:alpha_1_02", "voice", True),
                                  ("mir1k:song3_01", "voice", True)]), label="main")
        assert_that(out.errors | "err" >> beam.Map(stage_of),
                    equal_to([("mir1k:broken_3_01", "decode")]), label="errors")


def test_synthesize_queries_makes_every_kind_and_reports_unvoiced_tracks():
    silent = PitchTrack(np.full(800, 100.0, np.float32), np.zeros(800, np.float32), np.zeros(800, bool))
    with pipeline() as p:
        out = (built(p, "in", [("mir1k:a_1_01", None), ("mir1k:b_1_01", silent)], decoded)
               | SynthesizeQueries(("hum", "whistle", "tone"), keep_real=True, seed=1))
        kinds = out.main | "kinds" >> beam.Map(
            lambda r: (r.snippet.snippet_id, r.kind, r.origin, r.audio.dtype == np.float32,
                       bool(np.abs(r.audio).max() > 0.01)))
        assert_that(kinds, equal_to(
            [("mir1k:a_1_01", k, "synth", True, True) for k in ("hum", "whistle", "tone")]
            + [("mir1k:a_1_01", "voice", "real", True, True), ("mir1k:b_1_01", "voice", "real", True, True)]),
            label="kinds")
        assert_that(out.errors | "err" >> beam.Map(stage_of),
                    equal_to([("mir1k:b_1_01", "synthesize")] * 3), label="errors")


def test_synthesize_queries_with_deviations_records_tempo_and_transposition():
    from data_gen.synth import DeviationConfig

    dev = DeviationConfig(tempo_range=(1.2, 1.2), transpose_range=(3.0, 3.0), fit_register=False)
    with pipeline() as p:
        out = (built(p, "in", [("mir1k:x_1_01",)], decoded)
               | SynthesizeQueries(("tone",), keep_real=False, seed=1, deviations=dev))
        facts = out.main | beam.Map(lambda r: (r.kind, round(r.time_map.tempo_factor, 3),
                                               round(r.transpose, 3),
                                               round(r.audio.size / decoded().performance.size, 1)))
        assert_that(facts, equal_to([("tone", 1.2, 3.0, 0.8)]))


def rendition(sid: str, seconds: float, voiced: bool = True) -> Rendition:
    n = int(seconds * C.SAMPLE_RATE)
    audio = sung_tone((60,) * int(seconds * 2), note_s=0.5)[:n]
    v = np.full(n // C.PITCH_HOP + 1, voiced)
    return Rendition(snippet(sid), "hum", audio, v, audio.copy(), TimeMap(), 0.0)


def test_cut_pairs_cuts_aligned_windows_and_reports_unvoiced_renditions():
    with pipeline() as p:
        out = (built(p, "in", [("mir1k:a_1_01", 12.0), ("mir1k:b_1_01", 8.0, False)], rendition)
               | CutPairs(hop_s=3.0, min_voiced_fraction=0.2))
        ids = out.main | "ids" >> beam.Map(
            lambda e: (e.example_id, e.query_offset_s, e.master_offset_s, e.query_audio.shape[0]))
        assert_that(ids, equal_to([
            (f"x_1/hum/mir1k:a_1_01/synth-{i:03d}", 3.0 * i, 3.0 * i, C.EXAMPLE_SAMPLES) for i in range(3)
        ]), label="ids")
        assert_that(out.errors | "err" >> beam.Map(stage_of), equal_to([("mir1k:b_1_01", "cut")]),
                    label="errors")
