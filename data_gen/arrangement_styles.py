"""The arrangement styles: General MIDI instrument pools, the patterns each role plays, and the
instrument facts they rely on (drum kit names, the comfortable range of each lead instrument).

`data_gen.arrangement` draws a style from `STYLES` (`choose_style`) and arranges the melody with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from data_gen.arrangement import Meter

DRUM_KITS = {0: "Standard kit", 8: "Room kit", 16: "Power kit", 24: "Electronic kit",
             25: "TR-808 kit", 32: "Jazz kit", 40: "Brush kit", 48: "Orchestra kit"}

LEAD_RANGES: dict[int, tuple[int, int]] = {
    # GM program -> comfortable range for the median melody pitch (MIDI)
    0: (64, 77), 1: (64, 77), 2: (64, 77), 4: (62, 76), 5: (62, 76), 11: (64, 79),
    16: (62, 74), 18: (62, 74), 19: (60, 72), 20: (62, 74), 21: (62, 76), 22: (62, 76),
    24: (60, 72), 26: (60, 72), 27: (60, 74), 29: (60, 74), 30: (60, 74), 40: (67, 81),
    41: (60, 72), 42: (50, 62), 52: (57, 70), 53: (57, 70), 54: (60, 72), 56: (62, 76),
    57: (50, 62), 59: (62, 76), 60: (55, 67), 61: (60, 72), 64: (67, 79), 65: (60, 74),
    66: (53, 67), 68: (67, 79), 71: (60, 74), 73: (72, 84), 74: (72, 84), 75: (67, 81),
    78: (74, 86), 79: (67, 81), 80: (62, 76), 81: (62, 76), 83: (64, 78), 84: (60, 74),
    85: (60, 74), 87: (55, 67), 105: (60, 72), 110: (67, 81),
}


@dataclass(frozen=True)
class Style:
    """A kind of arrangement: instrument pools per role and the patterns they play."""

    name: str
    leads: tuple[int, ...]
    chords: tuple[tuple[int, str], ...]  # (program, chord pattern)
    basses: tuple[tuple[int, str], ...] = ()  # (program, bass pattern)
    bass_prob: float = 1.0
    pads: tuple[int, ...] = ()
    pad_prob: float = 0.0
    arps: tuple[int, ...] = ()
    arp_prob: float = 0.0
    kits: tuple[int, ...] = ()
    drum_patterns: tuple[str, ...] = ()
    drum_prob: float = 1.0
    timpani_prob: float = 0.0
    sevenths: bool = False
    swing_range: tuple[float, float] = (0.0, 0.0)  # delay of off-beat subdivisions (beats)
    bpm_factor: float = 1.0
    chord_center: int = 60
    reverb_range: tuple[float, float] = (0.3, 0.7)  # room size
    weight: float = 1.0


STYLES: dict[str, Style] = {s.name: s for s in (
    Style("pop_band", leads=(53, 54, 85, 80, 65, 27, 29, 4, 22, 73),
          chords=((0, "strum"), (4, "block"), (25, "strum"), (27, "strum"), (0, "arpeggio"), (16, "pad")),
          basses=((33, "root_fifth"), (34, "eighths"), (33, "eighths")),
          pads=(48, 89, 50), pad_prob=0.4, kits=(0, 8, 16), drum_patterns=("pop",), weight=1.5),
    Style("rock", leads=(30, 29, 81, 18, 53),
          chords=((29, "power"), (30, "power"), (18, "block")),
          basses=((34, "eighths"), (33, "eighths")), pads=(18,), pad_prob=0.2,
          kits=(16, 0), drum_patterns=("rock",), bpm_factor=1.08, reverb_range=(0.2, 0.5)),
    Style("folk_acoustic", leads=(73, 110, 40, 21, 22, 74, 75, 78, 105, 79),
          chords=((24, "arpeggio"), (25, "strum"), (46, "arpeggio"), (105, "arpeggio"),
                  (21, "offbeat"), (25, "arpeggio")),
          basses=((32, "root_fifth"),), bass_prob=0.6, kits=(0,), drum_patterns=("light",),
          drum_prob=0.4, reverb_range=(0.3, 0.6), weight=1.3),
    Style("piano_ballad", leads=(0, 0, 1, 2, 4, 73, 40, 71, 53, 42, 68),
          chords=((0, "arpeggio"), (1, "arpeggio"), (0, "block"), (4, "arpeggio")),
          basses=((35, "root"), (32, "root")), bass_prob=0.3, pads=(48, 49, 89), pad_prob=0.5,
          kits=(40,), drum_patterns=("brush",), drum_prob=0.25, bpm_factor=0.85,
          reverb_range=(0.5, 0.9)),
    Style("strings", leads=(40, 73, 68, 71, 60, 42, 41),
          chords=((48, "pad"), (49, "pad"), (44, "block"), (48, "block")),
          basses=((43, "root"), (45, "root_fifth")), arps=(46, 45), arp_prob=0.5,
          drum_prob=0.0, timpani_prob=0.3, bpm_factor=0.9, chord_center=58,
          reverb_range=(0.6, 0.95)),
    Style("electronic", leads=(80, 81, 84, 87, 85, 83),
          chords=((89, "pad"), (88, "pad"), (90, "offbeat"), (91, "pad"), (95, "pad"), (50, "block")),
          basses=((38, "eighths"), (39, "offbeat"), (38, "root_fifth")), arps=(81, 80), arp_prob=0.5,
          kits=(24, 25), drum_patterns=("four_floor",), bpm_factor=1.1, reverb_range=(0.4, 0.8)),
    Style("jazz_trio", leads=(66, 65, 56, 59, 11, 71, 0, 26),
          chords=((0, "comp"), (4, "comp"), (26, "comp")), basses=((32, "walking"),),
          kits=(32, 40), drum_patterns=("swing",), sevenths=True, swing_range=(0.08, 0.16),
          chord_center=58, reverb_range=(0.3, 0.6)),
    Style("brass_band", leads=(56, 60, 61, 56),
          chords=((57, "offbeat"), (60, "offbeat"), (61, "offbeat")), basses=((58, "root_fifth"),),
          kits=(48, 0), drum_patterns=("march",), drum_prob=0.8, chord_center=57,
          reverb_range=(0.4, 0.8)),
    Style("organ_hymn", leads=(19, 52, 53, 20),
          chords=((19, "pad"), (52, "pad"), (20, "block")), basses=((19, "root"),),
          drum_prob=0.0, bpm_factor=0.85, chord_center=57, reverb_range=(0.7, 0.95), weight=0.6),
    Style("bossa", leads=(73, 65, 24, 66, 11, 53),
          chords=((24, "bossa"), (0, "comp")), basses=((32, "root_fifth"),),
          pads=(48, 89), pad_prob=0.3, kits=(0, 40), drum_patterns=("bossa",), sevenths=True,
          reverb_range=(0.3, 0.6), weight=0.7),
)}


def choose_style(rng: np.random.Generator) -> Style:
    """A style drawn by `Style.weight`."""
    styles = list(STYLES.values())
    w = np.array([s.weight for s in styles])
    return styles[int(rng.choice(len(styles), p=w / w.sum()))]


def comp_rhythms(style: str, meter: Meter) -> tuple[tuple[tuple[float, float], ...], ...]:
    """The comping rhythms, (offset, duration) per chord, a "comp" or "bossa" chord part picks from."""
    bl, bar = meter.beat_len, meter.bar_len
    if style == "bossa" and meter.beats == 4 and meter.sub == 2:
        return (((0.0, 1.0), (1.5, 1.0), (3.0, 1.0)), ((0.0, 0.5), (1.5, 0.5), (2.5, 0.5), (3.5, 0.5)))
    if meter.beats == 4:
        return (((0.0, 1.0), (1.5 * bl, 0.5 * bl)), ((0.5 * bl, 1.0 * bl), (2.5 * bl, 1.0 * bl)),
                ((0.0, 2.0 * bl), (2.0 * bl, 2.0 * bl)), ((1.0 * bl, 0.5 * bl), (2.5 * bl, 1.0 * bl)))
    return (((0.0, bar * 0.6),), ((0.0, bl), (bl, bl)) if meter.beats >= 2 else ((0.0, bar * 0.6),))
