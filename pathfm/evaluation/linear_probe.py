"""eva's linear probe on frozen features (kaiko-ai/eva docs/leaderboards.md protocol), jitted.

One linear layer (PyTorch `nn.Linear` initialisation) trained with cross-entropy and AdamW (lr
3e-4, no weight decay) on batches of 256 drawn in replacement-free epochs, for at most 12,500
steps. Every `eval_every` steps (250) the validation balanced accuracy is computed; training stops
once it has not improved for `patience_steps` (1,250), and the parameters of the best validation
score are restored and scored on the test split. Repeated over seeds (initialisation and batch
order); mean and sample standard deviation over seeds, as eva reports them.

How this maps to eva (Lightning): eva validates once per epoch and counts its patience in
validations, so its patience in steps depends on the size of the training set; here patience is in
steps and validation runs every `eval_every` steps, so training stops at most `patience_steps`
(rounded up to a multiple of `eval_every`) after the best validation. eva's configs monitor
validation accuracy; the probe monitors balanced accuracy, the metric it reports. As with
Lightning's `min_delta=0` and `ModelCheckpoint(mode="max")`, only a strict improvement counts, so
the earliest best is kept. eva's tasks without a test split report the validation split: pass the
validation features again as test features to do the same.

Each chunk of `eval_every` steps is one jitted `lax.scan` over precomputed batch indices; the host
only decides when to stop. Epochs are concatenated so that every batch holds `batch_size` samples
(a batch may straddle two epochs); a training set smaller than `batch_size` is used whole at
every step.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import statistics
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pathfm.evaluation import metrics

log = logging.getLogger(__name__)

Params = Any  # {"kernel": [D, C], "bias": [C]}


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
    """eva's linear-probe recipe; `eval_every` is this implementation's validation cadence."""

    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    batch_size: int = 256
    max_steps: int = 12_500
    patience_steps: int = 1_250
    eval_every: int = 250
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "patience_steps", "eval_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LinearProbeConfig.{name} must be positive")
        if not self.seeds:
            raise ValueError("LinearProbeConfig.seeds must name at least one seed")


@functools.cache
def _adamw(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    """One optimiser object per setting, so the jitted chunk compiles once (PyTorch defaults)."""
    return optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnames=("in_features", "num_classes"))
def _init_head(key: jax.Array, in_features: int, num_classes: int) -> Params:
    """Dense(num_classes) with PyTorch's nn.Linear init: kernel and bias U(+-1/sqrt(fan_in))."""
    bound = in_features**-0.5

    def uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    head = nn.Dense(num_classes, kernel_init=uniform, bias_init=uniform)
    return head.init(key, jnp.zeros((1, in_features), jnp.float32))["params"]


def _logits(params: Params, x: jax.Array) -> jax.Array:
    """[B, D] -> [B, C]."""
    return nn.Dense(params["bias"].shape[0]).apply({"params": params}, x)


@functools.partial(jax.jit, static_argnames="optimizer")
def _train_chunk(
    params: Params,
    opt_state: Any,
    features: jax.Array,
    labels: jax.Array,
    batch_indices: jax.Array,
    optimizer: optax.GradientTransformation,
) -> tuple[Params, Any, jax.Array]:
    """Steps over batch_indices [S, B] into features [N, D], labels [N]; also the mean loss."""

    def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(_logits(params, x), y).mean()

    def step(carry: tuple[Params, Any], indices: jax.Array) -> tuple[tuple[Params, Any], jax.Array]:
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, features[indices], labels[indices])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batch_indices)
    return params, opt_state, jnp.mean(losses)


@functools.partial(jax.jit, static_argnames="num_classes")
def _balanced_accuracy(params: Params, x: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
    """Balanced accuracy of the head's predictions on x [N, D], y [N]: the early-stopping score."""
    return metrics.balanced_accuracy(y, jnp.argmax(_logits(params, x), axis=-1), num_classes)


@functools.partial(jax.jit, static_argnames="num_classes")
def _scores(params: Params, x: jax.Array, y: jax.Array, num_classes: int) -> dict[str, jax.Array]:
    """Balanced accuracy, accuracy and (two classes) AUC of the head on x [N, D], y [N]."""
    logits = _logits(params, x)
    predictions = jnp.argmax(logits, axis=-1)
    scores = {
        "balanced_accuracy": metrics.balanced_accuracy(y, predictions, num_classes),
        "accuracy": metrics.accuracy(y, predictions),
    }
    if num_classes == 2:
        scores["auc"] = metrics.roc_auc(y, jax.nn.softmax(logits, axis=-1)[:, 1])
    return scores


def evaluate_linear_head(params: Params, x: Any, y: Any, num_classes: int) -> dict[str, float]:
    """{'balanced_accuracy', 'accuracy'(, 'auc' for two classes)} of a head on x [N, D], y [N]."""
    scores = _scores(params, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), num_classes)
    return {name: float(value) for name, value in scores.items()}


def _batch_indices(num_samples: int, batch_size: int, num_steps: int, seed: int) -> np.ndarray:
    """[num_steps, batch_size] indices: shuffled epochs, each sample once per epoch."""
    rng = np.random.default_rng(seed)
    num_epochs = -(-num_steps * batch_size // num_samples)
    stream = np.concatenate([rng.permutation(num_samples) for _ in range(num_epochs)])
    return stream[: num_steps * batch_size].reshape(num_steps, batch_size).astype(np.int32)


def fit_linear_head(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    num_classes: int,
    config: LinearProbeConfig,
    seed: int,
) -> tuple[Params, dict[str, Any]]:
    """Train one head with early stopping; returns the best-validation params and a record.

    The record holds `steps` (taken), `best_step`, `val_balanced_accuracy` (at best_step) and
    `history` (one {'step', 'train_loss', 'val_balanced_accuracy'} per validation).
    """
    train_x, val_x = jnp.asarray(train_x, jnp.float32), jnp.asarray(val_x, jnp.float32)
    train_y, val_y = jnp.asarray(train_y, jnp.int32), jnp.asarray(val_y, jnp.int32)
    optimizer = _adamw(config.learning_rate, config.weight_decay)
    params = _init_head(jax.random.key(seed), train_x.shape[1], num_classes)
    opt_state = optimizer.init(params)
    batch_size = min(config.batch_size, train_x.shape[0])
    batches = _batch_indices(train_x.shape[0], batch_size, config.max_steps, seed)

    best_params, best_score, best_step, history, step = params, -np.inf, 0, [], 0
    while step < config.max_steps and step - best_step < config.patience_steps:
        chunk = batches[step : step + config.eval_every]
        params, opt_state, loss = _train_chunk(
            params, opt_state, train_x, train_y, jnp.asarray(chunk), optimizer
        )
        step += len(chunk)
        score = float(_balanced_accuracy(params, val_x, val_y, num_classes))
        history.append({"step": step, "train_loss": float(loss), "val_balanced_accuracy": score})
        if score > best_score:
            best_params, best_score, best_step = params, score, step
    record = {
        "steps": step,
        "best_step": best_step,
        "val_balanced_accuracy": best_score,
        "history": history,
    }
    return jax.device_get(best_params), record


def _check_split(name: str, x: Any, y: Any, num_classes: int) -> None:
    """A split's features [N, D] and labels [N] in [0, num_classes) are given and agree in N."""
    if x is None or y is None:
        raise ValueError(
            f"linear_probe needs the {name} split: pass {name}_x and {name}_y (eva stops early on "
            "the data set's own validation split; reusing the train or test split would bias the "
            "result)"
        )
    if np.ndim(x) != 2 or np.ndim(y) != 1 or np.shape(x)[0] != np.shape(y)[0]:
        raise ValueError(
            f"{name}_x must be [N, D] and {name}_y [N]; got {np.shape(x)} and {np.shape(y)}"
        )
    if np.size(y) == 0 or np.min(y) < 0 or np.max(y) >= num_classes:
        raise ValueError(f"{name}_y must be non-empty class indices in [0, {num_classes})")


def linear_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    test_x: Any,
    test_y: Any,
    num_classes: int,
    config: LinearProbeConfig | None = None,
) -> dict[str, Any]:
    """eva's linear probe of frozen features [N, D] with labels [N] in [0, num_classes).

    Returns {'runs': one dict per seed (seed, steps, best_step, val_balanced_accuracy, history,
    params, and the test balanced_accuracy, accuracy, auc for two classes), 'mean': {metric: ...},
    'std': {metric: ...}} with the sample standard deviation over seeds (0 for one seed).
    """
    config = config or LinearProbeConfig()
    splits = {"train": (train_x, train_y), "val": (val_x, val_y), "test": (test_x, test_y)}
    for name, (x, y) in splits.items():
        _check_split(name, x, y, num_classes)
    # Moved to the device once, not once per seed.
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)) for x, y in splits.values()
    )
    runs = []
    for i, seed in enumerate(config.seeds, 1):
        params, record = fit_linear_head(train_x, train_y, val_x, val_y, num_classes, config, seed)
        test = evaluate_linear_head(params, test_x, test_y, num_classes)
        runs.append({"seed": seed, **record, "params": params, **test})
        log.info(
            "linear probe seed %d/%d: %d steps (best %d), val %.4f, test balanced accuracy %.4f",
            i, len(config.seeds), record["steps"], record["best_step"],
            record["val_balanced_accuracy"], test["balanced_accuracy"],
        )  # fmt: skip
    names = ["val_balanced_accuracy", *test]
    values = {name: [run[name] for run in runs] for name in names}
    return {
        "runs": runs,
        "mean": {name: statistics.mean(v) for name, v in values.items()},
        "std": {name: statistics.stdev(v) if len(v) > 1 else 0.0 for name, v in values.items()},
    }
