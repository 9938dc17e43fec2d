"""The shipped default model still gives the committed embeddings of a fixed input."""

import numpy as np
import pytest

from training.golden import DEFAULT_MODEL_DIR, GOLDEN_FILE, golden_windows


@pytest.fixture(scope="module")
def embedder():
    from serving.embedder import Embedder

    if not (DEFAULT_MODEL_DIR / "metadata.json").is_file():
        pytest.skip(f"no default model at {DEFAULT_MODEL_DIR}")
    return Embedder(DEFAULT_MODEL_DIR)


def test_golden_embedding(embedder):
    golden = np.load(GOLDEN_FILE)
    assert str(golden["version"]) == embedder.version, (
        "serving/default_model changed: regenerate with `.venv/bin/python -m training.golden`")
    got = embedder.embed_windows(golden_windows())
    np.testing.assert_allclose(got, golden["embedding"], atol=2e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_the_int8_body_of_the_default_model_stays_close_to_the_golden_embedding(embedder):
    """The serving runtime (LiteRT, int8 weights) against the exact float32 golden embeddings."""
    from serving.embedder import Embedder

    golden = np.load(GOLDEN_FILE)
    int8 = Embedder(DEFAULT_MODEL_DIR, runtime="tflite")
    windows = golden_windows()
    got = int8.embed_log_power(int8.log_power(windows))
    cos = np.sum(got * golden["embedding"], axis=1)
    assert cos.min() > 0.999, cos


def test_default_model_is_small_and_fine_tunable(embedder):
    files = [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    assert (DEFAULT_MODEL_DIR / "keras" / "encoder.weights.h5").is_file()
    assert embedder.dim == 128
