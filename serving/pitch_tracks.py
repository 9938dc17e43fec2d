"""Pitch tracks that show why a query matched: the query's own (YIN), and the matched master's
melody over the stretch it was matched to (its melody MIDI when the catalogue has one, else YIN on
the master's audio, which follows the loudest pitched line of a mix only roughly).

The server needs the catalogue manifest for the masters (`earworm serve --catalogue manifest.csv`);
an index holds embeddings, not audio. Tracks are sent every `HOP_SECONDS` as MIDI note numbers,
0 where nothing is pitched (`protos.earworm.v1.PitchTrack`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_gen import constants as C

log = logging.getLogger(__name__)

HOP_SECONDS = 0.02
"""Frame spacing of the tracks sent (the YIN grid is 10 ms; every other frame is plenty for a plot)."""
MASTERS_CACHED = 16
"""Masters whose melody is kept in memory (a few people trying the page hit the same songs)."""


@dataclass(frozen=True)
class Contour:
    """A pitch track: MIDI note numbers every `hop_seconds` from `start_seconds`, 0 = unvoiced."""

    start_seconds: float
    hop_seconds: float
    midi: np.ndarray  # float32 [frames]
    source: str  # "yin" or "midi"

    def window(self, start_s: float, end_s: float) -> "Contour":
        """The frames from start_s to end_s (clipped to the track)."""
        first = max(0, int(np.floor((start_s - self.start_seconds) / self.hop_seconds)))
        last = max(first, int(np.ceil((end_s - self.start_seconds) / self.hop_seconds)) + 1)
        return Contour(self.start_seconds + first * self.hop_seconds, self.hop_seconds,
                       self.midi[first:last], self.source)


def yin_contour(audio: np.ndarray, hop_seconds: float = HOP_SECONDS) -> Contour:
    """The pitch of mono 16 kHz audio (YIN, the melody check's extractor), every `hop_seconds`."""
    from data_gen.pitch.yin import YinExtractor

    track = YinExtractor().extract(np.asarray(audio, np.float32))
    step = max(1, int(round(hop_seconds / C.PITCH_HOP_SECONDS)))
    f0, voiced = track.f0_hz[::step], track.voiced[::step]
    midi = np.where(voiced, 69.0 + 12.0 * np.log2(f0 / 440.0), 0.0).astype(np.float32)
    return Contour(0.0, step * C.PITCH_HOP_SECONDS, midi, "yin")


def midi_file_contour(path: Path | str, hop_seconds: float = HOP_SECONDS) -> Contour:
    """The melody of a MIDI file (its non-drum notes; the highest where notes overlap), every
    `hop_seconds` from 0. ValueError for a file without notes."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(path))
    notes = [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    if not notes:
        raise ValueError(f"{path}: no notes")
    frames = int(np.ceil(max(n.end for n in notes) / hop_seconds)) + 1
    midi = np.zeros(frames, np.float32)
    for n in sorted(notes, key=lambda n: n.pitch):  # the highest note wins where they overlap
        lo, hi = int(round(n.start / hop_seconds)), int(round(n.end / hop_seconds))
        midi[lo:max(hi, lo + 1)] = n.pitch
    return Contour(0.0, hop_seconds, midi, "midi")


class MasterMelodies:
    """The melody of each catalogue master, from its melody MIDI or its audio, computed on first use
    and kept for the last `MASTERS_CACHED` masters. `audio_path(track_id)` is the master's file."""

    def __init__(self, manifest: Path | str, cached: int = MASTERS_CACHED):
        from data_gen.manifest import read_catalogue

        self.manifest = Path(manifest)
        self._tracks = {t.track_id: t for t in read_catalogue(self.manifest, check_files=False)}
        self._cache: OrderedDict[str, Contour | None] = OrderedDict()
        self._cached = cached
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tracks)

    def audio_path(self, track_id: str) -> Path | None:
        track = self._tracks.get(track_id)
        return Path(track.path) if track is not None and Path(track.path).is_file() else None

    def melody(self, track_id: str) -> Contour | None:
        """The master's whole melody; None when the track is unknown or nothing can be read."""
        with self._lock:
            if track_id in self._cache:
                self._cache.move_to_end(track_id)
                return self._cache[track_id]
        contour = self._compute(track_id)
        with self._lock:
            self._cache[track_id] = contour
            while len(self._cache) > self._cached:
                self._cache.popitem(last=False)
        return contour

    def _compute(self, track_id: str) -> Contour | None:
        from data_gen.audio import AudioError, load_audio

        track = self._tracks.get(track_id)
        if track is None:
            return None
        midi = track.melody_midi
        if midi is not None and Path(midi).is_file():
            try:
                return midi_file_contour(midi)
            except Exception as e:  # noqa: BLE001 - a broken MIDI file: fall back to the audio
                log.warning("melody MIDI of %s unreadable (%s); using its audio", track_id, e)
        try:
            return yin_contour(load_audio(track.path, max_seconds=C.MAX_MASTER_SECONDS))
        except (AudioError, OSError) as e:
            log.warning("cannot read the master of %s for its melody: %s", track_id, e)
            return None

    def stretch(self, track_id: str, offset_s: float, seconds: float) -> Contour | None:
        """The master's melody from `offset_s` for `seconds` (None when unavailable)."""
        melody = self.melody(track_id)
        return None if melody is None else melody.window(offset_s, offset_s + seconds)
