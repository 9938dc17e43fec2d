"""Synthetic queries: hum, whistle, tone and sung renditions of a melody, with human deviations.

    notes = notes_from_midi("melody.mid")                 # [(onset_s, offset_s, midi_pitch)]
    contour = contour_from_notes(notes, glide_s=0.05)      # 10 ms f0 + voicing
    audio = synthesize("hum", contour, seed=3)            # float32 [samples] at SAMPLE_RATE
    perf = perform(notes, "whistle", seed=3)              # deviations + synthesis + channel

Each synthesizer draws a random voice (a frozen dataclass: `HumVoice`, `WhistleVoice`,
`ToneVoice`, `SungVoice`) from the seed; keyword parameters override its fields.
"""

from __future__ import annotations

from data_gen.synth.channel import NOISE_KINDS, PhoneMic, add_noise, make_noise, phone_mic, reverberate
from data_gen.synth.contour import (
    Contour,
    Note,
    SynthError,
    contour_from_notes,
    hz_to_midi,
    midi_to_hz,
    monophonic,
    note_segments,
    notes_from_midi,
)
from data_gen.synth.deviations import (
    DeviationConfig,
    Deviations,
    Performance,
    apply_channel,
    degrade,
    perform,
    perform_contour,
)
from data_gen.synth.dispatch import KINDS, VOICES, render, sample_voice, synthesize
from data_gen.synth.hum import HumVoice, synthesize_hum
from data_gen.synth.sung import SungVoice, synthesize_sung
from data_gen.synth.tone import ToneVoice, synthesize_tone
from data_gen.synth.whistle import WhistleVoice, synthesize_whistle, whistle_octaves

__all__ = [
    "KINDS", "NOISE_KINDS", "VOICES", "Contour", "DeviationConfig", "Deviations", "HumVoice", "Note",
    "Performance", "PhoneMic", "SungVoice", "SynthError", "ToneVoice", "WhistleVoice", "add_noise", "apply_channel", "degrade", "perform_contour",
    "contour_from_notes", "hz_to_midi", "make_noise", "midi_to_hz", "monophonic", "note_segments",
    "notes_from_midi", "perform", "phone_mic", "render", "reverberate", "sample_voice", "synthesize",
    "synthesize_hum", "synthesize_sung", "synthesize_tone", "synthesize_whistle", "whistle_octaves",
]
