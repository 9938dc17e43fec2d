"""Losses on hand-made similarity matrices."""

import numpy as np
import pytest

from training.losses import LossConfig, batch_softmax_loss, combined_loss, semi_hard_triplet_loss


def test_semi_hard_picks_closest_negative_farther_than_positive():
    # Row 0: positive sim 0.6 (d=0.4). Negatives: 0.9 (d=0.1, harder than positive: not semi-hard),
    # 0.5 (d=0.5, semi-hard and the closest such), 0.1 (d=0.9).
    sim = np.array([[0.6, 0.9, 0.5, 0.1],
                    [0.0, 1.0, 0.0, 0.0],
                    [0.0, 0.0, 1.0, 0.0],
                    [0.0, 0.0, 0.0, 1.0]], np.float32)
    labels = np.arange(4)
    margin = 0.3
    loss = float(semi_hard_triplet_loss(sim, labels, margin))
    # Row 0: max(0, 0.4 - 0.5 + 0.3) = 0.2; rows 1-3: d_ap=0, semi-hard d_an=1 -> max(0, 0-1+0.3)=0.
    assert loss == pytest.approx(0.2 / 4, abs=1e-6)


def test_falls_back_to_farthest_negative_when_no_semi_hard_exists():
    sim = np.array([[0.2, 0.9, 0.8],
                    [0.0, 1.0, 0.0],
                    [0.0, 0.0, 1.0]], np.float32)
    # Row 0: d_ap = 0.8; negatives d = 0.1, 0.2 (both closer): farthest = 0.2 -> 0.8 - 0.2 + 0.1 = 0.7.
    loss = float(semi_hard_triplet_loss(sim, np.arange(3), 0.1))
    assert loss == pytest.approx(0.7 / 3, abs=1e-6)


def test_same_melody_columns_are_not_negatives():
    sim = np.array([[0.5, 0.99], [0.99, 0.5]], np.float32)
    assert float(semi_hard_triplet_loss(sim, np.array([7, 7]), 0.2)) == 0.0
    assert float(batch_softmax_loss(sim, np.array([7, 7]), 0.1)) == pytest.approx(0.0, abs=1e-6)


def test_softmax_term_value():
    sim = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    expected = np.log1p(np.exp(-1.0 / 0.5))  # -log(e^2 / (e^2 + e^0))
    assert float(batch_softmax_loss(sim, np.arange(2), 0.5, symmetric=False)) == pytest.approx(expected, rel=1e-5)
    asym = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    rows = (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(1.0))) / 2  # logits (1, 0) -> labels 0 and 1
    cols = np.log(2.0)  # columns: logits (1, 1) -> label 0 and (0, 0) -> label 1
    got = float(batch_softmax_loss(asym, np.arange(2), 1.0, symmetric=True))
    assert got == pytest.approx(0.5 * (rows + cols), rel=1e-5)


def test_combined_weights():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    m = q + 0.3 * rng.standard_normal((6, 8)).astype(np.float32)
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    labels = np.arange(6)
    both = combined_loss(q, m, labels, LossConfig(triplet_weight=2.0, softmax_weight=0.5))
    assert float(both["loss"]) == pytest.approx(2.0 * float(both["triplet"]) + 0.5 * float(both["softmax"]), rel=1e-6)
    only_ce = combined_loss(q, m, labels, LossConfig(triplet_weight=0.0))
    assert float(only_ce["loss"]) == pytest.approx(float(only_ce["softmax"]), rel=1e-6)
