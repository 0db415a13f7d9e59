import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pathfm.adamw import (
    adamw,
    clip_by_tensor_norm,
    dino_decay_mask,
    layer_id,
    lr_multipliers,
    regex_predicate,
)


def _params():
    return {
        "backbone": {"w": jnp.ones((3, 4)), "bias": jnp.ones(4), "norm": {"scale": jnp.ones(4)}},
        "head": {"last_layer": {"weight_v": jnp.full((4, 5), 0.5)}},
    }


def _grads(seed):
    leaves, tree = jax.tree.flatten(_params())
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten(
        [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


def test_decay_mask_excludes_biases_and_1d_params():
    mask = dino_decay_mask(_params())
    assert mask["backbone"]["w"] and mask["head"]["last_layer"]["weight_v"]
    assert not mask["backbone"]["bias"] and not mask["backbone"]["norm"]["scale"]


def test_per_tensor_clipping():
    g = {"big": jnp.full((4,), 3.0), "small": jnp.full((4,), 0.1)}  # norms 6 and 0.2
    out, _ = clip_by_tensor_norm(3.0).update(g, optax.EmptyState())
    np.testing.assert_allclose(np.linalg.norm(out["big"]), 3.0 * 6 / (6 + 1e-6), rtol=1e-6)
    np.testing.assert_array_equal(out["small"], g["small"])  # below the limit: untouched


def test_matches_torch_style_adamw_without_freezing():
    params = _params()
    lr, wd = (lambda step: 0.1), (lambda step: 0.05)
    opt = adamw(params, lr, wd)
    state = opt.init(params)
    g = _grads(0)
    updates, state = opt.update(g, state, params)
    # First AdamW step: p - lr * (g / (|g| + eps) + wd * p * decay_mask), bias-corrected.
    mask = dino_decay_mask(params)
    expected = jax.tree.map(
        lambda p, g, m: p - 0.1 * (g / (jnp.abs(g) + 1e-8) + (0.05 * p if m else 0.0)),
        params,
        g,
        mask,
    )
    got = optax.apply_updates(params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)


def test_freeze_leaves_last_layer_bit_identical_then_thaws_like_a_fresh_param():
    params = _params()
    frozen = regex_predicate(r"^head/last_layer/")
    opt = adamw(params, lambda s: 0.1, lambda s: 0.05, frozen=frozen, frozen_steps=3)
    state = opt.init(params)
    initial = np.asarray(params["head"]["last_layer"]["weight_v"]).copy()
    for step in range(3):
        updates, state = opt.update(_grads(step), state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_array_equal(params["head"]["last_layer"]["weight_v"], initial)
        assert not np.allclose(params["backbone"]["w"], 1.0)
    # First step after the freeze: bias correction starts at 1 (own Adam count), like PyTorch
    # where a param with grad None never took a step: update = lr * (sign(g) + wd * p).
    g = _grads(3)
    updates, state = opt.update(g, state, params)
    gv = g["head"]["last_layer"]["weight_v"]
    expected = -0.1 * (gv / (jnp.abs(gv) + 1e-8) + 0.05 * initial)
    np.testing.assert_allclose(updates["head"]["last_layer"]["weight_v"], expected, rtol=1e-5)


def _vit_like():
    leaf = jnp.ones((2, 2))
    return {
        "backbone": {
            "patch_embed": {"proj": {"kernel": leaf, "bias": jnp.ones(2)}},
            "cls_token": jnp.ones((1, 1, 2)),
            "pos_embed": jnp.ones((1, 5, 2)),
            "blocks_0": {"attn": {"qkv": {"kernel": leaf}}, "ls1": {"gamma": jnp.ones(2)}},
            "blocks_11": {"mlp": {"fc1": {"kernel": leaf}}},
            "norm": {"scale": jnp.ones(2)},
        },
        "head": {"mlp_0": {"kernel": leaf}},
    }


def test_layer_ids_follow_dinov2():
    assert layer_id("backbone/patch_embed/proj/kernel", 12) == 0
    assert layer_id("backbone/cls_token", 12) == 0
    assert layer_id("backbone/pos_embed", 12) == 0
    assert layer_id("backbone/blocks_0/attn/qkv/kernel", 12) == 1
    assert layer_id("backbone/blocks_11/mlp/fc1/kernel", 12) == 12
    assert layer_id("backbone/norm/scale", 12) == 13
    assert layer_id("head/mlp_0/kernel", 12) == 13


def test_layerwise_decay_and_patch_embed_multipliers():
    mults = lr_multipliers(_vit_like(), depth=12, layer_decay=0.9, patch_embed_mult=0.2)
    b = mults["backbone"]
    assert b["patch_embed"]["proj"]["kernel"] == pytest.approx(0.9**13 * 0.2)
    assert b["cls_token"] == pytest.approx(0.9**13)
    assert b["blocks_0"]["attn"]["qkv"]["kernel"] == pytest.approx(0.9**12)
    assert b["blocks_11"]["mlp"]["fc1"]["kernel"] == pytest.approx(0.9)
    assert b["norm"]["scale"] == 1.0 and mults["head"]["mlp_0"]["kernel"] == 1.0
    neutral = lr_multipliers(_vit_like(), depth=12)
    assert set(jax.tree.leaves(neutral)) == {1.0}


def test_multipliers_scale_the_whole_adamw_step_including_decay():
    params = _vit_like()
    mults = lr_multipliers(params, depth=12, layer_decay=0.5, patch_embed_mult=0.2)
    opt = adamw(params, lambda s: 0.1, lambda s: 0.05, lr_mults=mults)
    g = jax.tree.map(lambda x: jnp.full_like(x, 2.0), params)
    updates, _ = opt.update(g, opt.init(params), params)
    mask = dino_decay_mask(params)
    expected = jax.tree.map(
        lambda p, m, d: -0.1 * m * (1.0 + (0.05 * p if d else 0.0)), params, mults, mask
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), updates, expected)


def test_dinov2_weight_decay_exclusions_are_biases_norms_and_layerscale():
    mask = dino_decay_mask(_vit_like())["backbone"]
    assert not mask["blocks_0"]["ls1"]["gamma"] and not mask["norm"]["scale"]
    assert not mask["patch_embed"]["proj"]["bias"]
    assert mask["cls_token"] and mask["pos_embed"] and mask["patch_embed"]["proj"]["kernel"]
