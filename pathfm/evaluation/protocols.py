"""The evaluation protocols one can ask for, by name, for the evaluation run and the online probe
alike: the linear probe (eva) and the weighted kNN (facebookresearch/dino `eval_knn.py`); the
evaluation run adds the colour-statistics baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pathfm.errors import ConfigError
from pathfm.evaluation import metrics
from pathfm.evaluation.knn import knn_classify

PROTOCOLS = ("linear_probe", "knn")
# The evaluation run also scores the colour-statistics baseline (`colour_baseline.py`): a linear
# probe on the images' colour histograms, which says how much of a task colour alone solves.
EVAL_PROTOCOLS = (*PROTOCOLS, "colour_baseline")


def check_protocols(
    names: Sequence[str], key: str, allow_empty: bool = False, known: Sequence[str] = PROTOCOLS
) -> None:
    """ConfigError naming `key` unless `names` is one or more of `known` (or none, when
    `allow_empty`)."""
    bad = [name for name in names if name not in known]
    if bad or not (names or allow_empty):
        raise ConfigError(f"config.{key}: use one or more of {tuple(known)}, got {tuple(names)}")


def knn_scores(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Balanced accuracy and accuracy of the kNN classifier on the test features [N, D]."""
    predictions, _ = knn_classify(train_x, train_y, test_x, n_classes, k, temperature)
    return {
        "balanced_accuracy": float(metrics.balanced_accuracy(test_y, predictions, n_classes)),
        "accuracy": float(metrics.accuracy(test_y, predictions)),
    }
