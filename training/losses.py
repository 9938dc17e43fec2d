"""Losses over a batch of (query, master) embedding pairs.

Both work on the cross-modal similarity matrix S = q @ m.T ([batch, batch], cosine similarities of
unit-norm embeddings): row i is query i against every master in the batch; S[i, i] is its own
master. Masters of the same melody as query i (other pairs of the same melody in the batch) are
neither positives nor negatives for it -- they are masked out.

* `semi_hard_triplet_loss`: distance d = 1 - S. For anchor query i, positive master i and, among
  masters of other melodies, the *semi-hard* negative: the closest negative that is still farther
  than the positive (d_ap < d_an); when none exists (every negative is closer than the positive, or
  there is none farther), the farthest negative is used (the gentlest choice, as in FaceNet's
  online mining -- it keeps the loss from collapsing early on the hardest, often mislabeled,
  negatives). Loss = mean_i max(0, d_ap - d_an + margin).
* `batch_softmax_loss`: the batch-wide confidence term: softmax cross-entropy of each query over
  all masters in the batch with logits S / temperature and the own master as the label (InfoNCE),
  averaged with the symmetric master -> queries direction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import tensorflow as tf

NEG_INF = -1e9


@dataclass(frozen=True)
class LossConfig:
    triplet_weight: float = 1.0
    triplet_margin: float = 0.2  # on the 1 - cosine distance scale
    softmax_weight: float = 1.0
    temperature: float = 0.1
    symmetric: bool = True  # softmax term also from masters to queries

    def to_dict(self) -> dict:
        return asdict(self)


def negatives_mask(labels: tf.Tensor) -> tf.Tensor:
    """[batch] melody labels -> [batch, batch] bool: True where column j is a valid negative for row i."""
    labels = tf.reshape(labels, [-1])
    return tf.not_equal(labels[:, None], labels[None, :])


def semi_hard_triplet_loss(sim: tf.Tensor, labels: tf.Tensor, margin: float) -> tf.Tensor:
    """Scalar triplet loss with in-batch semi-hard negative mining; `sim` is [batch, batch] q @ m.T."""
    sim = tf.convert_to_tensor(sim, tf.float32)
    dist = 1.0 - sim
    d_ap = tf.linalg.diag_part(dist)[:, None]  # [b, 1]
    neg = negatives_mask(labels)
    big = tf.constant(1e9, tf.float32)
    semi = tf.logical_and(neg, dist > d_ap)
    # Closest negative farther than the positive (semi-hard; may violate the margin or not).
    semi_hard = tf.reduce_min(tf.where(semi, dist, big), axis=1)
    # Fallback: the farthest negative.
    farthest = tf.reduce_max(tf.where(neg, dist, -big), axis=1)
    has_semi = tf.reduce_any(semi, axis=1)
    d_an = tf.where(has_semi, semi_hard, farthest)
    has_neg = tf.reduce_any(neg, axis=1)
    per_anchor = tf.maximum(d_ap[:, 0] - d_an + margin, 0.0)
    per_anchor = tf.where(has_neg, per_anchor, 0.0)
    return tf.reduce_sum(per_anchor) / tf.maximum(tf.reduce_sum(tf.cast(has_neg, tf.float32)), 1.0)


def batch_softmax_loss(sim: tf.Tensor, labels: tf.Tensor, temperature: float,
                       symmetric: bool = True) -> tf.Tensor:
    """Scalar InfoNCE cross-entropy over the batch similarity matrix (same-melody off-diagonals masked)."""
    sim = tf.convert_to_tensor(sim, tf.float32)
    b = tf.shape(sim)[0]
    eye = tf.eye(b, dtype=tf.bool)
    keep = tf.logical_or(negatives_mask(labels), eye)
    logits = tf.where(keep, sim / temperature, NEG_INF)
    target = tf.range(b)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
    loss = tf.reduce_mean(ce)
    if symmetric:
        ce_t = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=tf.transpose(logits))
        loss = 0.5 * (loss + tf.reduce_mean(ce_t))
    return loss


def combined_loss(q: tf.Tensor, m: tf.Tensor, labels: tf.Tensor, cfg: LossConfig) -> dict[str, tf.Tensor]:
    """Embeddings q, m [batch, dim] (unit-norm), labels [batch] -> {"loss", "triplet", "softmax"}."""
    sim = tf.matmul(q, m, transpose_b=True)
    trip = semi_hard_triplet_loss(sim, labels, cfg.triplet_margin)
    soft = batch_softmax_loss(sim, labels, cfg.temperature, cfg.symmetric)
    total = cfg.triplet_weight * trip + cfg.softmax_weight * soft
    return {"loss": total, "triplet": trip, "softmax": soft}
