import io

import numpy as np
import pytest
import soundfile as sf

from data_gen import audio as A
from data_gen import constants as C
from data_gen import paths
from tests.conftest import ffmpeg_encode


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


# --- what real users and catalogues send: FFmpeg (PyAV) behind libsndfile ------------------------
def _peak_hz(out: np.ndarray) -> float:
    """Dominant frequency of the first note of `tone_audio` (C4 = 261.6 Hz) in decoded audio."""
    seg = out[2000:6000] * np.hanning(4000)
    return np.argmax(np.abs(np.fft.rfft(seg, 16000))) * C.SAMPLE_RATE / 16000


def _mp3(tone_audio, rate=44_100) -> bytes:
    return ffmpeg_encode(A.resample(tone_audio, C.SAMPLE_RATE, rate), rate, "mp3", "libmp3lame", channels=2)


# (container, codec, native rate, channels, length tolerance in s: codec padding at the end)
FFMPEG_FORMATS = {
    "m4a_aac_44k_stereo": ("ipod", "aac", 44_100, 2, 0.1),  # phone voice memo
    "mp4_aac_16k_mono": ("mp4", "aac", 16_000, 1, 0.1),
    "webm_opus_48k": ("webm", "libopus", 48_000, 2, 0.03),  # browser MediaRecorder
    "webm_opus_native_encoder": ("webm", "opus", 48_000, 1, 0.03),
    "mp3_lame": ("mp3", "libmp3lame", 44_100, 2, 0.03),
}


@pytest.mark.parametrize("name", sorted(FFMPEG_FORMATS))
def test_decodes_phone_and_browser_formats_to_mono_16k(tone_audio, name):
    container, codec, rate, channels, tolerance_s = FFMPEG_FORMATS[name]
    data = ffmpeg_encode(A.resample(tone_audio, C.SAMPLE_RATE, rate), rate, container, codec, channels)
    out = A.decode_audio(data, min_seconds=C.MIN_QUERY_SECONDS, max_seconds=C.MAX_QUERY_SECONDS)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.size - tone_audio.size) <= tolerance_s * C.SAMPLE_RATE
    assert abs(_peak_hz(out) - 261.6) < 5


@pytest.mark.parametrize("cut", ["start", "end", "both"])
def test_decodes_an_mp3_stream_cut_mid_frame(tone_audio, cut):
    data = _mp3(tone_audio)
    # 417 bytes in: past the LAME header, inside an audio frame (frames are ~418 bytes at 128 kbit/s)
    cut_data = {"start": data[417:], "end": data[:-300], "both": data[417:-300]}[cut]
    out = A.decode_audio(cut_data)
    assert out.dtype == np.float32 and out.ndim == 1
    # A frame or two lost at the cut; without the LAME header the codec delay stays in.
    assert abs(out.size - tone_audio.size) < 0.1 * C.SAMPLE_RATE
    assert abs(_peak_hz(out) - 261.6) < 5


def test_both_decoders_mix_channels_to_mono_the_same_way(tone_audio):
    left, right = tone_audio, -0.5 * tone_audio  # mean = 0.25 * tone
    wav = _encode(np.stack([left, right], 1), C.SAMPLE_RATE)  # libsndfile reads this
    planes = np.stack([left, right]).astype(np.float32)
    import av  # raw PCM in Matroska: libsndfile cannot read it, FFmpeg decodes it losslessly

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as out:
        stream = out.add_stream("pcm_f32le", rate=C.SAMPLE_RATE, layout="stereo")
        frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout="stereo")
        frame.sample_rate = C.SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    via_sndfile = A.decode_audio(wav)
    via_ffmpeg = A.decode_audio(buf.getvalue())
    assert via_ffmpeg.size == via_sndfile.size == tone_audio.size
    np.testing.assert_allclose(via_ffmpeg, 0.25 * tone_audio, atol=1e-6)
    np.testing.assert_allclose(via_sndfile, 0.25 * tone_audio, atol=1e-4)  # 16-bit WAV


def test_every_zalo_song_and_hum_decodes():
    """The real-world files that started this: 20 catalogue songs (MP3 cut mid-frame, which
    libsndfile refuses) and 20 hums (phone MP3)."""
    from data_gen.manifest import read_catalogue, read_queries

    root = paths.shared_data_dir() / "zalo_mini"
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"{root} is absent (the real zalo songs and hums are not on this machine)")
    songs = read_catalogue(root / "manifest.csv")
    hums = read_queries(root / "queries.csv")
    assert len(songs) == 20 and len(hums) == 20
    for track in songs:
        out = A.load_audio(track.path, max_seconds=C.MAX_MASTER_SECONDS)
        # 7.7-12 s each (one holds a cover-art ID3 tag midway, which FFmpeg skips like a player)
        assert out.dtype == np.float32 and out.size > 7 * C.SAMPLE_RATE, track.path
    for query in hums:
        out = A.load_audio(query.path, min_seconds=C.MIN_QUERY_SECONDS, max_seconds=C.MAX_QUERY_SECONDS)
        assert out.dtype == np.float32 and out.size >= C.MIN_QUERY_SAMPLES, query.path


def test_too_long_pcm_is_refused_before_resampling():
    # 400,000 frames declared at 4 kHz: 100 s, refused before anything is converted or resampled.
    with pytest.raises(A.TooLongAudioError, match=r"100\.0 s long; at most 30 s"):
        A.pcm_to_audio(b"\x01\x00" * 400_000, 4_000, max_seconds=30)


def test_too_long_file_is_refused_before_resampling(tone_audio):
    at_4k = _encode(np.tile(tone_audio, 20)[:400_000], 4_000)  # a WAV header claiming 4 kHz: 100 s
    with pytest.raises(A.TooLongAudioError, match=r"longer than 30 s; at most 30 s"):
        A.decode_audio(at_4k, max_seconds=30)


@pytest.mark.parametrize("rate", [1, 100, 3_999])
def test_a_rate_below_the_minimum_is_refused_before_resampling(tone_audio, rate):
    # 50,000 frames at 1 Hz would resample to 800 M samples (3.2 GB) at 16 kHz.
    with pytest.raises(A.AudioError, match="between 4,000 and 384,000 Hz"):
        A.pcm_to_audio(b"\x01\x00" * 50_000, rate)
    with pytest.raises(A.UndecodableAudioError, match="between 4,000 and 384,000 Hz"):
        A.decode_audio(_encode(np.tile(tone_audio, 2)[:50_000], rate), max_seconds=30)


def test_ffmpeg_stops_decoding_once_past_the_maximum(tone_audio):
    long = np.tile(tone_audio, 4)  # 10 s
    data = ffmpeg_encode(long, C.SAMPLE_RATE, "mp4", "aac")
    with pytest.raises(A.TooLongAudioError, match=r"longer than 3 s; at most 3 s"):
        A.decode_audio(data, max_seconds=3)
    assert A.decode_audio(data, max_seconds=11).size == pytest.approx(long.size, abs=0.1 * C.SAMPLE_RATE)


@pytest.mark.parametrize("data", [
    b"this is not audio at all" * 100,
    b"RIFF not really a wav file" * 20,
    b"OggS this is not audio" * 50,
    b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 8,
    b"\x00" * 5000,
], ids=["text", "riff", "ogg", "id3", "zeros"])
def test_garbage_gets_a_message_for_a_person(data):
    with pytest.raises(A.UndecodableAudioError) as info:
        A.decode_audio(data)
    message = str(info.value)
    assert "could not be decoded" in message and "M4A/AAC" in message and "raw PCM" in message
    for internal in ("0x", "libsndfile", "Error opening", "BytesIO", "Errno", "avcodec", "<"):
        assert internal not in message


def test_a_file_without_a_sound_track_says_so():
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:  # a silent video: 5 frames, no audio
        stream = out.add_stream("mpeg4", rate=5)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(A.UndecodableAudioError, match=r"no sound track \(it holds only video\)"):
        A.decode_audio(buf.getvalue())


def test_a_file_claiming_an_absurd_rate_or_channel_count_is_refused_before_it_is_read():
    many = _encode(np.zeros((1600, 8), np.float32), 655_350, "FLAC")  # 8 channels at 655 kHz
    with pytest.raises(A.UndecodableAudioError, match="samples per second"):
        A.decode_audio(many, max_seconds=60)
    channels = _encode(np.zeros((160, 20), np.float32), C.SAMPLE_RATE, "WAV")
    with pytest.raises(A.UndecodableAudioError, match="20 channels"):
        A.decode_audio(channels)


def test_multichannel_files_are_mixed_to_mono_block_by_block(tone_audio):
    n = A.READ_BLOCK_FRAMES + 1000  # more than one block
    stereo = np.stack([np.resize(tone_audio, n), -0.5 * np.resize(tone_audio, n)], axis=1)
    out = A.decode_audio(_encode(stereo, C.SAMPLE_RATE, "WAV"))
    np.testing.assert_allclose(out, 0.25 * np.resize(tone_audio, n), atol=1e-4)
