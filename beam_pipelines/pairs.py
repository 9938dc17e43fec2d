"""Cutting aligned (query, master) training windows: plain numpy, no Beam (the DoFns call this).

Alignment is a linear time map from a query's timeline to its master's timeline,
`master_time = offset_s + query_time * tempo_factor` (`TimeMap`). A MIR-1K voice is on its
master's timeline (offset 0, factor 1); a synthesized query whose tempo a deviation changed by
`f` (query tempo / master tempo) maps with factor `f`; a catalogue performance maps through the
timing `data_gen.synth.perform` reports.

Windows are EXAMPLE_SECONDS long on both sides and aligned at their centres: the master window
is centred on the master time of the query window's centre. With a tempo factor near 1 both
windows then hold the same melodic content, exactly at the centre and within
|1 - factor| * EXAMPLE_SECONDS / 2 at the edges (so the trainer's centred WINDOW_SECONDS crops
match closely). Master samples outside the recording are zeros (never shifted, which would break
the alignment); `master_offset_s` may then be negative or run past the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from data_gen import constants as C
from data_gen.examples import PairExample
from data_gen.windows import window_starts


@dataclass(frozen=True)
class TimeMap:
    """master_time = offset_s + query_time * tempo_factor (seconds)."""

    offset_s: float = 0.0
    tempo_factor: float = 1.0

    def to_master(self, t: float | np.ndarray) -> float | np.ndarray:
        return self.offset_s + t * self.tempo_factor

    def after(self, inner: "TimeMap") -> "TimeMap":
        """The map of `inner` followed by this one: query -(inner)-> performance -(self)-> master."""
        return TimeMap(self.offset_s + inner.offset_s * self.tempo_factor,
                       self.tempo_factor * inner.tempo_factor)


def slice_padded(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    """audio[start:start+length] with zeros wherever the range leaves the recording. [length]"""
    out = np.zeros(length, dtype=np.float32)
    lo, hi = max(0, start), min(audio.shape[0], start + length)
    if hi > lo:
        out[lo - start : hi - start] = audio[lo:hi]
    return out


def voiced_fraction(voiced: np.ndarray, start_s: float, seconds: float) -> float:
    """Fraction of 10 ms frames in [start_s, start_s + seconds) that are voiced (0 outside)."""
    a = int(round(start_s * C.PITCH_FRAME_RATE))
    n = max(1, int(round(seconds * C.PITCH_FRAME_RATE)))
    seg = voiced[max(0, a) : max(0, a + n)]
    return float(np.count_nonzero(seg)) / n


@dataclass(frozen=True)
class WindowPair:
    index: int
    query: np.ndarray  # [EXAMPLE_SAMPLES] float32
    master: np.ndarray  # [EXAMPLE_SAMPLES] float32
    query_offset_s: float
    master_offset_s: float
    voiced_fraction: float


def aligned_windows(
    query: np.ndarray,
    master: np.ndarray,
    time_map: TimeMap,
    query_voiced: np.ndarray | None,
    *,
    hop_s: float,
    min_voiced_fraction: float = 0.0,
    max_windows: int | None = None,
    window: int = C.EXAMPLE_SAMPLES,
) -> Iterator[WindowPair | float]:
    """Yield a `WindowPair` for every kept window of the query, or the voiced fraction (a float)
    of a window skipped for holding too little melody. Query windows start every `hop_s` (the last
    one aligned to the query's end, see `data_gen.windows.window_starts`); a query shorter than
    one window gives one zero-padded window. query_voiced: bool [frames] on the 10 ms grid of
    the query (None: all voiced)."""
    hop = max(1, int(round(hop_s * C.SAMPLE_RATE)))
    seconds = window / C.SAMPLE_RATE
    kept = 0
    for i, q0 in enumerate(window_starts(query.shape[0], hop, window)):
        if max_windows is not None and kept >= max_windows:
            return
        q0 = int(q0)
        q_len = min(window, query.shape[0] - q0)
        frac = 1.0 if query_voiced is None else voiced_fraction(
            query_voiced, q0 / C.SAMPLE_RATE, q_len / C.SAMPLE_RATE)
        if frac < min_voiced_fraction:
            yield frac
            continue
        centre_q = (q0 + window / 2) / C.SAMPLE_RATE
        centre_m = float(time_map.to_master(centre_q))
        m0 = int(round((centre_m - seconds / 2) * C.SAMPLE_RATE))
        yield WindowPair(
            index=i,
            query=slice_padded(query, q0, window),
            master=slice_padded(master, m0, window),
            query_offset_s=q0 / C.SAMPLE_RATE,
            master_offset_s=m0 / C.SAMPLE_RATE,
            voiced_fraction=frac,
        )
        kept += 1


def example_id(melody_id: str, kind: str, snippet_id: str, index: int, origin: str = "synth") -> str:
    """`<melody_id>/<kind>/<snippet_id>/<origin>-<window>`: unique and the same on every run.
    origin: "real" (the performance itself) or "synth" (re-synthesized from its contour), so a
    hummed catalogue performance and the hum made from its contour never share an id."""
    return f"{melody_id}/{kind}/{snippet_id}/{origin}-{index:03d}"


def make_example(
    *, melody_id: str, split: str, source: str, kind: str, snippet_id: str, pair: WindowPair,
    tempo_factor: float, transpose: float, origin: str = "synth",
) -> PairExample:
    return PairExample(
        example_id=example_id(melody_id, kind, snippet_id, pair.index, origin),
        melody_id=melody_id,
        split=split,
        source=source,
        query_kind=kind,
        query_audio=pair.query,
        master_audio=pair.master,
        query_offset_s=pair.query_offset_s,
        master_offset_s=pair.master_offset_s,
        tempo_factor=float(tempo_factor),
        transpose=float(transpose),
    )
