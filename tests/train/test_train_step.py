"""The jitted DINO train step: EMA, centering order, freezing (sharding: test_sharding.py)."""

import jax
import numpy as np
import pytest
from testutil import random_dino_batch, tiny_dino_config

from pathfm import parallel
from pathfm.ssl.dino_loss import update_center
from pathfm.train.build import build_setup


def Setup(config, num_devices):
    """A compiled train step on a `num_devices`-way data mesh (compiled once per fixture)."""
    return build_setup(config, parallel.make_mesh(num_devices, 1, jax.devices()[:num_devices]))


def _run(setup, config, steps, seed=0):
    mesh, state, step_fn = setup.mesh, setup.fresh_state(), setup.step
    for i in range(steps):
        batch = parallel.shard_batch(random_dino_batch(config, seed + i), mesh)
        state, metrics = step_fn(state, batch, jax.random.key(7))
    return jax.device_get(state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def config():
    return tiny_dino_config()


@pytest.fixture(scope="module")
def single(config):
    return Setup(config, 1)


def test_step_uses_old_center_then_updates_teacher_and_center(config, single):
    mesh, method, state, step_fn = single.mesh, single.method, single.fresh_state(), single.step
    before = jax.device_get(state)
    batch = parallel.shard_batch(random_dino_batch(config), mesh)
    rng = jax.random.key(7)
    loss, aux = jax.jit(method.loss)(
        before["params"], before["extra"], batch, jax.random.fold_in(rng, 0), 0
    )
    after, metrics = step_fn(state, batch, rng)
    after = jax.device_get(after)
    # The logged loss is the loss with the center from BEFORE the update.
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    expected_center = update_center(before["extra"]["center"], aux["teacher_out"], 0.9)
    np.testing.assert_allclose(after["extra"]["center"], expected_center, rtol=1e-5, atol=1e-7)
    # EMA on the raw parameters with the step's momentum (cosine schedule from 0.996).
    m = float(metrics["momentum"])
    assert m == pytest.approx(0.996)
    jax.tree.map(
        lambda t_new, t_old, s: np.testing.assert_allclose(
            t_new, m * t_old + (1 - m) * s, rtol=1e-5, atol=1e-7
        ),
        after["extra"]["teacher"],
        before["extra"]["teacher"],
        after["params"],
    )
    assert int(after["step"]) == 1


def test_last_layer_frozen_for_the_first_epoch(config, single):
    # freeze_last_layer = 1 epoch = 3 steps: bit-identical for 3 steps, moving at step 4.
    mesh, state, step_fn = single.mesh, single.fresh_state(), single.step
    initial = np.asarray(jax.device_get(state["params"]["head"]["last_layer"]["weight_v"]))
    for i in range(4):
        batch = parallel.shard_batch(random_dino_batch(config, i), mesh)
        state, _ = step_fn(state, batch, jax.random.key(7))
        w = np.asarray(jax.device_get(state["params"]["head"]["last_layer"]["weight_v"]))
        if i < 3:
            np.testing.assert_array_equal(w, initial)
        else:
            assert not np.array_equal(w, initial)


def test_photometric_augmentation_on_device_trains(config, single):
    device = config.copy_and_resolve_references()
    device.crops.photometric_on_device = True
    device.crops.hed_p = 0.5
    setup = Setup(device, 1)
    assert setup.method.photometric is not None
    _, metrics = _run(setup, device, 2)
    _, host_metrics = _run(single, config, 2)
    assert np.isfinite(metrics["loss"])
    assert metrics["loss"] != host_metrics["loss"]  # the views really were re-coloured


def test_bfloat16_matmuls_keep_float32_state_and_loss(config, single):
    bf16 = config.copy_and_resolve_references()
    bf16.model.dtype = "bfloat16"
    state, metrics = _run(Setup(bf16, 1), bf16, 1)
    _, reference = _run(single, config, 1)
    leaves = jax.tree.leaves((state["params"], state["extra"], state["opt_state"]))
    assert all(x.dtype in (np.float32, np.int32) for x in leaves)
    assert metrics["loss"].dtype == np.float32
    np.testing.assert_allclose(metrics["loss"], reference["loss"], rtol=2e-2)


def test_fused_attention_and_remat_train_the_same(config, single):
    fast = config.copy_and_resolve_references()
    fast.model.update(attention="dot_product", remat="block")
    state, metrics = _run(Setup(fast, 1), fast, 2)
    ref_state, reference = _run(single, config, 2)
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(metrics[key], reference[key], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        state["params"],
        ref_state["params"],
    )
