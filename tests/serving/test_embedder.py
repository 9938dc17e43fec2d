"""The embedder's two halves: one front-end pass per recording, windows sliced from it; the body on
LiteRT with int8 weights (the default) or on the SavedModel."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from data_gen import constants as C
from data_gen.windows import cut_master_windows, cut_query_views


@pytest.fixture(scope="module")
def tf_embedder(untrained_model_dir):
    """The exact float32 body (the SavedModel): what the sliced front-end must reproduce exactly."""
    from serving.embedder import Embedder

    return Embedder(untrained_model_dir, runtime="tensorflow")


def _hum(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * C.SAMPLE_RATE))) / C.SAMPLE_RATE
    f0 = 220.0 * 2 ** (np.floor(t * 2.5) % 5 / 12)
    audio = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / C.SAMPLE_RATE) + 0.01 * rng.standard_normal(t.size)
    return audio.astype(np.float32)


@pytest.mark.parametrize("seconds", [2.5, 4.0, 7.3, 10.0])
def test_sliced_spectrogram_gives_the_per_window_embeddings(tf_embedder, seconds):
    """Off-grid (end-aligned) and short windows included: same offsets and views, same embeddings up
    to float rounding (the front-end's matmul over more frames may sum in another order)."""
    embedder = tf_embedder
    assert embedder.splits_frontend
    audio = _hum(seconds, 0)
    rates = (1.0,)
    q = embedder.embed_query(audio, rates)
    windows, offsets, views = cut_query_views(audio, rates)
    np.testing.assert_array_equal(q.offsets_s, offsets)
    np.testing.assert_array_equal(q.views, views)
    np.testing.assert_allclose(q.emb, embedder.embed_windows(windows), atol=1e-5)
    emb, off = embedder.embed_master(audio)
    m_windows, m_off = cut_master_windows(audio)
    np.testing.assert_array_equal(off, m_off)
    np.testing.assert_allclose(emb, embedder.embed_windows(m_windows), atol=1e-5)


@pytest.mark.parametrize("seconds", [2.5, 7.3, 10.0])
def test_stretched_tempo_views_match_resampled_ones(tf_embedder, seconds):
    """The 0.8x and 1.25x views are stretched from the spectrogram: the same windows, offsets and views
    as resampling the audio (`cut_query_views`), embeddings close to the resampled views' and the 1x
    view exact."""
    audio = _hum(seconds, 7)
    rates = (1.0, 0.8, 1.25)
    q = tf_embedder.embed_query(audio, rates)
    windows, offsets, views = cut_query_views(audio, rates)
    np.testing.assert_array_equal(q.offsets_s, offsets)
    np.testing.assert_array_equal(q.views, views)
    want = tf_embedder.embed_windows(windows)
    sung = views == 0
    np.testing.assert_allclose(q.emb[sung], want[sung], atol=1e-5)
    assert _cosines(q.emb[~sung], want[~sung]).min() > 0.95


def test_the_stretch_source_holds_only_the_silence_the_views_read(tf_embedder, monkeypatch):
    """The views of a recording read from a source padded just past what their windows reach equal
    those from one padded with a whole window of silence (the frames are the same), whatever the length."""
    embedder, rates = tf_embedder, (1.0, 0.8, 1.25)
    ten = _hum(10.0, 2)
    assert embedder.stretch_source(ten, rates).shape[0] < embedder.log_power(
        np.pad(ten, (0, C.WINDOW_SAMPLES + embedder._n_fft))).shape[0] * 0.75
    short = {s: embedder.query_log_power(_hum(s, 3), rates) for s in (2.0, 3.99, 4.5, 5.01, 10.0)}
    monkeypatch.setattr(type(embedder), "stretch_source", lambda self, audio, rates: self.log_power(
        np.pad(np.asarray(audio, np.float32), (0, C.WINDOW_SAMPLES + self._n_fft))))
    for seconds, (logp, offsets, views) in short.items():
        old_logp, old_offsets, old_views = embedder.query_log_power(_hum(seconds, 3), rates)
        np.testing.assert_array_equal(offsets, old_offsets)
        np.testing.assert_array_equal(views, old_views)
        np.testing.assert_allclose(logp, old_logp, atol=1e-5, err_msg=str(seconds))


def test_a_stretched_view_reads_the_right_frames(tf_embedder):
    from data_gen.windows import window_starts

    embedder = tf_embedder
    audio = _hum(9.0, 8)
    source = embedder.stretch_source(audio, (1.0, 2.0))
    hop, n_fft = embedder._frame_hop, embedder._n_fft
    # rate 1: the frames themselves (on the frame grid), i.e. what window_log_power slices
    logp, starts, reads_to = embedder.stretched_view(source, audio.size, 1.0)
    sliced, (sliced_starts,) = embedder.window_log_power([audio], C.QUERY_WINDOW_HOP)
    np.testing.assert_array_equal(starts, sliced_starts)
    on_grid = starts % hop == 0
    np.testing.assert_allclose(logp[on_grid], sliced[on_grid], atol=1e-4)
    # rate 2: frame k of the window at view sample s hears the recording at (s + k * hop + n_fft / 2) / 2
    logp, starts, reads_to = embedder.stretched_view(source, audio.size, 2.0)
    np.testing.assert_array_equal(starts, window_starts(2 * audio.size, C.TEMPO_VIEW_WINDOW_HOP))  # 2 s apart
    s, k = int(starts[3]), 10
    pos = ((s + k * hop + n_fft / 2) / 2 - n_fft / 2) / hop
    lo = int(np.floor(pos))
    np.testing.assert_allclose(logp[3, k], source[lo] + (pos - lo) * (source[lo + 1] - source[lo]), atol=1e-4)
    assert np.all(np.diff(reads_to) >= 0) and reads_to[0] < audio.size < reads_to[-1]


def test_window_log_power_slices_exactly_what_each_window_would_get(embedder):
    audio = _hum(9.5, 1)
    logp, (starts,) = embedder.window_log_power([audio], C.QUERY_WINDOW_HOP)
    assert logp.shape[0] == starts.size == 7  # 0..5 s on the grid + the end-aligned 5.5 s
    own = embedder.log_power(np.stack([audio[s : s + C.WINDOW_SAMPLES] for s in starts]))
    np.testing.assert_allclose(logp, own, atol=1e-4)


def test_an_export_without_the_split_signatures_embeds_per_window(tf_embedder, untrained_model_dir, tmp_path):
    """Models exported before the front-end signatures still serve (the per-window path)."""
    from serving.embedder import Embedder

    embedder = tf_embedder
    old = Embedder(untrained_model_dir)
    old._log_power_fn = None  # as loaded from an older SavedModel
    assert not old.splits_frontend
    audio = _hum(6.0, 2)
    np.testing.assert_allclose(old.embed_query(audio, (1.0,)).emb, embedder.embed_query(audio, (1.0,)).emb, atol=1e-5)
    resampled, stretched = old.embed_query(audio, (1.0, 1.25)), embedder.embed_query(audio, (1.0, 1.25))
    np.testing.assert_array_equal(resampled.offsets_s, stretched.offsets_s)
    assert _cosines(resampled.emb, stretched.emb).min() > 0.95
    master = _hum(9.0, 3)
    (emb, off), (want_emb, want_off) = old.embed_master(master, 2.0), embedder.embed_master(master, 2.0)
    np.testing.assert_array_equal(off, [0.0, 2.0, 4.0, 5.0])  # the 2 s grid + the end-aligned window
    np.testing.assert_array_equal(off, want_off)
    np.testing.assert_allclose(emb, want_emb, atol=1e-5)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_default_runtime_is_the_int8_body_and_close_to_the_float_one(embedder, tf_embedder):
    """Every export carries the int8 LiteRT body and the default embedder runs it; its embeddings
    stay within cosine 0.99 of the exact float32 body (the trained default model: within 0.999,
    tests/training/test_golden.py), offsets and views unchanged."""
    from serving.embedder import TFLITE_BATCH

    assert embedder.runtime == "tflite-int8" and tf_embedder.runtime == "tensorflow"
    audio = _hum(10.0, 4)
    got, want = embedder.embed_query(audio, (1.0, 0.8, 1.25)), tf_embedder.embed_query(audio, (1.0, 0.8, 1.25))
    np.testing.assert_array_equal(got.offsets_s, want.offsets_s)
    np.testing.assert_array_equal(got.views, want.views)
    assert got.emb.dtype == np.float32 and got.emb.shape == want.emb.shape
    assert _cosines(got.emb, want.emb).min() > 0.99
    np.testing.assert_allclose(np.linalg.norm(got.emb, axis=1), 1.0, atol=1e-5)
    # batches larger than batch_size, and an empty batch
    master = _hum(90.0, 5)
    (emb, off), (want_emb, want_off) = embedder.embed_master(master), tf_embedder.embed_master(master)
    assert emb.shape[0] > embedder.batch_size > TFLITE_BATCH
    np.testing.assert_array_equal(off, want_off)
    assert _cosines(emb, want_emb).min() > 0.99
    assert embedder.embed_log_power(np.zeros((0, 97, 72), np.float32)).shape == (0, embedder.dim)


def test_concurrent_calls_each_get_their_own_interpreter_and_the_same_answers(embedder):
    logp, _ = embedder.window_log_power([_hum(12.0, s) for s in range(4)], C.QUERY_WINDOW_HOP)
    want = embedder.embed_log_power(logp)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                results[i] = embedder.embed_log_power(logp[i:] if i % 2 else logp)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, got in results.items():
        np.testing.assert_allclose(got, want[i:] if i % 2 else want, atol=1e-6)
    assert 1 <= len(embedder._runners) <= len(threads)  # idle again: no more than the calls at once


def test_the_most_recently_used_interpreter_is_used_next(embedder):
    """Last in, first out, so that the interpreter whose weights and arena are still in the cache runs
    the next call (a server's worker threads take turns on requests)."""
    logp, _ = embedder.window_log_power([_hum(6.0, 1)], C.QUERY_WINDOW_HOP)
    embedder.embed_log_power(logp)
    with embedder._tflite_runner() as first:
        with embedder._tflite_runner() as second:  # a second call at once: another interpreter
            assert second is not first
        with embedder._tflite_runner() as third:
            assert third is second
    with embedder._tflite_runner() as again:
        assert again is first


def test_runtime_choice_env_and_an_export_without_the_int8_body(untrained_model_dir, tmp_path, monkeypatch):
    from serving.embedder import BODY_TFLITE_FILE, RUNTIME_ENV, Embedder, ModelError
    from training.export import add_tflite_body

    with pytest.raises(ValueError, match="unknown embedder runtime 'gpu'"):
        Embedder(untrained_model_dir, runtime="gpu")
    monkeypatch.setenv(RUNTIME_ENV, "tensorflow")
    assert Embedder(untrained_model_dir).runtime == "tensorflow"
    monkeypatch.delenv(RUNTIME_ENV)
    older = tmp_path / "older"
    shutil.copytree(untrained_model_dir, older)
    (older / BODY_TFLITE_FILE).unlink()
    assert Embedder(older).runtime == "tensorflow"  # "auto" falls back to the SavedModel
    with pytest.raises(ModelError, match=f"has no {BODY_TFLITE_FILE}.*--add-tflite"):
        Embedder(older, runtime="tflite")
    assert add_tflite_body(older) == older / BODY_TFLITE_FILE
    assert (older / BODY_TFLITE_FILE).read_bytes() == (untrained_model_dir / BODY_TFLITE_FILE).read_bytes()
    assert Embedder(older).runtime == "tflite-int8"
    from training.export import main as export_main

    assert export_main(["--add-tflite", str(tmp_path / "no-model")]) == 2


def test_a_server_process_runs_tensorflow_on_one_thread_per_pool():
    """Set before TensorFlow starts (a fresh process, as each server process is); once it has started
    with other pools, refused without changing anything."""
    import subprocess
    import sys

    def run(first: str) -> list[str]:
        code = ("import tensorflow as tf\n"
                "from serving.embedder import single_threaded_tensorflow\n"
                f"{first}\n"
                "ok = single_threaded_tensorflow()\n"
                "tf.constant(1.0) + 1.0\n"
                "print(tf.config.threading.get_intra_op_parallelism_threads(), "
                "tf.config.threading.get_inter_op_parallelism_threads(), ok)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
        return out.stdout.split()

    assert run("pass") == ["1", "1", "True"]
    assert run("tf.constant(1.0) + 1.0") == ["0", "0", "False"]  # started first: TensorFlow's defaults stay
