import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pathfm.evaluation import mil

FEATURE_DIM = 32


@pytest.fixture(scope="module")
def gma():
    """The paper-sized GMA (512/384 wide) on 32-d features, its params and a jitted apply."""
    model = mil.build_model(mil.GMAConfig())
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, FEATURE_DIM)), jnp.ones(1, bool))[
        "params"
    ]
    return model, params, jax.jit(model.apply, static_argnames="train")


def test_architecture_and_init(gma):
    _, params, _ = gma
    shapes = {name: layer["kernel"].shape for name, layer in params.items()}
    assert shapes == {
        "fc1": (FEATURE_DIM, 512),
        "fc2": (512, 512),
        "attention_a": (512, 384),
        "attention_b": (512, 384),
        "attention_c": (384, 1),
        "classifier": (512, 2),
    }
    for layer in params.values():  # CLAM's initialize_weights: xavier_normal_, zero bias
        fan_in, fan_out = layer["kernel"].shape
        assert float(jnp.std(layer["kernel"])) == pytest.approx(
            np.sqrt(2 / (fan_in + fan_out)), rel=0.15 if fan_out == 1 else 0.03
        )
        assert not np.any(np.asarray(layer["bias"]))


@pytest.mark.parametrize("train", [False, True])
def test_attention_sums_to_one_and_is_zero_on_padding(gma, train):
    _, params, apply = gma
    bag = np.random.default_rng(0).normal(size=(23, FEATURE_DIM)).astype(np.float32)
    features, mask = mil.pad_bag(bag, 32)
    features[23:] = 1e3  # whatever the padding holds, it must not count
    _, weights = apply(
        {"params": params}, features, mask, train=train, rngs={"dropout": jax.random.key(1)}
    )
    weights = np.asarray(weights)
    assert weights.shape == (32,)
    assert weights[:23].sum() == pytest.approx(1.0, abs=1e-6)
    assert np.all(weights[:23] > 0)
    assert np.all(weights[23:] == 0.0)


def test_invariant_to_tile_order_and_padding(gma):
    _, params, apply = gma
    rng = np.random.default_rng(1)
    bag = rng.normal(size=(23, FEATURE_DIM)).astype(np.float32)
    logits, weights = apply({"params": params}, bag, np.ones(23, bool))
    assert abs(float(logits[1] - logits[0])) > 1e-3  # a non-degenerate output to compare

    order = rng.permutation(23)
    perm_logits, perm_weights = apply({"params": params}, bag[order], np.ones(23, bool))
    np.testing.assert_allclose(perm_logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(perm_weights, np.asarray(weights)[order], rtol=1e-5, atol=1e-7)

    for length in (32, 64):
        features, mask = mil.pad_bag(bag, length)
        features[23:] = rng.normal(size=(length - 23, FEATURE_DIM)) * 10
        pad_logits, pad_weights = apply({"params": params}, features, mask)
        np.testing.assert_allclose(pad_logits, logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pad_weights[:23], weights, rtol=1e-5, atol=1e-7)


def test_padding_buckets():
    config = mil.GMAConfig(min_bucket=16)
    assert [mil.bucket_length(n, config) for n in (1, 16, 17, 60, 64, 65)] == [
        16, 16, 32, 64, 64, 128
    ]  # fmt: skip
    bags = [np.ones((n, 3)) for n in (5, 20, 40)]
    padded = mil.pad_bags(bags, config)
    assert [p[0].shape for p in padded] == [(16, 3), (32, 3), (64, 3)]
    assert [int(p[1].sum()) for p in padded] == [5, 20, 40]
    assert all(p[0][~p[1]].sum() == 0 and p[0][p[1]].sum() == p[1].sum() * 3 for p in padded)
    flat = mil.pad_bags(bags, mil.GMAConfig(bucket_lengths=False))
    assert {p[0].shape for p in flat} == {(40, 3)}
    with pytest.raises(ValueError, match="slide 1"):
        mil.pad_bags([np.ones((3, 4)), np.ones((0, 4))], config)
    with pytest.raises(ValueError, match="feature dimension"):
        mil.pad_bags([np.ones((3, 4)), np.ones((3, 5))], config)


def test_optimizer_schedules_and_no_decay_on_biases():
    config = mil.GMAConfig(epochs=4, warmup_epochs=1, lr=2e-4, min_lr=1e-6)
    params = {"fc1": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    optimizer, schedules = mil.build_optimizer(config, params, steps_per_epoch=10)
    lr = np.asarray(schedules["lr"](jnp.arange(40)))
    wd = np.asarray(schedules["wd"](jnp.arange(40)))
    cosine = lambda start, end, i, n: end + 0.5 * (start - end) * (1 + np.cos(np.pi * i / n))
    np.testing.assert_allclose(lr[:10], np.linspace(0, 2e-4, 10), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(lr[10:], cosine(2e-4, 1e-6, np.arange(30), 30), rtol=1e-5)
    np.testing.assert_allclose(wd, cosine(0.04, 0.4, np.arange(40), 40), rtol=1e-5)

    # Zero gradients: Adam moves nothing, so only the decoupled weight decay acts, on kernels.
    state = optimizer.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(10):  # to the end of warm-up, where lr = 2e-4
        updates, state = optimizer.update(zeros, state, params)
    np.testing.assert_array_equal(updates["fc1"]["bias"], 0.0)
    np.testing.assert_allclose(updates["fc1"]["kernel"], -2e-4 * wd[9], rtol=1e-5)


def test_stratified_splits_are_disjoint_cover_and_stratified():
    labels = np.array([0] * 30 + [1] * 20)
    splits = mil.stratified_splits(labels, 5, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert len(splits) == 5
    for split in splits:
        parts = [split["train"], split["val"], split["test"]]
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(50))
        assert [np.bincount(labels[p], minlength=2).tolist() for p in parts] == [
            [21, 14], [3, 2], [6, 4]
        ]  # fmt: skip
    assert len({tuple(s["test"]) for s in splits}) == 5  # Monte-Carlo: different draws
    again = mil.stratified_splits(labels, 5, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert all(np.array_equal(a["test"], b["test"]) for a, b in zip(splits, again, strict=True))
    with pytest.raises(ValueError, match="class 1 has 2 slides"):
        mil.stratified_splits(np.array([0] * 10 + [1] * 2), 1, 0.1, 0.2, 0)


def test_summary_mean_and_sample_std():
    splits = [
        {"test_auc": a, "test_balanced_accuracy": b} for a, b in [(0.9, 0.5), (0.8, 0.7), (1, 0.9)]
    ]
    summary = mil.summarize(splits)
    assert summary["splits"] is splits
    assert summary["test_auc_mean"] == pytest.approx(0.9)
    assert summary["test_auc_std"] == pytest.approx(0.1)
    assert summary["test_balanced_accuracy_mean"] == pytest.approx(0.7)
    assert summary["test_balanced_accuracy_std"] == pytest.approx(0.2)
    assert mil.summarize(splits[:1])["test_auc_std"] == 0.0


def test_config_and_label_errors():
    with pytest.raises(ValueError, match="val_fraction > 0"):
        mil.GMAConfig(val_fraction=0.0)
    with pytest.raises(ValueError, match="selection"):
        mil.GMAConfig(selection="best")
    with pytest.raises(ValueError, match="sum < 1"):
        mil.GMAConfig(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="labels"):
        mil.cross_validate([np.ones((3, 4))] * 2, np.array([0, 2]), mil.GMAConfig())
    with pytest.raises(ValueError, match="labels"):
        mil.cross_validate([np.ones((3, 4))] * 2, np.array([0.0, 1.0]), mil.GMAConfig())


def planted_marker_slides(n_slides: int, seed: int, shift: float = 12.0):
    """Bags of N(0, 1) tiles [20-60, 32]; odd slides are positive and hold one marker tile,
    shift * u + N(0, 1) along a fixed unit direction u. Returns (bags, labels, marker index)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=FEATURE_DIM)
    direction /= np.linalg.norm(direction)
    bags, labels, markers = [], np.arange(n_slides) % 2, np.full(n_slides, -1)
    for label in labels:
        bag = rng.normal(size=(rng.integers(20, 61), FEATURE_DIM)).astype(np.float32)
        if label:
            markers[len(bags)] = rng.integers(len(bag))
            bag[markers[len(bags)]] = shift * direction + rng.normal(size=FEATURE_DIM)
        bags.append(bag)
    return bags, labels, markers


@pytest.fixture(scope="module")
def planted_cv():
    # Narrower than the paper (128/96) and 8 short epochs keep this to a few CPU seconds; the
    # paper width learns the same signal, only slower on CPU.
    config = mil.GMAConfig(
        hidden_dim=128, attention_dim=96, epochs=8, warmup_epochs=1, lr=1e-3, n_splits=3,
        min_bucket=64,  # one padded shape: a single compilation
    )  # fmt: skip
    bags, labels, markers = planted_marker_slides(48, seed=0)
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logger = logging.getLogger("pathfm.evaluation.mil")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = mil.cross_validate(bags, labels, config)
    finally:
        logger.removeHandler(handler)
    return result, bags, labels, markers, logged


def test_cross_validation_learns_the_planted_marker(planted_cv):
    result, bags, _, markers, logged = planted_cv
    assert len(result["splits"]) == 3
    assert [m.split(":")[0] for m in logged] == [f"MIL split {i}/3" for i in (1, 2, 3)]  # phases
    for split in result["splits"]:
        assert split["test_auc"] > 0.9
        assert split["test_balanced_accuracy"] >= 0.8
        pairs = zip(split["test_attention"], markers[split["test"]], strict=True)
        positives = [(attention, marker) for attention, marker in pairs if marker >= 0]
        assert len(positives) == 5  # 20% of the 24 positive slides
        for attention, marker in positives:
            assert int(np.argmax(attention)) == marker  # attention finds the marker tile
        for attention, i in zip(split["test_attention"], split["test"], strict=True):
            assert attention.shape == (len(bags[i]),)
            assert attention.sum() == pytest.approx(1.0, abs=1e-5)


def test_cross_validation_summary_is_consistent(planted_cv):
    result, bags, labels, _, _ = planted_cv
    splits = result["splits"]
    aucs = [s["test_auc"] for s in splits]
    accs = [s["test_balanced_accuracy"] for s in splits]
    assert result["test_auc_mean"] == pytest.approx(np.mean(aucs))
    assert result["test_auc_std"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-12)
    assert result["test_balanced_accuracy_mean"] == pytest.approx(np.mean(accs))
    assert result["test_balanced_accuracy_std"] == pytest.approx(np.std(accs, ddof=1), abs=1e-12)
    for split in splits:
        parts = [split["train"], split["val"], split["test"]]
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(bags)))
        assert [len(p) for p in parts] == [34, 4, 10]
        probs, y = split["test_probs"], labels[split["test"]]
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
        predicted = probs.argmax(1)  # balanced accuracy recomputed from the returned probs
        recall = [np.mean(predicted[y == c] == c) for c in (0, 1)]
        assert split["test_balanced_accuracy"] == pytest.approx(np.mean(recall), abs=1e-6)
        assert len(split["val_auc"]) == 8 and 1 <= split["epoch"] <= 8
        best = max(split["val_auc"])  # selection: the latest epoch with the best val AUC
        assert split["epoch"] == 1 + max(i for i, a in enumerate(split["val_auc"]) if a == best)
