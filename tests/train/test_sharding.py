"""Data and FSDP sharding on 8 emulated devices: the same step as on one device, and per-device
state memory falling as 1 / fsdp in XLA's compiled memory analysis."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testutil import REPO, random_dino_batch, tiny_dino_config

from pathfm import parallel
from pathfm.parallel.partitioning import bytes_per_device
from pathfm.pytree import path_string
from pathfm.train.build import build_setup

MESHES = {"1 device": (1, 1), "8-way data": (8, 1), "2 data x 4 fsdp": (2, 4)}


def _mesh(data, fsdp):
    return parallel.make_mesh(data, fsdp, jax.devices()[: data * fsdp])


def _mae_config():
    spec = importlib.util.spec_from_file_location("mae", REPO / "configs/campanella_mae_vitl16.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("quick")
    config.optim.lr = 1e-2  # a visible update in one step
    return config


def _mae_batch(config, seed):
    rng = np.random.default_rng(seed)
    size = config.crops.global_size
    return {"images": rng.integers(0, 256, (config.batch_size, size, size, 3), np.uint8)}


CASES = {
    "dino": (lambda: tiny_dino_config(**{"mesh.fsdp_min_size": 0}), random_dino_batch),
    "mae": (_mae_config, _mae_batch),
}


def _train(setup, make_batch, steps=2):
    state = setup.fresh_state()
    for i in range(steps):
        batch = parallel.shard_batch(make_batch(setup.config, i), setup.mesh)
        state, metrics = setup.step(state, batch, setup.step_rng)
    return jax.device_get(state), jax.device_get(metrics)


@pytest.fixture(scope="module", params=sorted(CASES))
def results(request):
    make_config, make_batch = CASES[request.param]
    config = make_config()
    config.mesh.fsdp_min_size = 0
    out = {}
    for name, (data, fsdp) in MESHES.items():
        setup = build_setup(config, _mesh(data, fsdp))
        out[name] = (setup, *_train(setup, make_batch))
    return out


def _without_key_biases(tree):
    """The attention key bias has an exactly zero gradient (softmax ignores a shift shared by
    all keys), so Adam turns its rounding noise, which depends on the reduction order, into
    updates of size lr: drop the key third of every qkv bias before comparing."""

    def drop(path, x):
        if path_string(path).endswith("qkv/bias"):
            q, _, v = np.split(np.asarray(x), 3, axis=-1)
            return np.concatenate([q, v], axis=-1)
        return x

    return jax.tree_util.tree_map_with_path(drop, tree)


def test_sharded_steps_equal_the_single_device_step(results):
    _, one, m_one = results["1 device"]
    for name in ("8-way data", "2 data x 4 fsdp"):
        _, state, metrics = results[name]
        np.testing.assert_allclose(metrics["loss"], m_one["loss"], rtol=1e-5, err_msg=name)
        jax.tree.map(
            lambda a, b, n=name: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=n),
            _without_key_biases((one["params"], one["extra"], one["opt_state"])),
            _without_key_biases((state["params"], state["extra"], state["opt_state"])),
        )
        assert int(state["step"]) == 2 and int(state["skipped"]) == 0


def test_fsdp_really_splits_params_teacher_and_adam_moments(results):
    setup = results["2 data x 4 fsdp"][0]
    specs = [s.spec for s in jax.tree.leaves(setup.shardings)]
    split = sum("fsdp" in tuple(s) for s in specs)
    assert split > 0.8 * len(specs) - 4  # all but scalar counters and indivisible leaves
    fresh = setup.fresh_state()
    leaf = jax.tree.leaves(fresh["params"])[0]
    assert leaf.sharding == jax.tree.leaves(setup.shardings["params"])[0]


def test_compiled_state_memory_falls_as_one_over_fsdp(results):
    """Per-device bytes of the state (parameters, teacher, Adam moments) from XLA's memory
    analysis of the compiled initialiser, for fsdp = 1, 2, 4, 8 on 8 devices; and the compiled
    train step takes exactly the state's per-device bytes plus its batch shard."""
    config = results["1 device"][0].config
    state_bytes = {}
    for fsdp in (1, 2, 4, 8):
        setup = build_setup(config, _mesh(8 // fsdp, fsdp))
        compiled = setup._init.lower(setup.init_rng).compile()
        state_bytes[fsdp] = compiled.memory_analysis().output_size_in_bytes
        expected = bytes_per_device(setup.restore_target(), setup.shardings)
        assert state_bytes[fsdp] == pytest.approx(expected, rel=0.03)  # + buffer alignment
    for fsdp in (2, 4, 8):
        assert state_bytes[fsdp] == pytest.approx(state_bytes[1] / fsdp, rel=0.10), state_bytes

    setup = results["2 data x 4 fsdp"][0]
    batch = parallel.shard_batch(CASES[setup.method.name][1](config, 0), setup.mesh)
    step = setup.step.lower(setup.restore_target(), batch, setup.step_rng).compile()
    batch_bytes = sum(x.addressable_shards[0].data.nbytes for x in batch.values())
    rng_bytes = setup.step_rng.nbytes if hasattr(setup.step_rng, "nbytes") else 8
    measured = step.memory_analysis().argument_size_in_bytes - batch_bytes - rng_bytes
    assert measured == pytest.approx(state_bytes[4], rel=0.03)  # + buffer alignment


@pytest.mark.parametrize("method_name", ["dino", "dinov2"])
def test_multicrop_losses_compute_only_their_batch_shard(method_name):
    """Views are never merged into the batch-sharded axis with the batch minor (crop-major
    order), which no sharding describes: XLA would gather every crop onto every device and each
    device would compute the whole global batch. Per-device FLOPs of the loss and its gradient
    on 8 devices are ~1/8 of one device's, with no all-gather."""
    from pathfm.config import dinov2_defaults
    from pathfm.data.pipeline import AddBlockMasks
    from pathfm.ssl.registry import build_method

    config = tiny_dino_config(batch_size=16)
    if method_name == "dinov2":
        config = dinov2_defaults(config)
        config.dino.warmup_teacher_temp_epochs = 1
    method = build_method(config)
    params, extra = jax.eval_shape(method.init, jax.random.key(0))
    batch = {**random_dino_batch(config), "index": np.zeros(16, np.int64)}
    batch = AddBlockMasks((4, 4), 0.5, (0.1, 0.5), 0, groups=8)(batch)  # per-device draws
    batch = {k: batch[k] for k in method.batch_keys}
    grad = jax.jit(jax.grad(lambda p, e, b: method.loss(p, e, b, jax.random.key(1), 0)[0]))

    def compiled(devices):
        mesh = _mesh(devices, 1)
        return grad.lower(params, extra, parallel.shard_batch(batch, mesh)).compile()

    one, eight = compiled(1), compiled(8)
    flops = lambda c: c.cost_analysis()["flops"]
    assert flops(eight) < 0.2 * flops(one)
    assert "all-gather" not in eight.as_text()


def test_dinov2_masked_token_buffers_same_on_one_and_eight_devices():
    """DINOv2's iBOT heads run on each device's buffer of masked tokens (8 groups of 2 samples,
    masks drawn per group as the pipeline does): loss, gradients and the new patch center on 8
    devices equal one device's computing the same 8 groups."""
    from pathfm.config import dinov2_defaults
    from pathfm.data.pipeline import AddBlockMasks
    from pathfm.ssl.dinov2 import DinoV2

    config = dinov2_defaults(tiny_dino_config(batch_size=16))
    config.dino.warmup_teacher_temp_epochs = 1
    # Sinkhorn-Knopp: its sums run over all devices' buffers (centering is per row; both are
    # checked against the dense loss in tests/ssl/test_ibot_buffer.py).
    config.dinov2.centering = "sinkhorn_knopp"
    # KoLeo of the untrained model's near-identical CLS tokens, 2 per group, is all rounding.
    config.dinov2.koleo_weight = 0.0
    method = DinoV2(config, koleo_groups=8)
    params, extra = jax.jit(method.init)(jax.random.key(0))
    extra["patch_center"] = extra["patch_center"] + 0.1 * jnp.sin(jnp.arange(64.0))
    batch = {**random_dino_batch(config), "index": np.arange(16)}
    batch = AddBlockMasks((4, 4), 0.5, (0.1, 0.5), 0, groups=8)(batch)
    batch = {k: batch[k] for k in method.batch_keys}

    @jax.jit
    def step(params, extra, batch):
        loss = lambda p: method.loss(p, extra, batch, jax.random.key(1), 0)
        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return value, aux["metrics"], grads, method.update_extra(extra, params, aux, 0)

    one = jax.device_get(step(params, extra, parallel.shard_batch(batch, _mesh(1, 1))))
    eight = jax.device_get(step(params, extra, parallel.shard_batch(batch, _mesh(8, 1))))
    assert int(one[1]["ibot_overflow"]) == 0 and float(one[1]["ibot_loss"]) > 0
    np.testing.assert_allclose(eight[0], one[0], rtol=1e-5)
    for name in ("ibot_loss", "dino_loss"):
        np.testing.assert_allclose(eight[1][name], one[1][name], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * np.abs(b).max()),
        _without_key_biases(eight[2]),
        _without_key_biases(one[2]),
    )
    np.testing.assert_allclose(
        eight[3]["patch_center"], one[3]["patch_center"], rtol=1e-5, atol=1e-7
    )
