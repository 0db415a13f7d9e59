"""Slide-level gated-attention MIL (GMA) with Monte-Carlo cross-validation (Campanella et al.).

The aggregator is CLAM's `Attn_Net_Gated` behind two fully connected layers, as in the lab's own
GMA (fuchs-lab-public/OPAL, `SSL_benchmarks/code/gma_training`, built with `dropout=True`):

    h = Dropout(ReLU(Linear(d, 512) x)); h = Dropout(ReLU(Linear(512, 512) h))       # [N, 512]
    a = Dropout(tanh(Linear(512, 384) h)); b = Dropout(sigmoid(Linear(512, 384) h))  # [N, 384]
    w = softmax over the slide's tiles of Linear(384, 1)(a * b)                      # [N]
    logits = Linear(512, n_classes)(sum_i w_i h_i)

Dropout (p 0.25) sits after both ReLUs and on both gate branches, so the pooled `h` is the
dropped-out one, exactly as in that code. Weights are Xavier-normal (not truncated), biases zero.

Training follows the same script: AdamW (PyTorch defaults: betas 0.9/0.999, eps 1e-8, no
clipping), one slide per step, slides shuffled every epoch, 40 epochs, DINO's per-iteration
schedules (linear lr warm-up over 10 epochs then cosine to 1e-6; weight decay cosine 0.04 -> 0.4,
none on biases and 1-D parameters), cross-entropy. The base lr defaults to 1e-4, the value the
published usage line passes (`--lr 0.0001`); the script's argparse default is 5e-4.

Deliberate departure: the lab's script splits each Monte-Carlo draw into train/validation only
and logs validation AUC every epoch; here every split also holds out a test set, the epoch is
chosen on validation AUC (or is the last one) and test AUC is reported, so the reported number is
not selected on itself. Bags are padded (to the next power of
two by default, so only a few shapes compile) and masked: padded tiles get attention exactly 0.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pathfm.adamw import adamw
from pathfm.evaluation.metrics import balanced_accuracy, multiclass_roc_auc, roc_auc
from pathfm.schedules import cosine_schedule

log = logging.getLogger(__name__)

_SELECTIONS = ("best_val", "last")


@dataclasses.dataclass(frozen=True)
class GMAConfig:
    """Model, optimisation and cross-validation settings (defaults: Campanella et al.'s GMA)."""

    n_classes: int = 2
    hidden_dim: int = 512
    attention_dim: int = 384
    dropout_rate: float = 0.25
    epochs: int = 40
    warmup_epochs: int = 10
    lr: float = 1e-4  # peak lr after warm-up (no batch-size scaling: one slide per step)
    min_lr: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    n_splits: int = 20
    val_fraction: float = 0.1  # per class; splits are 70/10/20 train/val/test
    test_fraction: float = 0.2
    selection: str = "best_val"  # epoch with the best val AUC (latest on ties), or "last"
    bucket_lengths: bool = True  # pad to the next power of two (>= min_bucket), else to the max
    min_bucket: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.selection not in _SELECTIONS:
            raise ValueError(
                f"GMAConfig.selection must be one of {_SELECTIONS}: {self.selection!r}"
            )
        if self.selection == "best_val" and self.val_fraction <= 0:
            raise ValueError("GMAConfig.selection='best_val' needs val_fraction > 0 (or 'last')")
        if (
            self.val_fraction < 0
            or self.test_fraction <= 0
            or self.val_fraction + self.test_fraction >= 1
        ):
            raise ValueError("GMAConfig needs val_fraction >= 0, test_fraction > 0, sum < 1")
        if not 0 <= self.warmup_epochs <= self.epochs or self.n_classes < 2:
            raise ValueError("GMAConfig needs 0 <= warmup_epochs <= epochs and n_classes >= 2")
        if self.epochs < 1 or self.n_splits < 1:
            raise ValueError("GMAConfig needs epochs >= 1 and n_splits >= 1")


_dense_init = dict(
    kernel_init=nn.initializers.variance_scaling(1.0, "fan_avg", "normal"),  # xavier_normal_
    bias_init=nn.initializers.zeros,
)


class GatedAttentionMIL(nn.Module):
    """GMA: features [N, d] and mask [N] (True = real tile) -> (logits [C], attention [N])."""

    n_classes: int = 2
    hidden_dim: int = 512
    attention_dim: int = 384
    dropout_rate: float = 0.25

    @nn.compact
    def __call__(self, features: jax.Array, mask: jax.Array | None = None, *, train: bool = False):
        drop = lambda x: nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        h = features.astype(jnp.float32)
        h = drop(nn.relu(nn.Dense(self.hidden_dim, name="fc1", **_dense_init)(h)))
        h = drop(nn.relu(nn.Dense(self.hidden_dim, name="fc2", **_dense_init)(h)))  # [N, H]
        a = drop(jnp.tanh(nn.Dense(self.attention_dim, name="attention_a", **_dense_init)(h)))
        b = drop(nn.sigmoid(nn.Dense(self.attention_dim, name="attention_b", **_dense_init)(h)))
        scores = nn.Dense(1, name="attention_c", **_dense_init)(a * b)[:, 0]  # [N]
        if mask is None:
            mask = jnp.ones(scores.shape, bool)
        weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf))
        weights = jnp.where(mask, weights, 0.0)  # exactly 0 on padding
        logits = nn.Dense(self.n_classes, name="classifier", **_dense_init)(weights @ h)
        return logits, weights


def build_model(config: GMAConfig) -> GatedAttentionMIL:
    return GatedAttentionMIL(
        config.n_classes, config.hidden_dim, config.attention_dim, config.dropout_rate
    )


# ----------------------------------------------------------------------------- padding


def bucket_length(n_tiles: int, config: GMAConfig) -> int:
    """Padded length of a bag: the next power of two, at least `config.min_bucket`."""
    return max(config.min_bucket, 1 << (int(n_tiles) - 1).bit_length())


def pad_bag(features: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """features [n, d] -> (padded [length, d] float32, zero rows at the end; mask [length])."""
    n = features.shape[0]
    padded = np.zeros((length, features.shape[1]), np.float32)
    padded[:n] = features
    return padded, np.arange(length) < n


def pad_bags(bags: Sequence[np.ndarray], config: GMAConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validates the bags and pads each to its bucket length (or all to the longest bag)."""
    dims = {np.shape(bag)[-1] for bag in bags}
    for i, bag in enumerate(bags):
        if np.ndim(bag) != 2 or len(bag) == 0:
            raise ValueError(
                f"slide {i}: a bag must be [n_tiles >= 1, d], got shape {np.shape(bag)}"
            )
    if len(dims) != 1:
        raise ValueError(f"all bags must share the feature dimension, got {sorted(dims)}")
    longest = max(len(bag) for bag in bags)
    return [
        pad_bag(
            np.asarray(bag), bucket_length(len(bag), config) if config.bucket_lengths else longest
        )
        for bag in bags
    ]


# ----------------------------------------------------------------------------- training


def build_optimizer(
    config: GMAConfig, params: Any, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, dict]:
    """AdamW with per-iteration warm-up + cosine lr and cosine weight decay on kernels only (not
    biases, not 1-D parameters). Returns (optimizer, {'lr', 'wd'}: schedules of the step)."""
    total = config.epochs * steps_per_epoch
    lr = cosine_schedule(config.lr, config.min_lr, total, config.warmup_epochs * steps_per_epoch)
    wd = cosine_schedule(config.weight_decay, config.weight_decay_end, total)
    return adamw(params, lr, wd), {"lr": lr, "wd": wd}


def make_train_step(model: GatedAttentionMIL, optimizer: optax.GradientTransformation):
    """Jitted step(state, features [L, d], mask [L], label [], rng) -> (state, loss) on one slide.

    `state` is {'params', 'opt_state', 'step'}; dropout uses fold_in(rng, step).
    """

    @jax.jit
    def train_step(state, features, mask, label, rng):
        def loss_fn(params):
            logits, _ = model.apply(
                {"params": params},
                features,
                mask,
                train=True,
                rngs={"dropout": jax.random.fold_in(rng, state["step"])},
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, label)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, loss

    return train_step


@functools.partial(jax.jit, static_argnums=0)
def _predict_one(model: GatedAttentionMIL, params, features, mask):
    logits, weights = model.apply({"params": params}, features, mask)
    return jax.nn.softmax(logits), weights


def predict(
    model: GatedAttentionMIL, params: Any, padded: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Class probabilities [S, C] and each slide's attention over its real tiles [n_i]."""
    probs, attention = [], []
    for features, mask in padded:
        p, w = _predict_one(model, params, features, mask)
        probs.append(np.asarray(p))
        attention.append(np.asarray(w)[mask])
    return np.stack(probs), attention


@functools.cache
def _compiled(config: GMAConfig, steps_per_epoch: int, feature_dim: int):
    """(model, jitted init_state(rng), jitted train step) per (config, train-set size, d), so
    that the splits of a cross-validation share one compilation."""
    model = build_model(config)
    example = (jnp.zeros((1, feature_dim)), jnp.ones((1,), bool))
    shapes = jax.eval_shape(model.init, jax.random.key(0), *example)
    optimizer, _ = build_optimizer(config, shapes["params"], steps_per_epoch)

    @jax.jit
    def init_state(rng):
        params = model.init(rng, *example)["params"]
        return {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}

    return model, init_state, make_train_step(model, optimizer)


def train_gma(
    train: Sequence[tuple[np.ndarray, np.ndarray]],
    train_labels: np.ndarray,
    config: GMAConfig,
    rng: jax.Array,
    val: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    val_labels: np.ndarray | None = None,
) -> tuple[Any, dict]:
    """Trains GMA on padded bags; returns (params of the selected epoch, history).

    history: 'loss' [epochs] (mean train loss), 'val_auc' [epochs] (if val), 'epoch' (1-based).
    """
    model, init_state, train_step = _compiled(config, len(train), train[0][0].shape[1])
    init_rng, dropout_rng, shuffle_rng = jax.random.split(rng, 3)
    state = init_state(init_rng)
    order_rng = np.random.default_rng(np.asarray(jax.random.key_data(shuffle_rng)))
    labels = np.asarray(train_labels, np.int32)
    history = {"loss": [], "val_auc": []}
    best = (-np.inf, None, config.epochs)
    for epoch in range(1, config.epochs + 1):
        losses = []
        for i in order_rng.permutation(len(train)):
            state, loss = train_step(state, *train[i], labels[i], dropout_rng)
            losses.append(loss)
        history["loss"].append(float(np.mean(jax.device_get(losses))))
        if len(val):
            probs, _ = predict(model, state["params"], val)
            auc = _auc(val_labels, probs)
            history["val_auc"].append(auc)
            if config.selection == "best_val" and auc >= best[0]:
                best = (auc, state["params"], epoch)
    if config.selection == "last" or best[1] is None:
        best = (None, state["params"], config.epochs)
    history["epoch"] = best[2]
    return best[1], history


# ----------------------------------------------------------------------------- metrics


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Slide AUC from probabilities [S, C]: P(class 1) for two classes, else macro one-vs-rest."""
    if probs.shape[1] == 2:
        return float(roc_auc(labels, probs[:, 1]))
    return float(multiclass_roc_auc(labels, probs))


# ----------------------------------------------------------------------------- cross-validation


def stratified_splits(
    labels: np.ndarray, n_splits: int, val_fraction: float, test_fraction: float, seed: int
) -> list[dict[str, np.ndarray]]:
    """Monte-Carlo splits: per class, a random round(f * n_c) slides (at least 1) go to test and
    to val, the rest to train. Returns [{'train', 'val', 'test'}: sorted slide indices]."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(n_splits):
        parts = {"train": [], "val": [], "test": []}
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            n_test = max(1, int(test_fraction * len(idx) + 0.5))
            n_val = max(1, int(val_fraction * len(idx) + 0.5)) if val_fraction > 0 else 0
            if len(idx) - n_test - n_val < 1:
                raise ValueError(f"class {c} has {len(idx)} slides: too few for train/val/test")
            parts["test"].append(idx[:n_test])
            parts["val"].append(idx[n_test : n_test + n_val])
            parts["train"].append(idx[n_test + n_val :])
        splits.append({k: np.sort(np.concatenate(v)) for k, v in parts.items()})
    return splits


def cross_validate(bags: Sequence[np.ndarray], labels: np.ndarray, config: GMAConfig) -> dict:
    """Monte-Carlo cross-validation of GMA on slides given as tile features bags [n_i, d].

    Returns {'splits': [per split: 'test_auc', 'test_balanced_accuracy', 'epoch', 'val_auc'
    (history), 'test_probs' [n_test, C], 'test_attention' (a [n_i] array per test slide),
    'train'/'val'/'test' indices], 'test_auc_mean', 'test_auc_std', 'test_balanced_accuracy_mean',
    'test_balanced_accuracy_std'} (std over splits with ddof 1). Balanced accuracy is at argmax.
    """
    labels = np.asarray(labels)
    valid = np.issubdtype(labels.dtype, np.integer) and np.all(labels >= 0)
    if labels.shape != (len(bags),) or not valid or np.any(labels >= config.n_classes):
        raise ValueError(f"labels must be {len(bags)} integers in [0, {config.n_classes})")
    padded = pad_bags(bags, config)
    model = build_model(config)
    key = jax.random.key(config.seed)
    results = []
    splits = stratified_splits(
        labels, config.n_splits, config.val_fraction, config.test_fraction, config.seed
    )
    for i, split in enumerate(splits):
        take = lambda name, s=split: [padded[j] for j in s[name]]
        params, history = train_gma(
            take("train"),
            labels[split["train"]],
            config,
            jax.random.fold_in(key, i),
            take("val"),
            labels[split["val"]],
        )
        probs, attention = predict(model, params, take("test"))
        test_labels = labels[split["test"]]
        results.append(
            {
                "test_auc": _auc(test_labels, probs),
                "test_balanced_accuracy": float(
                    balanced_accuracy(test_labels, probs.argmax(1), config.n_classes)
                ),
                "epoch": history["epoch"],
                "val_auc": history["val_auc"],
                "test_probs": probs,
                "test_attention": attention,
                **split,
            }
        )
        log.info(
            "MIL split %d/%d: best epoch %d, test AUC %.4f, balanced accuracy %.4f",
            i + 1, len(splits), history["epoch"], results[-1]["test_auc"],
            results[-1]["test_balanced_accuracy"],
        )  # fmt: skip
    return summarize(results)


def summarize(splits: list[dict]) -> dict:
    """{'splits', '<metric>_mean', '<metric>_std'} over the splits for test AUC and balanced
    accuracy; std is the sample std (ddof 1), 0 for a single split."""
    summary = {"splits": splits}
    for metric in ("test_auc", "test_balanced_accuracy"):
        values = np.array([split[metric] for split in splits])
        summary[f"{metric}_mean"] = float(values.mean())
        summary[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary
