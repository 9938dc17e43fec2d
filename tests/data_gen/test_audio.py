import io

import numpy as np
import pytest
import soundfile as sf

from data_gen import audio as A
from data_gen import constants as C


def _encode(samples, sr, fmt="WAV", subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"),
                                         ("MP3", "MPEG_LAYER_III")])
def test_decodes_common_formats_to_mono_16k(tone_audio, fmt, subtype):
    stereo = np.stack([tone_audio, tone_audio], axis=1)
    resampled = A.resample(tone_audio, C.SAMPLE_RATE, 44_100)
    data = _encode(np.stack([resampled, resampled], 1) if fmt != "WAV" else stereo,
                   44_100 if fmt != "WAV" else C.SAMPLE_RATE, fmt, subtype)
    out = A.decode_audio(data)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - tone_audio.size) < 0.02 * C.SAMPLE_RATE  # codec padding allowed
    # The pitch survives: dominant frequency of the first note (C4 = 261.6 Hz).
    seg = out[2000:6000] * np.hanning(4000)
    peak_hz = np.argmax(np.abs(np.fft.rfft(seg, 16000))) * C.SAMPLE_RATE / 16000
    assert abs(peak_hz - 261.6) < 5


def test_empty_bytes():
    with pytest.raises(A.EmptyAudioError, match="empty"):
        A.decode_audio(b"")


def test_zero_sample_file():
    with pytest.raises(A.EmptyAudioError, match="zero audio samples"):
        A.decode_audio(_encode(np.zeros(0, np.float32), C.SAMPLE_RATE))


def test_undecodable_bytes():
    with pytest.raises(A.UndecodableAudioError, match="could not be decoded"):
        A.decode_audio(b"this is not audio at all" * 100)


def test_too_short(tone_audio):
    with pytest.raises(A.TooShortAudioError, match=r"at least 2 s"):
        A.decode_audio(_encode(tone_audio[:8000], C.SAMPLE_RATE), min_seconds=C.MIN_QUERY_SECONDS)


def test_too_long():
    long = (0.1 * np.sin(np.arange(C.SAMPLE_RATE * 5) * 0.05)).astype(np.float32)
    with pytest.raises(A.TooLongAudioError, match=r"at most 3 s"):
        A.decode_audio(_encode(long, C.SAMPLE_RATE), max_seconds=3)


def test_silent():
    with pytest.raises(A.SilentAudioError, match="silent"):
        A.decode_audio(_encode(np.zeros(C.SAMPLE_RATE * 3, np.float32), C.SAMPLE_RATE))


def test_non_finite_pcm():
    x = np.full(C.SAMPLE_RATE * 3, 0.1, np.float32)
    x[100] = np.nan
    with pytest.raises(A.NonFiniteAudioError, match="NaN"):
        A.pcm_to_audio(x.tobytes(), C.SAMPLE_RATE, pcm_format="f32le")


def test_non_finite_validate():
    x = np.full(100, np.inf, np.float32)
    with pytest.raises(A.NonFiniteAudioError):
        A.validate_audio(x)


def test_pcm_s16_stereo_resampled(tone_audio):
    up = A.resample(tone_audio, C.SAMPLE_RATE, 48_000)
    inter = np.stack([up, up], 1)
    data = (inter * 32767).astype("<i2").tobytes()
    out = A.pcm_to_audio(data, 48_000, channels=2)
    assert abs(out.size - tone_audio.size) <= 2
    assert np.corrcoef(out[: tone_audio.size - 2], tone_audio[: out.size][: tone_audio.size - 2])[0, 1] > 0.99


def test_pcm_bad_parameters():
    with pytest.raises(A.AudioError, match="sample rate"):
        A.pcm_to_audio(b"\x00\x01" * 100, 0)
    with pytest.raises(A.UndecodableAudioError, match="whole number"):
        A.pcm_to_audio(b"\x00\x01\x02", C.SAMPLE_RATE)
    with pytest.raises(A.AudioError, match="unknown PCM format"):
        A.pcm_to_audio(b"\x00\x01", C.SAMPLE_RATE, pcm_format="u8")


def test_errors_are_value_errors_with_person_readable_messages():
    for cls in (A.EmptyAudioError, A.UndecodableAudioError, A.TooShortAudioError,
                A.TooLongAudioError, A.SilentAudioError, A.NonFiniteAudioError):
        assert issubclass(cls, A.AudioError) and issubclass(cls, ValueError)


def test_load_audio_names_the_file(tmp_path):
    p = tmp_path / "broken.wav"
    p.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(A.UndecodableAudioError, match="broken.wav"):
        A.load_audio(p)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        A.load_audio(tmp_path / "missing.wav")


def test_write_and_encode_round_trip(tmp_path, tone_audio):
    for ext in ("wav", "flac", "ogg"):
        p = tmp_path / f"x.{ext}"
        A.write_audio(p, tone_audio)
        back = A.load_audio(p)
        assert abs(back.size - tone_audio.size) < 0.02 * C.SAMPLE_RATE
    assert A.decode_audio(A.encode_audio(tone_audio)).size == tone_audio.size
