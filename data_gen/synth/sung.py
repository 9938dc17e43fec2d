"""A sung tune on nonsense syllables ("la", "da", "na", "doo"...).

Two engines:

- "world" (default when `espeak-ng` is installed): espeak-ng speaks one syllable (Spanish voice:
  pure vowels), the WORLD vocoder (pyworld: harvest / cheaptrick / d4c) turns it into a spectral
  envelope and an aperiodicity per 10 ms frame, and every note of the contour reuses them: the
  syllable's consonant-to-vowel onset at its natural speed, then its steady vowel stretched to the
  note's length, all re-synthesized on the contour's f0 in one pass (so notes join smoothly).
  The envelope is warped along frequency by `formant_scale` (shorter vocal tract: female/child).
- "formant": a source-filter vowel synthesizer (no external tools): the same harmonic source as
  the hum, through five time-varying vowel formants with consonant onsets (l, n, m, d) gliding
  into the vowel. Used when espeak-ng is missing, and available on request.
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import subprocess
import warnings
from dataclasses import dataclass

import numpy as np

from data_gen import constants as C
from data_gen.synth import dsp
from data_gen.synth.contour import Contour, SynthError, note_segments
from data_gen.synth.hum import NASAL_FORMANTS, NASAL_ZEROS, apply_jitter

logger = logging.getLogger(__name__)

ENGINES = ("world", "formant")
SYLLABLES = ("la", "da", "na", "ma", "lu", "du", "di", "ba")
"""Syllables both engines can sing (written as Spanish spells them)."""
SYLLABLE_SETS = (("la",), ("da",), ("na",), ("la", "da"), ("du",), ("lu",), ("da", "di"), ("na", "ma"), ("ba", "da"))
ESPEAK_VOICES = ("es", "es+m3", "es+klatt", "es+klatt2")
WORLD_FFT_SIZE = 1024  # cheaptrick's FFT size at 16 kHz -> 513 bins


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


@functools.lru_cache(maxsize=1)
def default_engine() -> str:
    """"world" when espeak-ng is installed, else "formant" (logged once)."""
    if espeak_available():
        return "world"
    logger.warning("espeak-ng not found: sung queries use the formant vowel synthesizer")
    return "formant"


@dataclass(frozen=True)
class SungVoice:
    engine: str = "world"
    syllables: tuple[str, ...] = ("la",)  # the singer's syllables; the first is the usual one
    syllable_change_prob: float = 0.2  # per note: use another syllable of `syllables`
    espeak_voice: str = "es"
    formant_scale: float = 1.0  # frequency warp of the vocal tract (1 adult male, ~1.15 female)
    breathiness: float = 0.1  # aperiodicity (0..1) added above ~2 kHz
    tilt_db_per_octave: float = 7.0  # formant engine: net source slope
    low_boost_db: float = 10.0  # chest resonance / glottal formant: boost below ~400 Hz
    jitter_cents: float = 5.0
    shimmer: float = 0.05
    attack_s: float = 0.03
    release_s: float = 0.06
    sustain: float = 0.8
    accent_sd: float = 0.12

    @classmethod
    def sample(cls, rng: np.random.Generator) -> SungVoice:
        syllables = SYLLABLE_SETS[int(rng.integers(len(SYLLABLE_SETS)))]
        return cls(
            engine=default_engine(),
            syllables=tuple(str(s) for s in syllables),
            syllable_change_prob=float(rng.uniform(0.0, 0.4)) if len(syllables) > 1 else 0.0,
            espeak_voice=str(rng.choice(ESPEAK_VOICES)),
            formant_scale=float(rng.uniform(0.95, 1.22)),
            breathiness=float(rng.uniform(0.03, 0.3)),
            tilt_db_per_octave=float(rng.uniform(4.0, 10.0)),
            low_boost_db=float(rng.uniform(5.0, 15.0)),
            jitter_cents=float(rng.uniform(3.0, 10.0)),
            shimmer=float(rng.uniform(0.03, 0.08)),
            attack_s=float(rng.uniform(0.02, 0.05)),
            release_s=float(rng.uniform(0.03, 0.09)),
            sustain=float(rng.uniform(0.65, 0.95)),
            accent_sd=float(rng.uniform(0.05, 0.2)),
        )


def _pick_syllables(voice: SungVoice, n_notes: int, rng: np.random.Generator) -> list[str]:
    for s in voice.syllables:
        if s not in SYLLABLES:
            raise SynthError(f"unknown syllable {s!r}; known: {SYLLABLES}")
    if not voice.syllables:
        raise SynthError("a SungVoice needs at least one syllable")
    out = []
    for _ in range(n_notes):
        if len(voice.syllables) > 1 and rng.random() < voice.syllable_change_prob:
            out.append(voice.syllables[int(rng.integers(1, len(voice.syllables)))])
        else:
            out.append(voice.syllables[0])
    return out


# --- WORLD engine --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Syllable:
    """WORLD parameters of one spoken syllable, cut into its onset and its steady vowel.

    sp, ap: [frames, 513] spectral envelope / aperiodicity at 10 ms frames; frames
    [0, vowel_start) are the onset (consonant and transition), [vowel_start, frames) the vowel."""

    sp: np.ndarray
    ap: np.ndarray
    vowel_start: int


def _import_pyworld():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyworld imports the deprecated pkg_resources
        import pyworld

    return pyworld


@functools.lru_cache(maxsize=64)
def _analyse_syllable(text: str, espeak_voice: str) -> _Syllable:
    """espeak-ng speaks `text`; WORLD analyses it; the result is cut at the vowel's start."""
    from data_gen.audio import resample

    import soundfile as sf

    if not espeak_available():
        raise SynthError("the 'world' sung engine needs espeak-ng on PATH (or use engine='formant')")
    cmd = ["espeak-ng", "-v", espeak_voice, "-s", "100", "--stdout", text]
    try:
        wav = subprocess.run(cmd, capture_output=True, check=True, timeout=30).stdout
        x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    except (subprocess.SubprocessError, OSError, RuntimeError) as e:
        raise SynthError(f"espeak-ng failed for {text!r} with voice {espeak_voice!r}: {e}") from e
    x = resample(np.asarray(x, dtype=np.float32).reshape(-1), int(rate), C.SAMPLE_RATE).astype(np.float64)
    pw = _import_pyworld()
    period_ms = C.PITCH_HOP_SECONDS * 1000.0
    f0, t = pw.harvest(x, C.SAMPLE_RATE, f0_floor=60.0, f0_ceil=400.0, frame_period=period_ms)
    sp = pw.cheaptrick(x, f0, t, C.SAMPLE_RATE, fft_size=WORLD_FFT_SIZE)
    ap = pw.d4c(x, f0, t, C.SAMPLE_RATE, fft_size=WORLD_FFT_SIZE)
    power = 10.0 * np.log10(sp.sum(axis=1) + 1e-30)
    power -= power.max()
    active = np.flatnonzero(power > -30.0)
    if active.size < 5:
        raise SynthError(f"espeak-ng produced no usable audio for {text!r}")
    start, end = int(active[0]), int(active[-1]) + 1
    peak = int(np.argmax(power))
    # The vowel starts where the (level-normalised) envelope settles near the loudest frame's.
    log_sp = np.log(sp[:, :256] + 1e-30)  # 0-4 kHz carries the formants
    log_sp -= log_sp.mean(axis=1, keepdims=True)
    dist = np.sqrt(np.mean((log_sp - log_sp[peak]) ** 2, axis=1))
    settled = dist < 0.6  # RMS log-envelope difference (nepers); a steady vowel wobbles < 0.5
    vowel_start = peak
    while vowel_start > start and settled[vowel_start - 1]:
        vowel_start -= 1
    # The vowel ends before the final fade (more than 8 dB below the peak).
    vowel_end = peak + 1
    while vowel_end < end and power[vowel_end] > -8.0:
        vowel_end += 1
    sp = sp[start:vowel_end].copy()
    ap = ap[start:vowel_end].copy()
    vs = vowel_start - start
    # Level: every vowel frame at unit power (the note envelope shapes the dynamics), the onset
    # at its natural level relative to the vowel's first frame.
    vowel_power = sp[vs:].sum(axis=1, keepdims=True)
    sp[:vs] /= vowel_power[0]
    sp[vs:] /= vowel_power
    sp.setflags(write=False)  # cached and shared between calls
    ap.setflags(write=False)
    return _Syllable(sp=sp, ap=ap, vowel_start=vs)


def _warp_frequency(sp: np.ndarray, scale: float) -> np.ndarray:
    """Move every spectral feature up by `scale` (sp'(f) = sp(f / scale)). [frames, bins]."""
    if abs(scale - 1.0) < 1e-3:
        return sp
    bins = sp.shape[1]
    src = np.clip(np.arange(bins) / scale, 0, bins - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, bins - 1)
    frac = src - i0
    return sp[:, i0] * (1.0 - frac) + sp[:, i1] * frac


def _low_boost(freqs: np.ndarray, db: float) -> np.ndarray:
    """Amplitude gain: +`db` well below 400 Hz, 0 dB well above (a 4th-order shelf)."""
    boost = 10.0 ** (db / 20.0)
    return 1.0 + (boost - 1.0) / (1.0 + (np.asarray(freqs) / 400.0) ** 4)


def _note_frames(syl: _Syllable, length: int) -> tuple[np.ndarray, np.ndarray]:
    """sp and ap for a note of `length` frames: the onset (squeezed if the note is short), then
    the vowel stretched or shortened to fill the rest (linear interpolation between frames)."""
    onset = min(syl.vowel_start, length // 3)
    n_vowel_src = syl.sp.shape[0] - syl.vowel_start
    pos_onset = np.linspace(0, max(syl.vowel_start - 1, 0), onset) if onset else np.zeros(0)
    pos_vowel = syl.vowel_start + np.linspace(0, n_vowel_src - 1, length - onset)
    pos = np.concatenate([pos_onset, pos_vowel])
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, syl.sp.shape[0] - 1)
    frac = (pos - i0)[:, None]
    sp = np.exp(np.log(syl.sp[i0] + 1e-30) * (1 - frac) + np.log(syl.sp[i1] + 1e-30) * frac)
    ap = syl.ap[i0] * (1 - frac) + syl.ap[i1] * frac
    return sp, ap


def _render_world(contour: Contour, voice: SungVoice, rng: np.random.Generator, f0: np.ndarray) -> np.ndarray:
    segments = note_segments(contour)
    texts = _pick_syllables(voice, len(segments), rng)
    n, bins = contour.n_frames, WORLD_FFT_SIZE // 2 + 1
    sp = np.full((n, bins), 1e-12)
    ap = np.ones((n, bins))
    for (s, e), text in zip(segments, texts):
        sp[s:e], ap[s:e] = _note_frames(_analyse_syllable(text, voice.espeak_voice), e - s)
    sp = _warp_frequency(sp, voice.formant_scale)
    freqs = np.linspace(0, dsp.NYQUIST, bins)
    # espeak's voices are thin below the first formant; real singers have a strong fundamental.
    sp = sp * _low_boost(freqs, voice.low_boost_db) ** 2  # sp is a power spectrum
    breath_floor = voice.breathiness * np.clip((freqs - 1500.0) / 3500.0, 0.0, 1.0) ** 0.7
    ap = np.clip(np.maximum(ap, breath_floor[None, :]), 0.001, 1.0)
    f0_world = np.where(contour.voiced, f0, 0.0)
    pw = _import_pyworld()
    y = pw.synthesize(
        np.ascontiguousarray(f0_world, dtype=np.float64), np.ascontiguousarray(sp),
        np.ascontiguousarray(ap), C.SAMPLE_RATE, frame_period=C.PITCH_HOP_SECONDS * 1000.0,
    )
    out = np.zeros(contour.n_samples)
    out[: min(len(y), out.shape[0])] = y[: out.shape[0]]
    return out


# --- formant engine ------------------------------------------------------------------------------

# Adult male vowel formants (Hz) and bandwidths (Hz), after classic measurements (Peterson &
# Barney; Klatt's synthesizer defaults for bandwidths).
VOWELS = {
    "a": ((730, 90), (1090, 110), (2440, 170), (3400, 250), (4000, 300)),
    "e": ((530, 80), (1840, 120), (2480, 170), (3400, 250), (4000, 300)),
    "i": ((300, 70), (2250, 120), (3000, 180), (3600, 250), (4200, 300)),
    "o": ((500, 80), (850, 100), (2450, 170), (3400, 250), (4000, 300)),
    "u": ((320, 70), (870, 100), (2250, 150), (3400, 250), (4000, 300)),
}
# Onset consonants: formants at the consonant, how long it lasts, how long the glide to the vowel
# takes, and its level relative to the vowel. Nasals use the hum's murmur (with its zero).
CONSONANTS = {
    "l": (((360, 100), (1300, 150), (2700, 200), (3400, 250), (4000, 300)), 0.06, 0.06, 0.45),
    "d": (((300, 100), (1700, 150), (2600, 200), (3400, 250), (4000, 300)), 0.025, 0.05, 0.12),
    "b": (((300, 100), (800, 150), (2200, 200), (3400, 250), (4000, 300)), 0.025, 0.05, 0.12),
    "n": (None, 0.06, 0.05, 0.35),
    "m": (None, 0.06, 0.05, 0.35),
}
_PAD_POLE = (1000.0, 250.0)  # the pole paired with the zero in oral sounds (they cancel exactly)


def _syllable_tracks(text: str, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame poles [length, 6, 2], zero [length, 1, 2] and level [length] of one sung note."""
    cons, vowel = text[0], text[1]
    rate = C.PITCH_FRAME_RATE
    target = np.array([*VOWELS[vowel], _PAD_POLE], dtype=np.float64)
    zero_v = np.array([_PAD_POLE], dtype=np.float64)
    formants, hold_s, glide_s, level = CONSONANTS[cons]
    if formants is None:  # nasal murmur
        start = np.array(NASAL_FORMANTS[cons], dtype=np.float64)
        zero_c = np.array(NASAL_ZEROS[cons], dtype=np.float64)
    else:
        start = np.array([*formants, _PAD_POLE], dtype=np.float64)
        zero_c = zero_v
    hold = min(int(round(hold_s * rate)), length // 4)
    glide = min(int(round(glide_s * rate)), length // 4)
    x = np.clip((np.arange(length) - hold) / max(glide, 1), 0.0, 1.0)
    x = (0.5 - 0.5 * np.cos(np.pi * x))[:, None, None]
    poles = start[None] * (1 - x) + target[None] * x
    zero = zero_c[None] * (1 - x) + zero_v[None] * x
    lev = level + (1.0 - level) * x[:, 0, 0]
    return poles, zero, lev


def _render_formant(contour: Contour, voice: SungVoice, rng: np.random.Generator, f0: np.ndarray) -> np.ndarray:
    segments = note_segments(contour)
    texts = _pick_syllables(voice, len(segments), rng)
    n = contour.n_frames
    poles = np.tile(np.array([*VOWELS["a"], _PAD_POLE], dtype=np.float64), (n, 1, 1))
    zero = np.tile(np.array([_PAD_POLE], dtype=np.float64), (n, 1, 1))
    level = np.zeros(n)
    for (s, e), text in zip(segments, texts):
        poles[s:e], zero[s:e], level[s:e] = _syllable_tracks(text, e - s)
    poles = poles * voice.formant_scale
    zero = zero * voice.formant_scale
    k = int(min(120, np.ceil(dsp.NYQUIST / max(float(f0.min()), 40.0))))
    harmonics = np.arange(1, k + 1, dtype=np.float64)
    hf = f0[:, None] * harmonics[None, :]
    gain = dsp.formant_gain(hf, [(poles[:, i, :1], poles[:, i, 1:]) for i in range(poles.shape[1])],
                            [(zero[:, 0, :1], zero[:, 0, 1:])])
    source = harmonics[None, :] ** (-voice.tilt_db_per_octave / 6.02) * _low_boost(hf, voice.low_boost_db)
    amps = level[:, None] * source * gain
    voiced_part = dsp.harmonic_signal(f0, amps, phases=rng.uniform(0, 2 * np.pi, k))
    freqs = dsp.noise_bin_freqs()[None, :]
    ngain = dsp.formant_gain(
        np.broadcast_to(freqs, (n, freqs.shape[1])),
        [(poles[:, i, :1], poles[:, i, 1:]) for i in range(poles.shape[1])],
        [(zero[:, 0, :1], zero[:, 0, 1:])],
    ) * np.clip((freqs - 1000.0) / 3000.0, 0.05, 1.0)
    breath = dsp.shaped_noise(level[:, None] * ngain, rng)
    return voiced_part + dsp.scale_to(voiced_part, breath, 20 * np.log10(max(voice.breathiness, 1e-3)) - 6)


# --- public --------------------------------------------------------------------------------------


def render_sung(contour: Contour, voice: SungVoice, rng: np.random.Generator) -> np.ndarray:
    """[contour.n_samples] float32 singing of `contour` with `voice`, peak 0.5."""
    if voice.engine not in ENGINES:
        raise SynthError(f"engine must be one of {ENGINES}, got {voice.engine!r}")
    if contour.n_frames == 0:
        raise SynthError("cannot synthesize an empty contour")
    n = contour.n_frames
    f0 = apply_jitter(contour.filled_f0(), voice.jitter_cents, rng)
    env = dsp.note_envelope(
        contour, rng, attack_s=voice.attack_s, release_s=voice.release_s,
        sustain=voice.sustain, accent_sd=voice.accent_sd, legato_dip=0.85,
    )
    env = env * np.clip(1.0 + voice.shimmer * dsp.smooth_noise(n, rng, 2.0), 0.2, 2.0)
    if voice.engine == "world":
        out = _render_world(contour, voice, rng, f0)
    else:
        out = _render_formant(contour, voice, rng, f0)
    out = out * dsp.upsample_frames(env, out.shape[0])
    return dsp.normalize_peak(out)


def synthesize_sung(contour: Contour, seed: int = 0, **params: object) -> np.ndarray:
    """Sing `contour` on syllables: a random `SungVoice` from `seed` (engine "world" when
    espeak-ng is installed, else "formant"), fields overridable by `params`.
    Returns [contour.n_samples] float32 mono at SAMPLE_RATE, peak 0.5."""
    rng = np.random.default_rng(seed)
    if "syllables" in params and isinstance(params["syllables"], (list, str)):
        s = params["syllables"]
        params = {**params, "syllables": (s,) if isinstance(s, str) else tuple(s)}
    voice = dsp.override(SungVoice.sample(rng), params)
    return render_sung(contour, voice, rng)
