"""Tests for DINO's weighted k-NN classifier (pathfm.evaluation.knn)."""

import numpy as np
import pytest

from pathfm.evaluation.knn import knn_classify


def _unit(degrees: float, norm: float = 1.0) -> list[float]:
    """A 2-D point at an angle (degrees) and distance from the origin."""
    radians = np.deg2rad(degrees)
    return [norm * np.cos(radians), norm * np.sin(radians)]


# Query at 0 degrees. Class 0: one point at 0 degrees (cosine 1). Class 1: two points at +-30
# degrees (cosine 0.866). Class 2: a point at 90 degrees, outside the top 3. Norms vary: only
# directions matter.
TRAIN_X = np.array([_unit(0, 3.0), _unit(30, 0.5), _unit(-30, 2.0), _unit(90)], np.float32)
TRAIN_Y = np.array([0, 1, 1, 2])
QUERY = np.array([_unit(0, 7.0)], np.float32)
COS30 = np.cos(np.deg2rad(30))


@pytest.mark.parametrize(
    ("temperature", "winner"),
    [(0.07, 0), (1.0, 1)],  # sharp weights: the single closest point wins; flat: the majority
)
def test_hand_computed_votes_and_temperature_decides(temperature: float, winner: int) -> None:
    predictions, votes = knn_classify(TRAIN_X, TRAIN_Y, QUERY, 3, k=3, temperature=temperature)
    expected = [np.exp(1 / temperature), 2 * np.exp(COS30 / temperature), 0.0]
    # exp(1/0.07) = 1.6e6 beats 2 exp(0.866/0.07) = 4.7e5; exp(1) = 2.7 loses to 2 exp(0.866) = 4.8.
    np.testing.assert_allclose(np.asarray(votes)[0], expected, rtol=1e-5)
    assert int(predictions[0]) == winner


def test_k_is_capped_at_the_training_set_size() -> None:
    _, votes = knn_classify(TRAIN_X, TRAIN_Y, QUERY, 3, k=20, temperature=1.0)
    expected = [np.e, 2 * np.exp(COS30), np.exp(0.0)]  # all four points vote
    np.testing.assert_allclose(np.asarray(votes)[0], expected, rtol=1e-5)


def _numpy_knn(train_x, train_y, test_x, num_classes, k, temperature):
    """DINO's knn_classifier written out in NumPy, one query at a time."""
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    votes = np.zeros((len(test), num_classes))
    for row, query in enumerate(test):
        similarity = train @ query
        nearest = np.argsort(-similarity)[:k]
        for index in nearest:
            votes[row, train_y[index]] += np.exp(similarity[index] / temperature)
    return votes.argmax(1), votes


@pytest.mark.parametrize(("seed", "chunk"), [(0, 64), (1, 1000)])
def test_matches_numpy_reference_on_random_data(seed: int, chunk: int) -> None:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, 32))
    train_y, test_y = rng.integers(0, 6, 500), rng.integers(0, 6, 150)
    train_x = (centers[train_y] + 1.5 * rng.normal(size=(500, 32))).astype(np.float32)
    test_x = (centers[test_y] + 1.5 * rng.normal(size=(150, 32))).astype(np.float32)
    predictions, votes = knn_classify(train_x, train_y, test_x, 6, chunk=chunk)  # 150 % 64 != 0
    expected_predictions, expected_votes = _numpy_knn(train_x, train_y, test_x, 6, 20, 0.07)
    np.testing.assert_allclose(np.asarray(votes), expected_votes, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(predictions), expected_predictions)
    assert np.mean(expected_predictions == test_y) > 0.5  # a real task, not votes for one class
