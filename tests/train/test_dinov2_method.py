"""DINOv2 as a method: host block masks, loss composition, centers, KoLeo per device, freezing."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testutil import tiny_dino_config

from pathfm import parallel
from pathfm.config import dinov2_defaults
from pathfm.data import pipeline
from pathfm.ssl.dinov2 import per_device_koleo
from pathfm.ssl.koleo import koleo_loss
from pathfm.ssl.registry import build_method


@pytest.fixture(scope="module")
def setup(synthetic_slide_dir):
    config = dinov2_defaults(tiny_dino_config(**{"data.slides": str(synthetic_slide_dir)}))
    config.dino.warmup_teacher_temp_epochs = 1
    index = pipeline.build_slide_index(config, str(synthetic_slide_dir))
    batch = next(pipeline.build_train_iterator(config, pipeline.build_sampler(config, index)))
    return config, batch


def test_pipeline_adds_stratified_block_masks_for_half_the_global_crops(setup):
    config, batch = setup
    b, grid = config.batch_size, config.crops.global_size // config.model.patch_size
    masks = batch["masks"]
    assert masks.shape == (b, 2, grid * grid) and masks.dtype == bool
    per_image = masks.reshape(2 * b, -1).sum(-1)
    assert int((per_image > 0).sum()) <= int(2 * b * 0.5)  # tiny grids can round a mask to 0
    assert per_image.max() <= 0.5 * grid * grid


def test_loss_is_the_weighted_sum_and_centers_follow_the_teacher(setup):
    config, batch = setup
    method = build_method(config)
    params, extra = jax.jit(method.init)(jax.random.key(0))
    mesh = parallel.single_device_mesh()
    device_batch = parallel.shard_batch({k: batch[k] for k in method.batch_keys}, mesh)
    loss, aux = jax.jit(method.loss)(params, extra, device_batch, jax.random.key(1), 0)
    m = aux["metrics"]
    expected = m["dino_loss"] + 0.1 * m["koleo_loss"] + 1.0 * m["ibot_loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert all(np.isfinite(float(v)) for v in m.values())
    new = method.update_extra(extra, params, aux, 0)
    masks = np.asarray(aux["masks"], np.float32)[..., None]
    patch_mean = (np.asarray(aux["teacher_patch"]) * masks).sum((0, 1)) / max(masks.sum(), 1)
    np.testing.assert_allclose(new["patch_center"][0], 0.1 * patch_mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        new["center"][0], 0.1 * np.asarray(aux["teacher_cls"]).mean(0), rtol=1e-4, atol=1e-7
    )


def test_koleo_runs_within_each_device_batch():
    x = jax.random.normal(jax.random.key(0), (8, 6))
    np.testing.assert_allclose(per_device_koleo(x, 1), koleo_loss(x), rtol=1e-6)
    halves = (koleo_loss(x[:4]) + koleo_loss(x[4:])) / 2
    np.testing.assert_allclose(per_device_koleo(x, 2), halves, rtol=1e-6)


def test_both_heads_last_layers_are_frozen_first(setup):
    config, _ = setup
    config = config.copy_and_resolve_references()
    config.dinov2.ibot_separate_head = True
    method = build_method(config)
    pattern, steps = method.frozen_rule()
    params = jax.eval_shape(method.init, jax.random.key(0))[0]
    assert set(params) == {"backbone", "dino_head", "ibot_head"}
    assert steps == config.steps_per_epoch
    assert re.search(pattern, "ibot_head/last_layer/weight_v")
    assert re.search(pattern, "dino_head/last_layer/weight_g")
    assert not re.search(pattern, "backbone/blocks_0/attn/qkv/kernel")
    assert jnp.shape(params["backbone"]["mask_token"]) == (1, config.model.embed_dim)
