"""The index's stored window vectors: exact re-scoring of candidate rows."""

from __future__ import annotations

import numpy as np
import pytest

from serving.vectors import WindowVectors


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_scores_are_the_dot_products_of_each_query_with_its_candidates(dtype, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = WindowVectors.from_float(x, dtype)
    store.save(tmp_path)
    mapped = WindowVectors.load(tmp_path, dtype, mmap=True)
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    rows = rng.integers(0, 500, (3, 40))
    rows[1, :10] = rows[0, :10]  # candidates shared between query windows
    rows[2, 5] = rows[2, 6] = 7  # and repeated within one
    rows[0, -3:] = -1  # absent neighbours
    for vectors in (store, mapped):
        got = vectors.scores(queries, rows)
        want = np.array([[q @ vectors.rows(np.array([r]))[0] if r >= 0 else -np.inf for r in rr]
                         for q, rr in zip(queries, rows)], np.float32)
        assert got.dtype == np.float32 and got.shape == rows.shape
        np.testing.assert_array_equal(np.isinf(got), rows < 0)
        np.testing.assert_allclose(got[rows >= 0], want[rows >= 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_rows_by_number_match_rows_by_slice_and_empty_candidate_lists_score(dtype, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    WindowVectors.from_float(x, dtype).save(tmp_path)
    mapped = WindowVectors.load(tmp_path, dtype, mmap=True)
    np.testing.assert_array_equal(mapped.rows(np.arange(10, 20)), mapped.rows(slice(10, 20)))
    assert mapped.rows(np.array([3, 3, 0])).shape == (3, 8)
    assert mapped.scores(np.ones((2, 8), np.float32), np.zeros((2, 0), np.int64)).shape == (2, 0)
    assert mapped.scores(np.ones((0, 8), np.float32), np.zeros((0, 5), np.int64)).shape == (0, 5)
