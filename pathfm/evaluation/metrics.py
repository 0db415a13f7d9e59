"""Classification metrics as jittable jnp functions that equal scikit-learn's.

`balanced_accuracy` is `sklearn.metrics.balanced_accuracy_score`, `roc_auc` is `roc_auc_score` on
binary labels and `multiclass_roc_auc` is `roc_auc_score(multi_class="ovr", average="macro")`.
They take NumPy or JAX arrays and return 0-d float32 arrays. Where scikit-learn raises (only one
class in the labels) they return NaN instead, so that they stay jittable. Scores are compared in
float32: float64 scores that differ only beyond float32 precision count as ties.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@jax.jit
def accuracy(labels: jax.Array, predictions: jax.Array) -> jax.Array:
    """Fraction of predictions [N] equal to labels [N]."""
    return jnp.mean(jnp.asarray(labels) == jnp.asarray(predictions), dtype=jnp.float32)


@functools.partial(jax.jit, static_argnames="num_classes")
def balanced_accuracy(labels: jax.Array, predictions: jax.Array, num_classes: int) -> jax.Array:
    """Recall averaged over the classes present in labels [N] (ints in [0, num_classes)).

    predictions [N] are class indices. A class that is predicted but absent from labels has no
    recall and is left out, as scikit-learn does.
    """
    labels, predictions = jnp.asarray(labels), jnp.asarray(predictions)
    support = jnp.bincount(labels, length=num_classes)  # [C]
    hits = jnp.bincount(
        labels, weights=(labels == predictions).astype(jnp.float32), length=num_classes
    )
    present = support > 0
    recall = hits / jnp.maximum(support, 1)
    return jnp.sum(jnp.where(present, recall, 0.0)) / jnp.sum(present)


@jax.jit
def roc_auc(labels: jax.Array, scores: jax.Array) -> jax.Array:
    """Exact area under the ROC curve of scores [N] for binary labels [N] (positive: > 0).

    The Mann-Whitney statistic from ranks: the mean over positives of the fraction of negatives
    scored lower, a tie counting one half, which is the trapezoidal area scikit-learn computes.
    """
    positive = jnp.asarray(labels) > 0  # [N]
    scores = jnp.asarray(scores, jnp.float32)  # [N]
    order = jnp.argsort(scores)
    positives_before = jnp.concatenate(
        [jnp.zeros(1, jnp.int32), jnp.cumsum(positive[order], dtype=jnp.int32)]
    )  # [N + 1]: positives among the i lowest scores
    below = jnp.searchsorted(scores[order], scores, side="left")  # [N]: # scores < own
    not_above = jnp.searchsorted(scores[order], scores, side="right")  # [N]: # scores <= own
    negatives_below = below - positives_before[below]
    negatives_not_above = not_above - positives_before[not_above]
    num_positive = jnp.sum(positive)
    num_negative = scores.shape[0] - num_positive
    wins = (negatives_below + negatives_not_above) / (2.0 * num_negative)  # [N]
    return jnp.sum(jnp.where(positive, wins, 0.0)) / num_positive


@jax.jit
def multiclass_roc_auc(labels: jax.Array, probs: jax.Array) -> jax.Array:
    """One-vs-rest AUC of probs [N, C] for labels [N] in [0, C), averaged over the C classes.

    NaN when a class is absent from labels (scikit-learn raises).
    """
    labels = jnp.asarray(labels)
    classes = jnp.arange(probs.shape[1])
    per_class = jax.vmap(lambda c, s: roc_auc(labels == c, s), in_axes=(0, 1))(classes, probs)
    return jnp.mean(per_class)
