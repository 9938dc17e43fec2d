"""How much do synthetic hums sound like real ones? Simple statistics, side by side.

The model is trained on synthetic hums and judged on real ones, so every systematic difference
between the two is a shortcut the encoder may learn and real users will not offer. Each recording
is described by:

- spectral_tilt_db_per_octave: slope of the long-term average spectrum (dB per octave, 200 Hz-5 kHz;
  a hummed "mmm" falls steeply, a bright synthetic tone less);
- energy_above_4k_db: share of the energy above 4 kHz (dB below the total: breath, sibilance, codec);
- breathiness: median aperiodicity of the voiced frames (YIN's d' at the period: 0 = a pure
  periodic tone, higher = noisy, breathy phonation);
- noise_floor_db: level of the unvoiced frames against the voiced ones (room and breath noise);
- onsets_per_s: note changes per voiced second (the pitch track held on a new semitone for 80 ms);
- vibrato_cents: median standard deviation of the pitch inside notes held for 300 ms or more, after
  removing each note's linear trend;
- tempo_drift: log2 of the note rate in the second half against the first (0 = steady; > 0 speeds up).

`compare` ranks the statistics by how far the synthetic median sits from the real one, in units of the
real set's interquartile range: the largest differences are the ones to close first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from data_gen import constants as C
from data_gen.pitch.base import held_notes

STATS = ("spectral_tilt_db_per_octave", "energy_above_4k_db", "breathiness", "noise_floor_db",
         "onsets_per_s", "vibrato_cents", "tempo_drift")


@dataclass(frozen=True)
class HumStats:
    spectral_tilt_db_per_octave: float
    energy_above_4k_db: float
    breathiness: float
    noise_floor_db: float
    onsets_per_s: float
    vibrato_cents: float
    tempo_drift: float


def _spectrum_stats(audio: np.ndarray) -> tuple[float, float]:
    import scipy.signal

    freqs, power = scipy.signal.welch(audio, fs=C.SAMPLE_RATE, nperseg=1024)
    band = (freqs >= 200) & (freqs <= 5000)
    db = 10 * np.log10(power[band] + 1e-20)
    tilt = float(np.polyfit(np.log2(freqs[band]), db, 1)[0])
    high = float(power[freqs >= 4000].sum() / max(power.sum(), 1e-20))
    return tilt, 10 * np.log10(high + 1e-12)


def hum_stats(audio: np.ndarray) -> HumStats:
    """mono float32 [time] at SAMPLE_RATE -> HumStats (NaN where a statistic has nothing to measure)."""
    from data_gen.pitch.yin import YinExtractor

    audio = np.asarray(audio, np.float32)
    tilt, high = _spectrum_stats(audio)
    yin = YinExtractor()
    frames = yin.analyse(audio)
    track = yin.track(frames)
    voiced = track.voiced
    midi = track.f0_midi()
    hop = C.PITCH_HOP_SECONDS
    breath = float(np.median(frames.aperiodicity[voiced])) if voiced.any() else float("nan")
    quiet = ~voiced & (frames.level > 0)
    floor = (20 * np.log10(np.median(frames.level[quiet]) / np.median(frames.level[voiced]))
             if voiced.any() and quiet.any() else float("nan"))
    _, note_starts, note_stops = held_notes(midi, int(round(0.08 / hop)))
    notes = list(zip(note_starts.tolist(), note_stops.tolist()))
    onsets = len(notes) / max(voiced.sum() * hop, 1e-9) if voiced.any() else float("nan")
    wobble = []
    for a, b in notes:
        if (b - a) * hop >= 0.3:
            seg = midi[a:b] * 100.0
            t = np.arange(seg.size)
            wobble.append(float(np.std(seg - np.polyval(np.polyfit(t, seg, 1), t))))
    vibrato = float(np.median(wobble)) if wobble else float("nan")
    starts = np.array([a for a, _ in notes]) * hop
    half = audio.size / C.SAMPLE_RATE / 2
    first, second = (starts < half).sum(), (starts >= half).sum()
    drift = float(np.log2(second / first)) if first and second else float("nan")
    return HumStats(tilt, high, breath, float(floor), float(onsets), vibrato, drift)


def summarize(stats: Iterable[HumStats]) -> dict[str, dict[str, float]]:
    """statistic -> {"n", "median", "q25", "q75"} over a set (NaNs left out)."""
    rows = [asdict(s) for s in stats]
    out = {}
    for name in STATS:
        v = np.array([r[name] for r in rows], np.float64)
        v = v[np.isfinite(v)]
        out[name] = ({"n": int(v.size), "median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
                      "q75": float(np.quantile(v, 0.75))} if v.size else {"n": 0})
    return out


def compare(real: Mapping[str, dict[str, float]], synthetic: Mapping[str, dict[str, float]]
            ) -> list[tuple[str, float]]:
    """(statistic, (synthetic median - real median) / real IQR), largest |difference| first (the IQR
    is floored at 5 % of the real median, for a statistic the real set barely varies on)."""
    gaps = []
    for name in STATS:
        r, s = real.get(name, {}), synthetic.get(name, {})
        if not r.get("n") or not s.get("n"):
            continue
        scale = max(r["q75"] - r["q25"], 0.05 * abs(r["median"]), 1e-6)  # a real set that barely varies
        gaps.append((name, (s["median"] - r["median"]) / scale))
    return sorted(gaps, key=lambda g: -abs(g[1]))


__all__ = ["STATS", "HumStats", "compare", "hum_stats", "summarize"]
