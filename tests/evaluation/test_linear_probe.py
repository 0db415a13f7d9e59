"""Tests for eva's linear probe (pathfm.evaluation.linear_probe) on small synthetic features."""

import numpy as np
import pytest

from pathfm.evaluation.linear_probe import (
    LinearProbeConfig,
    _batch_indices,
    evaluate_linear_head,
    linear_probe,
)

# eva's recipe shrunk to small batches and few steps (so a 10x larger lr), validating every 25.
SMALL = LinearProbeConfig(
    learning_rate=3e-3,
    batch_size=64,
    max_steps=1000,
    patience_steps=100,
    eval_every=25,
    seeds=(0, 1, 2),
)


def _blobs(seed: int, n: int, num_classes: int, spread: float = 0.5):
    """Features [n, 8] around well separated class centres, labels [n]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    centres = 3.0 * np.eye(num_classes, 8)
    return (centres[labels] + spread * rng.normal(size=(n, 8))).astype(np.float32), labels


def test_separable_features_reach_perfect_balanced_accuracy_and_stop_early(caplog) -> None:
    (tx, ty), (vx, vy), (sx, sy) = _blobs(0, 400, 3), _blobs(1, 150, 3), _blobs(2, 150, 3)
    with caplog.at_level("INFO", logger="pathfm.evaluation.linear_probe"):
        result = linear_probe(tx, ty, vx, vy, sx, sy, 3, SMALL)
    seeds = len(SMALL.seeds)
    phases = [r.getMessage() for r in caplog.records]
    assert [p.split(":")[0] for p in phases] == [
        f"linear probe seed {i}/{seeds}" for i in range(1, seeds + 1)
    ]
    assert phases[-1].endswith("test balanced accuracy 1.0000")
    assert result["mean"]["balanced_accuracy"] == 1.0 and result["std"]["balanced_accuracy"] == 0
    assert result["mean"]["accuracy"] == 1.0
    assert "auc" not in result["mean"]  # only for two classes
    for run in result["runs"]:
        # Validation hits 1.0, cannot improve, and training stops `patience_steps` later.
        assert run["val_balanced_accuracy"] == 1.0
        assert run["steps"] == run["best_step"] + SMALL.patience_steps < SMALL.max_steps
        assert [h["step"] for h in run["history"]] == list(range(25, run["steps"] + 1, 25))
        losses = [h["train_loss"] for h in run["history"]]
        assert losses[-1] < losses[0]


def test_shuffled_labels_give_chance() -> None:
    (tx, ty), (vx, vy), (sx, sy) = _blobs(3, 400, 2), _blobs(4, 200, 2), _blobs(5, 400, 2)
    rng = np.random.default_rng(0)
    shuffled = [rng.permutation(y) for y in (ty, vy, sy)]
    result = linear_probe(tx, shuffled[0], vx, shuffled[1], sx, shuffled[2], 2, SMALL)
    assert result["mean"]["balanced_accuracy"] == pytest.approx(0.5, abs=0.07)
    assert result["mean"]["auc"] == pytest.approx(0.5, abs=0.07)
    values = [run["balanced_accuracy"] for run in result["runs"]]
    assert result["std"]["balanced_accuracy"] == pytest.approx(np.std(values, ddof=1))


def test_best_validation_params_are_restored() -> None:
    # Noise labels for training: validation balanced accuracy wanders, so the last validation is
    # below the best one and the restored head is not the final one.
    (tx, ty), (vx, vy), (sx, sy) = _blobs(3, 400, 2), _blobs(4, 200, 2), _blobs(5, 400, 2)
    noise = np.random.default_rng(1).permutation(ty)
    result = linear_probe(tx, noise, vx, vy, sx, sy, 2, SMALL)
    for run in result["runs"]:
        scores = [h["val_balanced_accuracy"] for h in run["history"]]
        assert run["val_balanced_accuracy"] == max(scores)
        assert run["best_step"] == run["history"][int(np.argmax(scores))]["step"]
        assert scores[-1] < max(scores)  # the final head differs from the restored one
        restored_val = evaluate_linear_head(run["params"], vx, vy, 2)
        assert restored_val["balanced_accuracy"] == pytest.approx(run["val_balanced_accuracy"])
        restored_test = evaluate_linear_head(run["params"], sx, sy, 2)
        assert restored_test == {
            name: run[name] for name in ("balanced_accuracy", "accuracy", "auc")
        }
    kernels = [run["params"]["kernel"] for run in result["runs"]]
    assert not np.allclose(kernels[0], kernels[1])  # seeds change initialisation and batches


def test_batches_are_replacement_free_epochs() -> None:
    batches = _batch_indices(num_samples=10, batch_size=4, num_steps=7, seed=0)  # 2.8 epochs
    stream = batches.ravel()
    assert batches.shape == (7, 4)
    np.testing.assert_array_equal(np.sort(stream[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(stream[10:20]), np.arange(10))
    assert len(set(stream[20:].tolist())) == 8
    assert not np.array_equal(stream[:10], stream[10:20])  # each epoch reshuffled
    assert not np.array_equal(batches, _batch_indices(10, 4, 7, seed=1))


def test_missing_validation_split_is_a_clear_error() -> None:
    x, y = _blobs(0, 20, 2)
    with pytest.raises(ValueError, match="pass val_x and val_y"):
        linear_probe(x, y, None, None, x, y, 2, SMALL)
    with pytest.raises(ValueError, match=r"test_x must be \[N, D\]"):
        linear_probe(x, y, x, y, x, y[:5], 2, SMALL)
    with pytest.raises(ValueError, match=r"train_y must be non-empty class indices in \[0, 2\)"):
        linear_probe(x, y + 1, x, y, x, y, 2, SMALL)
