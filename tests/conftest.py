"""Shared fixtures: tiny synthesized audio, paths to the shared data (skipping when absent)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from data_gen import constants as C
from data_gen import paths


def sung_tone(midi_notes=(60, 62, 64, 65, 67), note_s=0.5, vibrato_hz=5.5, vibrato_cents=30.0,
              sr=C.SAMPLE_RATE, seed=0) -> np.ndarray:
    """A voice-like tone (a few harmonics, vibrato) singing `midi_notes`: [time] float32."""
    rng = np.random.default_rng(seed)
    n = int(note_s * sr)
    f0 = np.concatenate([np.full(n, 440.0 * 2 ** ((m - 69) / 12)) for m in midi_notes])
    t = np.arange(f0.size) / sr
    f0 = f0 * 2 ** (vibrato_cents / 1200 * np.sin(2 * np.pi * vibrato_hz * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    audio = sum((0.6 / k) * np.sin(k * phase) for k in range(1, 6))
    audio += 0.003 * rng.standard_normal(audio.size)
    return (0.5 * audio / np.max(np.abs(audio))).astype(np.float32)


@pytest.fixture
def tone_audio() -> np.ndarray:
    return sung_tone()


@pytest.fixture(scope="session")
def shared_data_dir():
    d = paths.shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"shared data folder {d} is absent (tests that need real recordings are skipped)")
    return d


@pytest.fixture(scope="session")
def crepe_weights():
    p = paths.crepe_tiny_weights()
    if not p.is_file():
        pytest.skip(f"CREPE tiny weights not found at {p}")
    return p


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory):
    """A real, randomly initialised exported encoder (exported once per test session)."""
    from training.export import export_untrained

    return export_untrained(tmp_path_factory.mktemp("untrained_model") / "model")


def ffmpeg_encode(samples: np.ndarray, sample_rate: int, container: str, codec: str,
                  channels: int = 1) -> bytes:
    """Mono float32 samples -> encoded bytes made with FFmpeg's own encoders (PyAV), e.g.
    ("ipod", "aac") = M4A/AAC as phones record, ("webm", "libopus") = WebM/Opus as browsers
    record, ("mp3", "libmp3lame"); `channels=2` writes the same samples on both channels.
    Timestamps start at 0, so MP4 gets the edit list that hides the AAC encoder's priming, as in
    files phones write."""
    import io
    from fractions import Fraction

    import av

    buf = io.BytesIO()
    layout = "mono" if channels == 1 else "stereo"
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=sample_rate, layout=layout)
        planes = np.tile(np.clip(samples, -1.0, 1.0).astype(np.float32), (channels, 1))
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        frame.pts, frame.time_base = 0, Fraction(1, sample_rate)  # timestamps from 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
