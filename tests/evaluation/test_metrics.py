"""Tests for the classification metrics (pathfm.evaluation.metrics) against scikit-learn."""

import warnings

import jax
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from pathfm.evaluation.metrics import (
    accuracy,
    balanced_accuracy,
    multiclass_roc_auc,
    roc_auc,
)


def _imbalanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """Labels [n] with class frequencies from a skewed Dirichlet draw."""
    return rng.choice(num_classes, size=n, p=rng.dirichlet(np.full(num_classes, 0.7)))


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_accuracy_equals_sklearn(num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = _imbalanced_labels(rng, 300, num_classes)
    # Mostly right, some random mistakes, so recalls differ per class.
    predictions = np.where(rng.random(300) < 0.6, labels, rng.integers(0, num_classes, 300))
    ours = float(balanced_accuracy(labels, predictions, num_classes))
    assert ours == pytest.approx(balanced_accuracy_score(labels, predictions), abs=1e-6)
    assert float(accuracy(labels, predictions)) == pytest.approx(np.mean(labels == predictions))


def test_balanced_accuracy_skips_classes_absent_from_labels() -> None:
    labels = np.array([0, 0, 0, 1, 3, 3])  # class 2 and 4 never occur; 4 is predicted
    predictions = np.array([0, 4, 0, 1, 3, 2])
    # Recalls: class 0 2/3, class 1 1, class 3 1/2 -> mean over the three present classes.
    expected = (2 / 3 + 1 + 1 / 2) / 3
    assert float(balanced_accuracy(labels, predictions, 5)) == pytest.approx(expected, abs=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the predicted-only class
        assert balanced_accuracy_score(labels, predictions) == pytest.approx(expected)


def test_balanced_accuracy_is_jittable_with_static_num_classes() -> None:
    labels, predictions = np.array([0, 1, 1, 2]), np.array([0, 1, 0, 0])
    jitted = jax.jit(balanced_accuracy, static_argnames="num_classes")
    assert float(jitted(labels, predictions, num_classes=3)) == pytest.approx((1 + 0.5 + 0) / 3)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(400) < 0.15 + 0.3 * seed).astype(np.int32)  # 15% to 75% positives
    scores = (rng.normal(size=400) + 0.8 * labels).astype(np.float32)
    if ties:
        scores = np.round(scores * 2) / 2  # a handful of distinct values: many ties across labels
    assert float(roc_auc(labels, scores)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


def test_roc_auc_known_cases() -> None:
    labels = np.array([0, 0, 1, 1])
    assert float(roc_auc(labels, np.array([0.1, 0.2, 0.3, 0.4]))) == 1.0
    assert float(roc_auc(labels, np.array([0.4, 0.3, 0.2, 0.1]))) == 0.0
    assert float(roc_auc(labels, np.full(4, 0.5))) == 0.5  # all tied
    # One positive above both negatives, the other tied with one and above the other: 3.5 / 4.
    assert float(roc_auc(labels, np.array([0.1, 0.5, 0.5, 0.9]))) == 0.875
    assert np.isnan(float(roc_auc(np.ones(4), np.arange(4.0))))  # one class: undefined


def test_roc_auc_is_exact_for_extreme_imbalance() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros(50_000, np.int32)
    labels[rng.choice(50_000, 3, replace=False)] = 1
    scores = rng.normal(size=50_000).astype(np.float32) + labels
    assert float(roc_auc(labels, scores)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_roc_auc_equals_sklearn_ovr_macro(num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = _imbalanced_labels(rng, 300, num_classes)
    labels[:num_classes] = np.arange(num_classes)  # every class present
    logits = rng.normal(size=(300, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    probs = np.round(np.asarray(jax.nn.softmax(logits), np.float64), 2)  # rounded: ties
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    expected = np.mean(
        [roc_auc_score(labels == c, probs[:, c]) for c in range(num_classes)]
    )  # sklearn's ovr macro, written out so it also covers 2 columns
    if num_classes > 2:
        assert expected == pytest.approx(
            roc_auc_score(labels, probs, multi_class="ovr", average="macro")
        )
    assert float(multiclass_roc_auc(labels, probs)) == pytest.approx(expected, abs=1e-6)
