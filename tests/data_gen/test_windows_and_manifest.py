import numpy as np
import pytest

from data_gen import constants as C
from data_gen.manifest import (ManifestError, Query, Track, read_catalogue, read_queries,
                               write_catalogue, write_queries)
from data_gen.windows import cut_query_views, cut_windows, tempo_view, view_window_hop, window_starts


def test_window_starts_cover_the_end():
    n = C.WINDOW_SAMPLES + 3 * C.MASTER_WINDOW_HOP + 100
    starts = window_starts(n, C.MASTER_WINDOW_HOP)
    assert starts[0] == 0 and starts[-1] + C.WINDOW_SAMPLES == n
    assert np.all(np.diff(starts) <= C.MASTER_WINDOW_HOP)


def test_short_audio_is_one_padded_window():
    w, off = cut_windows(np.ones(1000, np.float32), C.QUERY_WINDOW_HOP)
    assert w.shape == (1, C.WINDOW_SAMPLES) and off.tolist() == [0.0]
    assert w[0, :1000].sum() == 1000 and w[0, 1000:].sum() == 0


def test_window_offsets_in_seconds():
    audio = np.arange(C.SAMPLE_RATE * 10, dtype=np.float32)
    w, off = cut_windows(audio, C.QUERY_WINDOW_HOP)
    assert off.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert w[3, 0] == 3 * C.SAMPLE_RATE


def test_tempo_view_plays_rate_times_longer_at_a_scaled_pitch():
    sr = C.SAMPLE_RATE
    t = np.arange(2 * sr) / sr
    tone = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
    assert tempo_view(tone, 1.0) is tone
    slow = tempo_view(tone, 1.25)
    assert slow.dtype == np.float32 and slow.shape[0] == int(2 * sr * 1.25)
    peak = np.argmax(np.abs(np.fft.rfft(slow))) * sr / slow.shape[0]
    assert peak == pytest.approx(440.0 / 1.25, rel=0.01)  # slower and lower, like a slowed record
    assert tempo_view(tone, 0.8).shape[0] == int(2 * sr * 0.8)
    with pytest.raises(ValueError, match="positive"):
        tempo_view(tone, 0.0)


def test_query_views_concatenate_the_windows_of_every_view():
    audio = np.random.default_rng(0).standard_normal(10 * C.SAMPLE_RATE).astype(np.float32)
    windows, offsets, views = cut_query_views(audio, (1.0, 0.8, 1.25))
    hops = [C.QUERY_WINDOW_HOP, C.TEMPO_VIEW_WINDOW_HOP, C.TEMPO_VIEW_WINDOW_HOP]  # as sung 1 s, the others 2 s
    assert [view_window_hop(r) for r in (1.0, 0.8, 1.25)] == hops
    per_view = [cut_windows(tempo_view(audio, r), hop)[1] for r, hop in zip((1.0, 0.8, 1.25), hops)]
    assert [int((views == v).sum()) for v in range(3)] == [len(o) for o in per_view] == [7, 3, 6]
    assert windows.shape == (len(views), C.WINDOW_SAMPLES) and offsets.shape == views.shape
    np.testing.assert_array_equal(windows[views == 0], cut_windows(audio, C.QUERY_WINDOW_HOP)[0])
    np.testing.assert_allclose(offsets[views == 2], per_view[2])


def test_catalogue_round_trip(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "t1.flac").write_bytes(b"x")
    (tmp_path / "a" / "t1.mid").write_bytes(b"x")
    write_catalogue(tmp_path / "manifest.csv",
                    [Track("t1", "Title, with comma", "Band", tmp_path / "a" / "t1.flac", tmp_path / "a" / "t1.mid")])
    text = (tmp_path / "manifest.csv").read_text()
    assert text.splitlines()[0] == "track_id,title,artist,path,melody_midi"
    assert "a/t1.flac" in text
    [t] = read_catalogue(tmp_path / "manifest.csv")
    assert t.title == "Title, with comma" and t.path == (tmp_path / "a" / "t1.flac").resolve()


def test_query_round_trip_with_open_set_and_extra(tmp_path):
    (tmp_path / "q.wav").write_bytes(b"x")
    write_queries(tmp_path / "q.csv", [Query("q1", tmp_path / "q.wav", None, {"kind": "hum"}),
                                       Query("q2", tmp_path / "q.wav", "t1", {"kind": "whistle"})])
    qs = read_queries(tmp_path / "q.csv")
    assert [q.track_id for q in qs] == [None, "t1"] and qs[1].extra == {"kind": "whistle"}


@pytest.mark.parametrize("content,message", [
    ("track_id,title,path\nt1,x,a.wav\n", "missing column"),
    ("track_id,title,artist,path\nt1,x,y,a.wav\nt1,x,y,a.wav\n", "duplicate track_id"),
    ("track_id,title,artist,path\n,x,y,a.wav\n", "empty track_id"),
    ("track_id,title,artist,path\nt1,x,y,missing.wav\n", "not found"),
    ("track_id,title,artist,path\n", "no tracks"),
    ("track_id,title,artist,path\nt1,x,y,a.wav,extra\n", "more fields"),
])
def test_malformed_catalogue(tmp_path, content, message):
    (tmp_path / "a.wav").write_bytes(b"x")
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_catalogue(tmp_path / "m.csv")


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_queries(tmp_path / "nope.csv")
