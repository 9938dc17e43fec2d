"""What happens to a query between the mouth and the server: room, background noise, phone.

- `make_noise` / `add_noise`: white, pink, babble (several synthetic talkers) or room tone (low
  rumble, mains hum, ventilation hiss) mixed at a requested signal-to-noise ratio.
- `reverberate`: a synthetic room impulse response (exponentially decaying noise) at a given
  RT60 and direct-to-reverberant ratio.
- `PhoneMic` / `phone_mic`: a phone-like microphone chain: band-limiting, compression, soft
  clipping, and optionally low-bitrate-codec-like spectral holes or 8-bit mu-law telephony.

All functions take and return mono float arrays at SAMPLE_RATE ([samples]) and draw randomness
from the given `np.random.Generator` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_gen import constants as C
from data_gen.synth import dsp
from data_gen.synth.contour import SynthError

NOISE_KINDS = ("white", "pink", "babble", "room")


def _coloured(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Gaussian noise with a power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / C.SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    spec *= f ** (-exponent / 2.0)
    return np.fft.irfft(spec, n)


def _babble(n: int, rng: np.random.Generator) -> np.ndarray:
    """3-7 synthetic talkers: glottal pulse trains with a wandering pitch, filtered by vowel
    formants that change every syllable (in the STFT domain), switched on and off at a syllabic
    rate, each at its own level."""
    from data_gen.synth.sung import VOWELS  # local: avoid an import cycle

    n_frames = int(np.ceil(n / C.PITCH_HOP))
    n_pad = n_frames * C.PITCH_HOP
    freqs = dsp.noise_bin_freqs()[None, :]
    vowels = list(VOWELS.values())
    out = np.zeros(n_pad)
    for _ in range(int(rng.integers(3, 8))):
        base = rng.uniform(95.0, 240.0)
        f0 = base * 2.0 ** (2.5 * dsp.smooth_noise(n_frames, rng, 15.0) / 12.0)  # prosody
        cycles = np.cumsum(dsp.upsample_frames(f0, n_pad)) / C.SAMPLE_RATE + rng.random()
        pulses = np.diff(np.floor(cycles), prepend=np.floor(cycles[0])).astype(np.float64)
        shape = np.zeros((n_frames, freqs.shape[1]))
        gate = np.zeros(n_frames)
        i = 0
        while i < n_frames:
            length = int(rng.integers(12, 30))  # 120-300 ms syllables
            vowel = np.array(vowels[int(rng.integers(len(vowels)))]) * rng.uniform(0.9, 1.2)
            shape[i : i + length] = dsp.formant_gain(freqs[0], vowel)
            gate[i : i + length] = 1.0 if rng.random() < 0.75 else 0.0
            i += length
        gate = np.convolve(gate, np.hanning(7) / np.hanning(7).sum(), mode="same")
        shape *= gate[:, None] * (1.0 + freqs / 200.0) ** -1.0 * (freqs > 60.0)  # roll-off, no DC
        talker = dsp.filter_stft(pulses, shape)
        r = dsp.rms(talker)
        if r > 0:
            out += talker / r * 10.0 ** (rng.uniform(-6.0, 0.0) / 20.0)
    return out[:n]


def _room(n: int, rng: np.random.Generator) -> np.ndarray:
    """Room tone: brown rumble, a faint pink ventilation hiss, mains hum, slow level swells."""
    import scipy.signal as ss  # local: slow to import

    rumble = _coloured(n, rng, 2.0)
    rumble = ss.sosfilt(ss.butter(2, 300.0, "lp", fs=C.SAMPLE_RATE, output="sos"), rumble)
    hiss = _coloured(n, rng, 1.0)
    t = np.arange(n) / C.SAMPLE_RATE
    mains = float(rng.choice([50.0, 60.0]))
    hum = sum(np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi)) / h**1.5 for h in (1, 2, 3, 4))
    out = rumble / (dsp.rms(rumble) + 1e-12)
    out += hiss / (dsp.rms(hiss) + 1e-12) * 10.0 ** (rng.uniform(-14.0, -4.0) / 20.0)
    out += hum / (dsp.rms(hum) + 1e-12) * 10.0 ** (rng.uniform(-30.0, -10.0) / 20.0)
    swell = 1.0 + 0.3 * dsp.smooth_noise(n // C.PITCH_HOP + 2, rng, 50.0)
    return out * np.clip(dsp.upsample_frames(swell, n), 0.3, 2.0)


def make_noise(kind: str, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """[n_samples] float64 background noise of `kind` (see NOISE_KINDS) at unit RMS."""
    if kind == "white":
        x = rng.standard_normal(n_samples)
    elif kind == "pink":
        x = _coloured(n_samples, rng, 1.0)
    elif kind == "babble":
        x = _babble(n_samples, rng)
    elif kind == "room":
        x = _room(n_samples, rng)
    else:
        raise SynthError(f"unknown noise kind {kind!r}; known: {NOISE_KINDS}")
    r = dsp.rms(x)
    return x / r if r > 0 else x


def add_noise(audio: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """audio + noise of `kind` such that 10 log10(P_audio / P_noise) = snr_db, powers taken over
    the whole recording. Returns float64 [samples]."""
    audio = np.asarray(audio, dtype=np.float64)
    noise = make_noise(kind, audio.shape[0], rng)
    return audio + dsp.scale_to(audio, noise, -float(snr_db))


def reverberate(audio: np.ndarray, rt60_s: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room response: a unit direct path plus exponentially decaying
    noise (60 dB down after `rt60_s`, darker as it decays) whose energy is `drr_db` below the
    direct sound. Same length as the input, float64."""
    import scipy.signal as ss  # local: slow to import

    audio = np.asarray(audio, dtype=np.float64)
    if rt60_s <= 0:
        return audio.copy()
    length = int(rt60_s * 1.2 * C.SAMPLE_RATE)
    t = np.arange(length) / C.SAMPLE_RATE
    tail = rng.standard_normal(length) * 10.0 ** (-3.0 * t / rt60_s)
    tail = ss.sosfilt(ss.butter(1, 4000.0, "lp", fs=C.SAMPLE_RATE, output="sos"), tail)
    tail[: int(0.003 * C.SAMPLE_RATE)] = 0.0  # first reflections arrive a few ms late
    ir = tail * 10.0 ** (-drr_db / 20.0) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    ir[0] = 1.0  # the direct path
    return ss.fftconvolve(audio, ir)[: audio.shape[0]]


@dataclass(frozen=True)
class PhoneMic:
    """A phone's microphone and voice processing."""

    low_hz: float = 300.0  # high-pass corner
    high_hz: float = 3400.0  # low-pass corner (narrowband telephony; modern phones go higher)
    ratio: float = 3.0  # compressor ratio
    threshold_db: float = -20.0  # compressor threshold relative to the peak level
    drive: float = 1.5  # soft-clipping drive (1: nearly clean)
    codec_keep_db: float = 0.0  # >0: drop STFT bins more than this below the frame's loudest
    mu_law: bool = False  # 8-bit mu-law telephony quantisation

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PhoneMic:
        return cls(
            low_hz=float(rng.uniform(80.0, 400.0)),
            high_hz=float(rng.choice([3400.0, rng.uniform(4000.0, 7600.0)])),
            ratio=float(rng.uniform(1.5, 5.0)),
            threshold_db=float(rng.uniform(-30.0, -10.0)),
            drive=float(rng.uniform(1.0, 4.0)),
            codec_keep_db=float(rng.uniform(20.0, 45.0)) if rng.random() < 0.4 else 0.0,
            mu_law=bool(rng.random() < 0.15),
        )


def _compress(x: np.ndarray, ratio: float, threshold_db: float) -> np.ndarray:
    """Feed-forward compressor (5 ms attack, 100 ms release, level followed per 10 ms frame)
    with make-up gain back to the input's peak."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0 or ratio <= 1.0:
        return x
    hop = C.PITCH_HOP
    n_frames = -(-x.shape[0] // hop)
    padded = np.zeros(n_frames * hop)
    padded[: x.shape[0]] = x
    power = np.mean(padded.reshape(n_frames, hop) ** 2, axis=1)
    attack = np.exp(-hop / (0.005 * C.SAMPLE_RATE))
    release = np.exp(-hop / (0.100 * C.SAMPLE_RATE))
    follow = np.empty(n_frames)
    level = 0.0
    for i, p in enumerate(power):
        coef = attack if p > level else release
        level = coef * level + (1.0 - coef) * p
        follow[i] = level
    level_db = 10.0 * np.log10(dsp.upsample_frames(follow, x.shape[0]) + 1e-12) - 20.0 * np.log10(peak)
    gain_db = -np.maximum(level_db - threshold_db, 0.0) * (1.0 - 1.0 / ratio)
    y = x * 10.0 ** (gain_db / 20.0)
    return y * (peak / (float(np.max(np.abs(y))) + 1e-12))


def _codec_holes(x: np.ndarray, keep_db: float) -> np.ndarray:
    """Zero every STFT bin more than `keep_db` below its frame's loudest bin (the spectral holes
    and bandwidth loss of a low-bitrate perceptual codec)."""
    import librosa  # local: slow to import

    spec = librosa.stft(x, n_fft=dsp.NOISE_FFT, hop_length=C.PITCH_HOP)
    mag = np.abs(spec)
    keep = mag >= mag.max(axis=0, keepdims=True) * 10.0 ** (-keep_db / 20.0)
    return librosa.istft(spec * keep, hop_length=C.PITCH_HOP, n_fft=dsp.NOISE_FFT, length=x.shape[0])


def _mu_law(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    peak = float(np.max(np.abs(x))) + 1e-12
    y = x / peak
    comp = np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu)
    q = np.round(comp * 127.0) / 127.0
    return np.sign(q) * np.expm1(np.abs(q) * np.log1p(mu)) / mu * peak


def phone_mic(audio: np.ndarray, mic: PhoneMic) -> np.ndarray:
    """Apply `mic` to `audio` [samples]; returns float64 at the input's peak level."""
    import scipy.signal as ss  # local: slow to import

    x = np.asarray(audio, dtype=np.float64)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0:
        return x.copy()
    # Capsule and preamp: high-pass, compression, soft clipping; then the codec's band limit.
    x = ss.sosfilt(ss.butter(2, mic.low_hz, "hp", fs=C.SAMPLE_RATE, output="sos"), x)
    x = _compress(x, mic.ratio, mic.threshold_db)
    if mic.drive > 1.0:
        p = float(np.max(np.abs(x))) + 1e-12
        x = np.tanh(mic.drive * x / p) / np.tanh(mic.drive) * p
    if mic.high_hz < 0.95 * C.SAMPLE_RATE / 2.0:
        x = ss.sosfilt(ss.butter(6, mic.high_hz, "lp", fs=C.SAMPLE_RATE, output="sos"), x)
    if mic.codec_keep_db > 0:
        x = _codec_holes(x, mic.codec_keep_db)
    if mic.mu_law:
        x = _mu_law(x)
    return x * (peak / (float(np.max(np.abs(x))) + 1e-12))
