"""Monophonic melodies from the folk-song and chorale corpus bundled with music21.

About 13,300 tunes: the Essen folk songs, O'Neill's 1850 Irish tunes, Aird's Airs, Ryan's Mammoth
Collection, a miscellany of folk tunes (all ABC files, many tunes per file: one tune = one melody,
identified by file + ABC number) and the Bach chorales (MusicXML; the soprano part is the melody).
They are the songs of Earworm's synthetic catalogue: `data_gen.render` arranges each one as a
polyphonic "master" recording.

Listing is cheap (music21's metadata bundle, cached as JSON under `artifacts_dir()/cache`);
parsing costs ~15-60 ms per tune, so tunes are parsed lazily, one at a time, by `load_melody`.

Times inside a `Melody` are in beats (quarter notes, music21's quarterLength); `bpm` is
quarter notes per minute. Beat 0 is the start of the first (possibly partial, "pickup") bar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from data_gen import paths

logger = logging.getLogger(__name__)

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")

# --- Corpus selection --------------------------------------------------------------------------
COLLECTIONS: dict[str, str] = {
    # music21 corpus folder -> short prefix used in melody ids
    "essenFolksong": "essen",
    "oneills1850": "oneills",
    "airdsAirs": "airds",
    "ryansMammoth": "ryans",
    "miscFolk": "miscfolk",
    "bach": "bach",
}
_CHORALE_FILE = re.compile(r"^bach/bwv\d+(\.\d+)?\.(mxl|xml)$")
_REFS_CACHE_VERSION = 1


@dataclass(frozen=True)
class MelodyConfig:
    """Defaults for selecting and normalising melodies (one place, not repeated as literals)."""

    split_train_percent: int = 80
    split_validation_percent: int = 10  # the rest is test
    min_notes: int = 12
    min_seconds: float = 4.0  # at the melody's default tempo
    max_range_semitones: int = 36  # wider is a parsing accident
    min_pitch: int = 21
    max_pitch: int = 108
    min_bpm: float = 60.0
    max_bpm: float = 150.0
    target_note_seconds: float = 0.38  # default tempo puts the median note near this length
    marked_bpm_range: tuple[float, float] = (50.0, 200.0)  # clamp for tempo marks in the score


CONFIG = MelodyConfig()


class MelodyError(ValueError):
    """A tune cannot be used as a melody (unparsable, too short, not monophonic material...)."""


@dataclass(frozen=True)
class Note:
    """One melody note: MIDI pitch, onset and duration in beats (quarter notes)."""

    pitch: int
    start: float
    duration: float

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(frozen=True)
class MelodyRef:
    """Where a tune lives in the music21 corpus; cheap to list, `load_melody` parses it."""

    melody_id: str
    corpus_path: str  # relative to music21's corpus folder, e.g. "essenFolksong/erk30.abc"
    number: int | None  # ABC tune number inside a multi-tune file
    collection: str  # music21 corpus folder, e.g. "essenFolksong"
    title: str
    note_count: int | None = None  # from music21's metadata (all parts for chorales)


@dataclass(frozen=True)
class Melody:
    """A normalised monophonic tune.

    `notes` are sorted, non-overlapping (rests are gaps), ties merged, grace notes dropped,
    chords reduced to their top note. Beat 0 is the start of the first bar; when the tune
    starts with an anacrusis of `pickup_beats` beats, the first full bar starts at beat
    `pickup_beats` and downbeats follow every `beats_per_bar` beats.
    """

    melody_id: str
    title: str
    source: str  # music21 corpus folder (collection)
    notes: tuple[Note, ...]
    bpm: float  # default tempo, quarter notes per minute
    time_signature: str = "4/4"
    pickup_beats: float = 0.0
    length_beats: float = 0.0  # end of the last bar (>= last note end)

    @property
    def beats_per_bar(self) -> float:
        return time_signature_beats(self.time_signature)

    @property
    def seconds(self) -> float:
        """Duration of the notes (first onset to last offset) at the default tempo."""
        if not self.notes:
            return 0.0
        return (self.notes[-1].end - self.notes[0].start) * 60.0 / self.bpm

    @property
    def split(self) -> Split:
        return split_of(self.melody_id)


# --- Splits and ids ------------------------------------------------------------------------------
def stable_hash(text: str) -> int:
    """A 64-bit integer hash of `text` that is identical on every run and machine."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def split_of(melody_id: str, config: MelodyConfig = CONFIG) -> Split:
    """Deterministic split from a hash of the id (80/10/10 by default), never random."""
    bucket = stable_hash(f"split:{melody_id}") % 100
    if bucket < config.split_train_percent:
        return "train"
    if bucket < config.split_train_percent + config.split_validation_percent:
        return "validation"
    return "test"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "_", text.lower()).strip("_")


def _melody_id(collection: str, corpus_path: str, number: int | None) -> str:
    stem = _slug(Path(corpus_path).stem)  # "bwv101.7.mxl" -> "bwv101.7"
    base = f"{COLLECTIONS[collection]}-{stem}"
    return f"{base}-{number}" if number is not None else base


def _nice_title(raw: str | None, collection: str, corpus_path: str) -> str:
    if collection == "bach":
        bwv = Path(corpus_path).name.rsplit(".", 1)[0].removeprefix("bwv")
        return f"Chorale BWV {bwv}"
    title = " ".join((raw or "").split())
    if not title:
        return Path(corpus_path).stem
    if title.isupper():  # Essen and Ryan's titles are all capitals
        title = " ".join(w[:1].upper() + w[1:].lower() for w in title.split(" "))
    return title


# --- Listing -------------------------------------------------------------------------------------
def _refs_cache_path() -> Path:
    import music21

    return paths.artifacts_dir() / "cache" / f"melody_refs-m21_{music21.__version__}-v{_REFS_CACHE_VERSION}.json"


def _list_refs_from_bundle() -> list[MelodyRef]:
    from music21 import corpus

    bundle = corpus.corpora.CoreCorpus().metadataBundle
    entries = []
    numbered_files: set[str] = set()
    for entry in bundle:
        source = str(entry.sourcePath)
        collection = source.split("/", 1)[0]
        if collection not in COLLECTIONS:
            continue
        if collection == "bach" and not _CHORALE_FILE.match(source):
            continue
        number = int(entry.number) if entry.number not in (None, "") else None
        if number is not None:
            numbered_files.add(source)
        entries.append((entry, source, collection, number))
    refs: dict[str, MelodyRef] = {}
    for entry, source, collection, number in entries:
        if number is None and source in numbered_files:
            continue  # the whole-file entry of a multi-tune file: its tunes are listed one by one
        md = entry.metadata
        if collection == "bach" and (getattr(md, "numberOfParts", None) or 0) < 4:
            continue
        melody_id = _melody_id(collection, source, number)
        if melody_id in refs:  # e.g. the same chorale as .mxl and .xml: keep the first by path
            if refs[melody_id].corpus_path <= source:
                continue
        note_count = getattr(md, "noteCount", None)
        refs[melody_id] = MelodyRef(
            melody_id=melody_id,
            corpus_path=source,
            number=number,
            collection=collection,
            title=_nice_title(getattr(md, "title", None), collection, source),
            note_count=int(note_count) if note_count else None,
        )
    return sorted(refs.values(), key=lambda r: r.melody_id)


_REFS: list[MelodyRef] | None = None


def list_melody_refs(*, use_cache: bool = True) -> list[MelodyRef]:
    """All usable-looking tunes of the corpus, sorted by id (no parsing; ~10 ms from the cache).

    The first call builds the list from music21's metadata bundle (1-10 s) and caches it as JSON
    under `artifacts_dir()/cache` (keyed by the music21 version).
    """
    global _REFS
    if _REFS is not None and use_cache:
        return _REFS
    cache = _refs_cache_path()
    if use_cache and cache.is_file():
        try:
            rows = json.loads(cache.read_text(encoding="utf-8"))
            _REFS = [MelodyRef(**row) for row in rows]
            return _REFS
        except (ValueError, TypeError) as e:
            logger.warning("ignoring unreadable melody list cache %s (%s)", cache, e)
    refs = _list_refs_from_bundle()
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps([asdict(r) for r in refs]), encoding="utf-8")
        os.replace(tmp, cache)
    _REFS = refs
    return refs


_BY_ID: dict[str, MelodyRef] = {}


def get_melody_ref(melody_id: str) -> MelodyRef:
    """The ref of a melody id. Raises `KeyError` for an unknown id."""
    refs = list_melody_refs()
    if len(_BY_ID) != len(refs):
        _BY_ID.clear()
        _BY_ID.update((r.melody_id, r) for r in refs)
    try:
        return _BY_ID[melody_id]
    except KeyError:
        raise KeyError(f"no melody with id {melody_id!r} in the corpus") from None


def iter_melody_refs(
    split: Split | Literal["all"] | None = None,
    *,
    seed: int = 0,
    exclude_melody_ids: Iterable[str] = (),
) -> Iterator[MelodyRef]:
    """Refs of one split (or all) in a deterministic order shuffled by `seed` (no parsing)."""
    if split not in (None, "all", *SPLITS):
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} or 'all'")
    excluded = set(exclude_melody_ids)
    refs = [
        r for r in list_melody_refs()
        if r.melody_id not in excluded and (split in (None, "all") or split_of(r.melody_id) == split)
    ]
    refs.sort(key=lambda r: (stable_hash(f"order:{seed}:{r.melody_id}"), r.melody_id))
    yield from refs


# --- Parsing and normalisation ------------------------------------------------------------------
def time_signature_beats(time_signature: str) -> float:
    """Bar length in quarter notes: "6/8" -> 3.0, "3/4" -> 3.0, "2/2" -> 4.0."""
    try:
        num, den = time_signature.split("/")
        return 4.0 * int(num) / int(den)
    except (ValueError, ZeroDivisionError) as e:
        raise MelodyError(f"bad time signature {time_signature!r}") from e


def _pick_part(score: object, collection: str) -> object:
    from music21 import stream

    if isinstance(score, stream.Opus):
        scores = list(score.scores)
        if not scores:
            raise MelodyError("the file holds no tune")
        score = scores[0]
    parts = list(getattr(score, "parts", []))
    if not parts:
        return score  # a bare stream of notes
    if collection == "bach":
        for part in parts:
            name = f"{part.partName or ''} {part.id or ''}".lower()
            if "soprano" in name:
                return part
    return parts[0]


def _normalise_notes(raw: Sequence[tuple[float, float, int]]) -> list[Note]:
    """(start, duration, pitch) of possibly overlapping notes -> sorted monophonic `Note`s.

    Simultaneous onsets keep the highest pitch (the tune in a double stop); a note that is
    still sounding when the next one starts is cut there; notes shorter than 1/64 beat go.
    """
    by_onset: dict[float, tuple[float, int]] = {}
    for start, dur, pitch in raw:
        key = round(float(start), 6)
        if key not in by_onset or pitch > by_onset[key][1]:
            by_onset[key] = (float(dur), int(pitch))
    onsets = sorted(by_onset)
    notes = []
    for i, start in enumerate(onsets):
        dur, pitch = by_onset[start]
        end = start + dur
        if i + 1 < len(onsets):
            end = min(end, onsets[i + 1])
        if end - start >= 1.0 / 64:
            notes.append(Note(pitch=pitch, start=start, duration=round(end - start, 6)))
    return notes


def _default_bpm(notes: Sequence[Note], marked_bpm: float | None, config: MelodyConfig) -> float:
    if marked_bpm and math.isfinite(marked_bpm) and marked_bpm > 0:
        lo, hi = config.marked_bpm_range
        return float(round(min(max(marked_bpm, lo), hi)))
    durations = sorted(n.duration for n in notes)
    median = durations[len(durations) // 2]
    bpm = 60.0 * median / config.target_note_seconds
    return float(round(min(max(bpm, config.min_bpm), config.max_bpm)))


def melody_from_stream(
    part: object,
    *,
    melody_id: str,
    title: str,
    source: str,
    config: MelodyConfig = CONFIG,
) -> Melody:
    """A music21 Part/Stream (one voice) -> normalised `Melody`. Raises `MelodyError`."""
    from music21 import bar, chord, harmony, meter, note, tempo

    if any(isinstance(b, bar.Repeat) for b in part.recurse().getElementsByClass(bar.Barline)):
        try:
            part = part.expandRepeats()
        except Exception as e:  # music21 raises assorted errors on odd repeat structures
            logger.debug("%s: repeats not expanded (%s)", melody_id, e)
    measures = list(part.getElementsByClass("Measure"))
    ts = next(iter(part.recurse().getElementsByClass(meter.TimeSignature)), None)
    time_signature = ts.ratioString if ts is not None else "4/4"
    try:
        bar_beats = time_signature_beats(time_signature)
    except MelodyError:
        time_signature, bar_beats = "4/4", 4.0
    if bar_beats <= 0:
        time_signature, bar_beats = "4/4", 4.0
    mm = next(iter(part.recurse().getElementsByClass(tempo.MetronomeMark)), None)
    marked_bpm = None
    if mm is not None:
        try:
            marked_bpm = float(mm.getQuarterBPM() or 0) or None
        except Exception:  # a mark without a number
            marked_bpm = None

    raw: list[tuple[float, float, int]] = []
    for el in part.flatten().notes:
        if isinstance(el, harmony.Harmony) or el.duration.isGrace or el.quarterLength <= 0:
            continue
        if isinstance(el, chord.Chord):
            pitches = [p.midi for p in el.pitches]
            if not pitches:
                continue
            pitch = max(pitches)
        elif isinstance(el, note.Note):
            pitch = el.pitch.midi
        else:
            continue  # unpitched percussion
        start, dur = float(el.offset), float(el.quarterLength)
        tie = el.tie.type if el.tie is not None else None
        if tie in ("stop", "continue") and raw:
            prev_start, prev_dur, prev_pitch = raw[-1]
            if prev_pitch == pitch and abs(prev_start + prev_dur - start) < 1e-6:
                raw[-1] = (prev_start, prev_dur + dur, prev_pitch)  # merge the tied note
                continue
        raw.append((start, dur, int(pitch)))
    notes = _normalise_notes(raw)
    if len(notes) < 2:
        raise MelodyError(f"{melody_id}: only {len(notes)} note(s)")

    pickup = 0.0
    if len(measures) >= 2:
        first_len = float(measures[1].offset - measures[0].offset)
        if 0 < first_len < bar_beats - 1e-6:
            pickup = first_len
    # Drop whole bars of leading rest, keeping the bar grid.
    first = notes[0].start
    grid0 = pickup if pickup else 0.0
    shift = 0.0
    if first >= grid0 + bar_beats - 1e-6 or (pickup and first >= pickup - 1e-6):
        shift = grid0 + math.floor((first - grid0) / bar_beats + 1e-9) * bar_beats
        pickup = 0.0
    if shift:
        notes = [Note(n.pitch, round(n.start - shift, 6), n.duration) for n in notes]
    length = max(float(part.highestTime) - shift, notes[-1].end)

    pitches = [n.pitch for n in notes]
    if min(pitches) < config.min_pitch or max(pitches) > config.max_pitch:
        raise MelodyError(f"{melody_id}: pitches {min(pitches)}..{max(pitches)} out of range")
    if max(pitches) - min(pitches) > config.max_range_semitones:
        raise MelodyError(f"{melody_id}: range of {max(pitches) - min(pitches)} semitones")
    return Melody(
        melody_id=melody_id,
        title=title,
        source=source,
        notes=tuple(notes),
        bpm=_default_bpm(notes, marked_bpm, config),
        time_signature=time_signature,
        pickup_beats=round(pickup, 6),
        length_beats=round(length, 6),
    )


_PARSE_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_beaming() -> Iterator[None]:
    """Skip music21's beaming while parsing ABC: it is about half the parse time and only
    matters for engraving (beams never change pitches or timing). Parses are serialised by a
    lock, so concurrent threads never see (or restore) each other's patch."""
    from music21 import stream

    with _PARSE_LOCK:
        original = stream.Stream.makeBeams

        def _no_beams(self, *args, **kwargs):  # same call shape as Stream.makeBeams
            return None if kwargs.get("inPlace") else self

        stream.Stream.makeBeams = _no_beams
        try:
            yield
        finally:
            stream.Stream.makeBeams = original


def load_melody(ref: MelodyRef | str, *, config: MelodyConfig = CONFIG) -> Melody:
    """Parse one tune (~15-60 ms). Raises `MelodyError` if it is unparsable or unusable."""
    if isinstance(ref, str):
        ref = get_melody_ref(ref)
    import music21
    from music21 import converter

    path = Path(music21.common.getCorpusFilePath()) / ref.corpus_path
    try:
        with warnings.catch_warnings(), _without_beaming():
            warnings.simplefilter("ignore")
            if ref.number is not None:
                score = converter.parse(path, number=ref.number, forceSource=True)
            else:
                score = converter.parse(path, forceSource=True)
            if score is None:
                raise MelodyError(f"{ref.melody_id}: tune {ref.number} not found in {ref.corpus_path}")
            part = _pick_part(score, ref.collection)
            return melody_from_stream(
                part, melody_id=ref.melody_id, title=ref.title, source=ref.collection, config=config
            )
    except MelodyError:
        raise
    except Exception as e:  # music21 parsers raise many unrelated exception types
        raise MelodyError(f"{ref.melody_id}: cannot parse {ref.corpus_path} ({type(e).__name__}: {e})") from e


def check_usable(
    melody: Melody, *, min_notes: int = CONFIG.min_notes, min_seconds: float = CONFIG.min_seconds
) -> None:
    """Raise `MelodyError` saying why a melody is too small to be a song."""
    if len(melody.notes) < min_notes:
        raise MelodyError(f"{melody.melody_id}: {len(melody.notes)} notes < {min_notes}")
    if melody.seconds < min_seconds:
        raise MelodyError(f"{melody.melody_id}: {melody.seconds:.1f} s < {min_seconds:g} s")


def iter_melodies(
    split: Split | Literal["all"] | None = None,
    *,
    seed: int = 0,
    limit: int | None = None,
    min_notes: int = CONFIG.min_notes,
    min_seconds: float = CONFIG.min_seconds,
    exclude_melody_ids: Iterable[str] = (),
) -> Iterator[Melody]:
    """Usable melodies of a split in a deterministic order shuffled by `seed`, parsed lazily.

    Unparsable or too small tunes are skipped with a logged reason.
    """
    count = 0
    for ref in iter_melody_refs(split, seed=seed, exclude_melody_ids=exclude_melody_ids):
        if limit is not None and count >= limit:
            return
        if ref.note_count is not None and ref.collection != "bach" and ref.note_count < min_notes:
            logger.info("skipping %s: %d notes < %d", ref.melody_id, ref.note_count, min_notes)
            continue
        try:
            melody = load_melody(ref)
            check_usable(melody, min_notes=min_notes, min_seconds=min_seconds)
        except MelodyError as e:
            logger.info("skipping melody: %s", e)
            continue
        count += 1
        yield melody


# --- Conversions ---------------------------------------------------------------------------------
def melody_notes_seconds(
    melody: Melody, bpm: float | None = None, *, offset_seconds: float = 0.0, transpose: int = 0
) -> list[tuple[float, float, int]]:
    """[(onset_s, offset_s, midi_pitch)] at `bpm` (default: the melody's own tempo)."""
    spb = 60.0 / (bpm or melody.bpm)
    return [
        (offset_seconds + n.start * spb, offset_seconds + n.end * spb, n.pitch + transpose)
        for n in melody.notes
    ]


def melody_to_pretty_midi(
    melody: Melody,
    bpm: float | None = None,
    *,
    program: int = 0,
    velocity: int = 100,
    offset_seconds: float = 0.0,
    transpose: int = 0,
):
    """The melody alone as a `pretty_midi.PrettyMIDI` (tempo = `bpm`, so ticks fall on beats)."""
    import pretty_midi

    bpm = bpm or melody.bpm
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=bpm)
    num, den = (int(x) for x in melody.time_signature.split("/"))
    pm.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0.0))
    inst = pretty_midi.Instrument(program=program, name="melody")
    for on, off, pitch in melody_notes_seconds(
        melody, bpm, offset_seconds=offset_seconds, transpose=transpose
    ):
        inst.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch, start=on, end=off))
    pm.instruments.append(inst)
    return pm
