"""Rendering an `Arrangement` to a mono master recording with FluidSynth and a GM soundfont.

`render_master(melody, seed)` = `arrange` + `synthesize`: one fresh FluidSynth instance per
render (so a render never depends on the one before it: same seed, same samples), driven
sample-accurately from the arrangement's note list (no MIDI file round trip), written as float
samples at `SAMPLE_RATE`, down-mixed to mono and peak-normalised to about -1 dBFS.

The MIDI returned alongside (`midi_full`, `midi_melody`) carries exactly the note times used
for the audio; its tempo is the master's tempo, so notes fall on whole ticks.

Soundfont: $EARWORM_SOUNDFONT, else FluidR3_GM / default-GM / TimGM6mb from the usual Debian
folders. Per-program loudness is measured once per process (one note per program) so that the
mix levels of the arrangement mean the same thing for a flute and for a distorted guitar.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_gen import constants as C
from data_gen.arrangement import CONFIG as ARRANGEMENT_CONFIG
from data_gen import paths
from data_gen.arrangement import Arrangement, ArrangementConfig, Part, arrange
from data_gen.arrangement_styles import DRUM_KITS, LEAD_RANGES, STYLES
from data_gen.melodies import Melody

logger = logging.getLogger(__name__)

SOUNDFONT_ENV = "EARWORM_SOUNDFONT"
SOUNDFONT_CANDIDATES = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
    Path("/usr/share/soundfonts/default.sf2"),
)
DRUM_CHANNEL = 9
RENDER_VERSION = 3  # bump when the same (melody, seed) would sound different


class SoundfontNotFoundError(FileNotFoundError):
    """No General MIDI soundfont could be found."""


class RenderError(RuntimeError):
    """FluidSynth could not render the arrangement (or rendered silence)."""


@dataclass(frozen=True)
class RenderConfig:
    sample_rate: int = C.SAMPLE_RATE
    peak_dbfs: float = -1.0
    synth_gain: float = 0.4
    polyphony: int = 256
    headroom_db: float = 3.0  # the lead's channel volume sits this far below full scale
    fade_out_seconds: float = 2.5  # when the tune was cut short
    end_fade_seconds: float = 0.3  # always, against a click at the very end
    calibration_seconds: float = 0.5
    arrangement: ArrangementConfig = field(default_factory=lambda: ARRANGEMENT_CONFIG)
    sung_lead_share: float = 0.0
    """Share of tracks whose melody a singing voice carries (syllables on the melody,
    data_gen.synth.sung) instead of the General MIDI lead, as in most real catalogues."""
    sung_lead_doubled: float = 0.35
    """Of the sung tracks, the share where the instrument still doubles the voice, quieter."""
    doubled_lead_db: tuple[float, float] = (-14.0, -6.0)
    """How far below its usual level a doubling instrument plays."""


CONFIG = RenderConfig()


@dataclass(frozen=True)
class RenderedMaster:
    """A rendered master: mono float32 audio [time] plus the MIDI it was rendered from."""

    audio: np.ndarray  # [time] float32, peak about -1 dBFS
    sample_rate: int
    midi_full: object  # pretty_midi.PrettyMIDI: every part, as rendered
    midi_melody: object  # pretty_midi.PrettyMIDI: the lead part only (instrument "melody")
    info: dict
    arrangement: Arrangement | None = None

    @property
    def duration_seconds(self) -> float:
        return self.audio.shape[0] / self.sample_rate


# --- Soundfont and synth -------------------------------------------------------------------------
def find_soundfont() -> Path:
    """The GM soundfont to use ($EARWORM_SOUNDFONT first). Raises `SoundfontNotFoundError`."""
    env = os.environ.get(SOUNDFONT_ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise SoundfontNotFoundError(f"${SOUNDFONT_ENV} points to {p}, which is not a file")
        return p
    for p in SOUNDFONT_CANDIDATES:
        if p.is_file():
            return p.resolve()
    try:  # pretty_midi ships a small GM soundfont (TimGM6mb) as a last resort
        import pretty_midi

        bundled = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
        if bundled.is_file():
            return bundled
    except ImportError:
        pass
    raise SoundfontNotFoundError(
        "no General MIDI soundfont found; install one (Debian: apt-get install fluid-soundfont-gm) "
        f"or set ${SOUNDFONT_ENV} to an .sf2 file (looked in: "
        + ", ".join(str(p) for p in SOUNDFONT_CANDIDATES) + ")"
    )


_LOCK = threading.RLock()
_ANCHOR_LOCK = threading.Lock()
_ANCHORS: dict[tuple[str, int], object] = {}  # keeps the soundfont's samples cached in memory
_LOUDNESS: dict[tuple[str, int], dict[tuple[bool, int], float]] = {}
_write_float = None


def _fluidsynth():
    try:
        import fluidsynth
    except (ImportError, OSError) as e:  # pyfluidsynth raises ImportError when libfluidsynth is missing
        raise RenderError(f"FluidSynth is not available ({e}); install libfluidsynth3 and pyfluidsynth") from e
    return fluidsynth


def _writer():
    global _write_float
    if _write_float is None:
        fs = _fluidsynth()
        _write_float = fs.cfunc(
            "fluid_synth_write_float", ctypes.c_int,
            ("synth", ctypes.c_void_p, 1), ("len", ctypes.c_int, 1),
            ("lout", ctypes.c_void_p, 1), ("loff", ctypes.c_int, 1), ("lincr", ctypes.c_int, 1),
            ("rout", ctypes.c_void_p, 1), ("roff", ctypes.c_int, 1), ("rincr", ctypes.c_int, 1),
        )
        if _write_float is None:
            raise RenderError("libfluidsynth lacks fluid_synth_write_float")
    return _write_float


def _new_synth(soundfont: Path, sample_rate: int, config: RenderConfig, reverb: dict | None = None,
               *, dry_run: bool = False):
    """A fresh synth with the soundfont loaded: (synth, sfid). `dry_run`: no reverb/chorus."""
    fs = _fluidsynth()
    settings = {
        "synth.polyphony": config.polyphony,
        "synth.cpu-cores": 1,
        "synth.reverb.active": 0 if dry_run else 1,
        "synth.chorus.active": 0 if dry_run else 1,
    }
    if reverb:
        settings.update({
            "synth.reverb.room-size": float(reverb["roomsize"]),
            "synth.reverb.damp": float(reverb["damping"]),
            "synth.reverb.width": float(reverb["width"]) * 100.0,
            "synth.reverb.level": float(reverb["level"]),
        })
    key = (str(soundfont), sample_rate)
    with _ANCHOR_LOCK:
        if key not in _ANCHORS:  # a synth that lives as long as the process: later loads are cached
            anchor = fs.Synth(gain=config.synth_gain, samplerate=float(sample_rate))
            if anchor.sfload(str(soundfont)) < 0:
                raise RenderError(f"FluidSynth could not load the soundfont {soundfont}")
            _ANCHORS[key] = anchor
    synth = fs.Synth(gain=config.synth_gain, samplerate=float(sample_rate), **settings)
    sfid = synth.sfload(str(soundfont))
    if sfid < 0:
        synth.delete()
        raise RenderError(f"FluidSynth could not load the soundfont {soundfont}")
    return synth, sfid


def _render_events(synth, events: list[tuple[int, int, tuple]], total: int) -> np.ndarray:
    """Run time-stamped synth calls and render [total, 2] float32 samples."""
    write = _writer()
    buf = np.zeros((total, 2), dtype=np.float32)
    ptr = buf.ctypes.data
    pos = 0
    for sample, _order, call in events:
        sample = min(max(sample, 0), total)
        if sample > pos:
            write(synth.synth, sample - pos, ptr, 2 * pos, 2, ptr, 2 * pos + 1, 2)
            pos = sample
        name, *args = call
        getattr(synth, name)(*args)
    if total > pos:
        write(synth.synth, total - pos, ptr, 2 * pos, 2, ptr, 2 * pos + 1, 2)
    return buf


def loudness_table(soundfont: Path | None = None, sample_rate: int = C.SAMPLE_RATE,
                   config: RenderConfig = CONFIG) -> dict[tuple[bool, int], float]:
    """RMS level (dB) of one mezzo-forte note of every GM program and drum kit (a snare hit),
    keyed by (is_drum, program); used to balance the mix.

    Measured once per process, all programs in a fixed order on one dry synth (no reverb or
    chorus, every voice killed after each note), so the table never depends on which tracks a
    process rendered before.
    """
    soundfont = soundfont or find_soundfont()
    key = (str(soundfont), sample_rate)
    with _LOCK:
        if key in _LOUDNESS:
            return _LOUDNESS[key]
        stat = soundfont.stat()
        cache = paths.artifacts_dir() / "cache" / (
            f"soundfont_levels-{soundfont.stem}-{stat.st_size}-{int(stat.st_mtime)}-{sample_rate}"
            f"-{config.calibration_seconds:g}-v{RENDER_VERSION}.json")
        if cache.is_file():
            try:
                rows = json.loads(cache.read_text(encoding="utf-8"))
                _LOUDNESS[key] = {(bool(d), int(p)): float(v) for d, p, v in rows}
                return _LOUDNESS[key]
            except (ValueError, TypeError) as e:
                logger.warning("ignoring unreadable soundfont level cache %s (%s)", cache, e)
        synth, sfid = _new_synth(soundfont, sample_rate, config, dry_run=True)
        table: dict[tuple[bool, int], float] = {}
        n = int(config.calibration_seconds * sample_rate)
        try:
            for is_drum, program in _calibrated_programs():
                ch = DRUM_CHANNEL if is_drum else 0
                if synth.program_select(ch, sfid, 128 if is_drum else 0, program) < 0:
                    continue
                lo, hi = LEAD_RANGES.get(program, (55, 67))
                pitch = 38 if is_drum else (40 if program in _LOW_PROGRAMS else (lo + hi) // 2)
                events = [(0, 0, ("cc", ch, 7, 127)), (0, 1, ("noteon", ch, pitch, 90)),
                          (int(0.6 * n), 0, ("noteoff", ch, pitch))]
                buf = _render_events(synth, events, n)
                synth.all_sounds_off(ch)
                synth.get_samples(256)  # let the killed voices go
                rms = float(np.sqrt(np.mean(np.square(buf.mean(axis=1), dtype=np.float64))))
                table[(is_drum, program)] = round(20.0 * math.log10(rms + 1e-9), 2)
        finally:
            synth.delete()
        _LOUDNESS[key] = table
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps([[int(d), p, v] for (d, p), v in sorted(table.items())]), encoding="utf-8")
            os.replace(tmp, cache)
        except OSError as e:  # a read-only artifacts folder only costs time
            logger.debug("cannot cache soundfont levels (%s)", e)
        return table


def _calibrated_programs() -> list[tuple[bool, int]]:
    """Every (is_drum, program) an arrangement can use, in a fixed order."""
    melodic: set[int] = {47}
    for st in STYLES.values():
        melodic.update(st.leads, (p for p, _ in st.chords), (p for p, _ in st.basses), st.pads, st.arps)
    return [(False, p) for p in sorted(melodic)] + [(True, k) for k in sorted(DRUM_KITS)]


def program_loudness_db(program: int, is_drum: bool, soundfont: Path | None = None,
                        sample_rate: int = C.SAMPLE_RATE, config: RenderConfig = CONFIG) -> float:
    """One entry of `loudness_table` (-30 dB for a program the soundfont lacks)."""
    return loudness_table(soundfont, sample_rate, config).get((is_drum, program), -30.0)


_LOW_PROGRAMS = frozenset({32, 33, 34, 35, 36, 37, 38, 39, 43, 47, 58})  # basses, tuba, timpani


# --- MIDI ----------------------------------------------------------------------------------------
def _note_seconds(arr: Arrangement, part: Part) -> list[tuple[float, float, int, int]]:
    """(onset_s, offset_s, pitch, velocity) exactly as rendered."""
    spb = arr.seconds_per_beat
    out = []
    for n in part.notes:
        on = max(0.0, n.start * spb + n.jitter_s)
        off = max(on + 0.01, n.end * spb + n.jitter_s)
        out.append((round(on, 6), round(off, 6), n.pitch, n.velocity))
    return out


def _channel_volume(level_db: float, loudness_db: float, reference_db: float, config: RenderConfig) -> int:
    """CC7 for a part: FluidSynth's volume curve is about 40*log10(cc/127) dB."""
    db = level_db - config.headroom_db - (loudness_db - reference_db)
    return int(min(127, max(8, round(127 * 10 ** (db / 40.0)))))


def _mix(arr: Arrangement, soundfont: Path, sample_rate: int, config: RenderConfig) -> list[dict]:
    """Channel, CC7, pan and sends for each part (lead on channel 0, drums on 9)."""
    lead = arr.lead
    ref = program_loudness_db(lead.program, lead.is_drum, soundfont, sample_rate, config)
    channels = [c for c in range(16) if c != DRUM_CHANNEL]
    mix = []
    for i, part in enumerate(arr.parts):
        loud = program_loudness_db(part.program, part.is_drum, soundfont, sample_rate, config)
        mix.append({
            "channel": DRUM_CHANNEL if part.is_drum else channels[i],
            "volume": _channel_volume(part.level_db, loud, ref, config),
            "pan": part.pan,
            "reverb": part.reverb_send,
            "chorus": part.chorus_send,
        })
    return mix


def arrangement_to_midi(arr: Arrangement, *, roles: tuple[str, ...] | None = None, mix: list[dict] | None = None):
    """The arrangement (or the parts with the given roles) as a `pretty_midi.PrettyMIDI`."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=arr.bpm)
    num, den = (int(x) for x in arr.time_signature.split("/"))
    pm.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0.0))
    for i, part in enumerate(arr.parts):
        if roles is not None and part.role not in roles:
            continue
        name = "melody" if part.role == "lead" else part.role
        inst = pretty_midi.Instrument(program=part.program, is_drum=part.is_drum, name=name)
        if mix is not None:
            for cc, key in ((7, "volume"), (10, "pan"), (91, "reverb"), (93, "chorus")):
                inst.control_changes.append(pretty_midi.ControlChange(cc, int(mix[i][key]), 0.0))
        for on, off, pitch, vel in _note_seconds(arr, part):
            inst.notes.append(pretty_midi.Note(velocity=vel, pitch=pitch, start=on, end=off))
        pm.instruments.append(inst)
    return pm


# --- Audio ---------------------------------------------------------------------------------------
def synthesize(
    arr: Arrangement,
    *,
    soundfont: Path | None = None,
    sample_rate: int = C.SAMPLE_RATE,
    config: RenderConfig = CONFIG,
    lead_gain_db: float = 0.0,
) -> tuple[np.ndarray, list[dict]]:
    """Render the arrangement: (mono float32 [time], per-part mix settings). Not normalised.
    `lead_gain_db` moves the lead instrument's level (-inf: it does not play)."""
    soundfont = soundfont or find_soundfont()
    mix = _mix(arr, soundfont, sample_rate, config)
    lead_index = next(i for i, p in enumerate(arr.parts) if p.role == "lead")
    if math.isinf(lead_gain_db) and lead_gain_db < 0:
        mix[lead_index] = {**mix[lead_index], "volume": 0, "muted": True}
    elif lead_gain_db:
        vol = mix[lead_index]["volume"] * 10 ** (lead_gain_db / 40.0)  # FluidSynth: ~40*log10(cc/127) dB
        mix[lead_index] = {**mix[lead_index], "volume": int(min(127, max(1, round(vol))))}
    tail = config.arrangement.tail_seconds
    total = int(math.ceil((arr.end_beats * arr.seconds_per_beat + tail) * sample_rate))
    events: list[tuple[int, int, tuple]] = []
    for part, m in zip(arr.parts, mix):
        if m.get("muted"):
            continue
        ch = m["channel"]
        events += [(0, 0, ("cc", ch, 7, m["volume"])), (0, 0, ("cc", ch, 10, m["pan"])),
                   (0, 0, ("cc", ch, 91, m["reverb"])), (0, 0, ("cc", ch, 93, m["chorus"]))]
        for on, off, pitch, vel in _note_seconds(arr, part):
            s_on, s_off = int(round(on * sample_rate)), int(round(off * sample_rate))
            events.append((s_on, 2, ("noteon", ch, pitch, vel)))
            events.append((max(s_off, s_on + 1), 1, ("noteoff", ch, pitch)))
    events.sort(key=lambda e: (e[0], e[1], e[2][1], e[2][2]))
    synth, sfid = _new_synth(soundfont, sample_rate, config, arr.reverb)
    try:
        for part, m in zip(arr.parts, mix):
            bank = 128 if part.is_drum else 0
            if synth.program_select(m["channel"], sfid, bank, part.program) < 0 and part.is_drum:
                synth.program_select(m["channel"], sfid, 128, 0)  # the soundfont lacks this kit
        stereo = _render_events(synth, events, total)
    finally:
        synth.delete()
    return stereo.mean(axis=1).astype(np.float32), mix


@dataclass(frozen=True)
class SungLead:
    """A master whose melody is sung: `seed` draws the singer, `doubled_db` is the level of the
    instrument doubling the voice (None: the voice alone)."""

    seed: int
    doubled_db: float | None = None

    @classmethod
    def draw(cls, seed: int, config: RenderConfig) -> SungLead | None:
        """Whether track `seed` is sung (deterministic; None when not)."""
        rng = np.random.default_rng([abs(int(seed)), 7])
        if not rng.random() < config.sung_lead_share:
            return None
        doubled = rng.random() < config.sung_lead_doubled
        return cls(int(seed), float(rng.uniform(*config.doubled_lead_db)) if doubled else None)


def _sing_lead(arr: Arrangement, lead: SungLead, total: int, sample_rate: int) -> tuple[np.ndarray, int, dict]:
    """The lead's notes sung on syllables in a singer's register: (audio [total], octave shift in
    semitones, singer info)."""
    import dataclasses

    from data_gen.synth.contour import contour_from_notes
    from data_gen.synth.deviations import REGISTERS_HZ, register_shift
    from data_gen.synth.sung import SungVoice, render_sung

    rng = np.random.default_rng([lead.seed, 8])
    notes = [(on, off, float(pitch)) for on, off, pitch, _ in _note_seconds(arr, arr.lead)]
    register = str(rng.choice(["low", "high"]))
    shift = register_shift(notes, *REGISTERS_HZ["sung"][register])
    notes = [(a, b, p + shift) for a, b, p in notes]
    legato = [bool(rng.random() < 0.5) for _ in range(len(notes) - 1)]
    contour = contour_from_notes(notes, gap_s=0.03, glide_s=float(rng.uniform(0.03, 0.08)), legato=legato,
                                 end_s=total / sample_rate)
    voice = SungVoice.sample(rng)
    if register == "high":
        voice = dataclasses.replace(voice, formant_scale=float(rng.uniform(1.06, 1.22)))
    audio = render_sung(contour, voice, rng).astype(np.float64)
    if sample_rate != C.SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, C.SAMPLE_RATE, sample_rate)
    audio = np.pad(audio[:total], (0, max(0, total - audio.shape[0])))
    return audio, shift, {"register": register, "engine": voice.engine, "syllables": list(voice.syllables)}


def _fade(audio: np.ndarray, seconds: float, sample_rate: int) -> np.ndarray:
    n = min(audio.shape[0], int(seconds * sample_rate))
    if n > 1:
        audio[-n:] *= (0.5 * (1 + np.cos(np.linspace(0, np.pi, n)))).astype(np.float32)
    return audio


def render_arrangement(
    arr: Arrangement,
    *,
    soundfont: Path | None = None,
    sample_rate: int = C.SAMPLE_RATE,
    config: RenderConfig = CONFIG,
    extra_info: dict | None = None,
    sung_lead: SungLead | None = None,
) -> RenderedMaster:
    """Render `arr`; with `sung_lead`, a voice sings the lead `arr.lead_margin_db` above the
    accompaniment (measured where it sings), alone or doubled by the quieter instrument."""
    lead_gain = 0.0 if sung_lead is None else (
        -math.inf if sung_lead.doubled_db is None else sung_lead.doubled_db)
    audio, mix = synthesize(arr, soundfont=soundfont, sample_rate=sample_rate, config=config, lead_gain_db=lead_gain)
    shift, singer = 0, None
    if sung_lead is not None:
        from data_gen.synth import dsp

        vocal, shift, singer = _sing_lead(arr, sung_lead, audio.shape[0], sample_rate)
        sings = np.abs(vocal) > 0.05 * max(float(np.max(np.abs(vocal))), 1e-9)
        target = dsp.rms(audio[sings]) * 10 ** (arr.lead_margin_db / 20.0)
        audio = (audio + vocal * (target / max(dsp.rms(vocal[sings]), 1e-9))).astype(np.float32)
    if arr.cut:
        audio = _fade(audio, config.fade_out_seconds + config.arrangement.tail_seconds, sample_rate)
    audio = _fade(audio, config.end_fade_seconds, sample_rate)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not math.isfinite(peak) or peak < 1e-6:
        raise RenderError(f"{arr.melody_id}: FluidSynth rendered silence")
    audio = (audio * (10 ** (config.peak_dbfs / 20.0) / peak)).astype(np.float32)
    spb = arr.seconds_per_beat
    info = {
        "melody_id": arr.melody_id,
        "style": arr.style,
        "bpm": arr.bpm,
        "key_shift": arr.key_shift,
        "key": arr.key_name,
        "time_signature": arr.time_signature,
        "intro_seconds": round(arr.intro_beats * spb, 4),
        "melody_offset_seconds": round(arr.melody_offset_beats * spb, 6),
        "period_seconds": round(arr.period_beats * spb, 6),
        "copies": arr.copies,
        "cut": arr.cut,
        "duration_seconds": round(audio.shape[0] / sample_rate, 3),
        "lead_margin_db": arr.lead_margin_db,
        "reverb": dict(arr.reverb),
        "instruments": [
            {"role": p.role, "program": p.program, "name": p.instrument_name, "is_drum": p.is_drum,
             "volume": m["volume"]}
            for p, m in zip(arr.parts, mix)
        ],
        "chords": " ".join(c.name for c in arr.chords[:16]),
        "render_version": RENDER_VERSION,
        "lead_voice": "instrument" if sung_lead is None else "sung",
        **(extra_info or {}),
    }
    if sung_lead is not None:
        info.update(lead_doubled_db=None if sung_lead.doubled_db is None else round(sung_lead.doubled_db, 2),
                    lead_sung_shift=shift, singer=singer)
    midi_melody = arrangement_to_midi(arr, roles=("lead",))
    if shift:  # the melody file follows the voice's octave
        for inst in midi_melody.instruments:
            for note in inst.notes:
                note.pitch += shift
    return RenderedMaster(
        audio=audio,
        sample_rate=sample_rate,
        midi_full=arrangement_to_midi(arr, mix=mix),
        midi_melody=midi_melody,
        info=info,
        arrangement=arr,
    )


def render_master(
    melody: Melody,
    seed: int,
    *,
    style: str | None = None,
    soundfont: Path | None = None,
    sample_rate: int = C.SAMPLE_RATE,
    config: RenderConfig = CONFIG,
) -> RenderedMaster:
    """Arrange `melody` from `seed` and render it (same inputs -> identical samples); a share
    `config.sung_lead_share` of seeds get a sung lead."""
    arr = arrange(melody, seed, style=style, config=config.arrangement)
    return render_arrangement(
        arr, soundfont=soundfont, sample_rate=sample_rate, config=config,
        extra_info={"seed": int(seed), "title": melody.title, "source": melody.source},
        sung_lead=SungLead.draw(seed, config),
    )
