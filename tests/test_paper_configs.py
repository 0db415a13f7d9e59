"""Every paper config: published backbone size at full scale; a real step in its quick variant."""

import importlib.util

import jax
import numpy as np
import pytest
from testutil import REPO

from pathfm import parallel
from pathfm.config import validate
from pathfm.data import pipeline
from pathfm.ssl.registry import build_method
from pathfm.train.build import build_setup

# Backbone parameters (timm, without position-embedding buffers for MAE), +-1%.
PAPER_CONFIGS = {
    "dino_vits16": 21.7e6,
    "campanella_dino_vits16": 21.7e6,
    "campanella_mae_vitl16": 303e6,
    "kaiko_dino_vits16": 21.7e6,
    "kaiko_dino_vits8": 21.7e6,
    "kaiko_dino_vitb16": 86e6,
    "kaiko_dino_vitb8": 86e6,
    "dinov2_vitl16": 303e6,
    "kaiko_dinov2_vitl14_reg4": 303e6,
}


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_every_experiment_config_is_listed():
    names = {p.stem for p in (REPO / "configs").glob("*.py")} - {"quickstart", "export", "prepare"}
    assert names == set(PAPER_CONFIGS)


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_full_variant_has_the_published_backbone_size(name):
    config = load(name)
    validate(config, num_devices=1)
    params = jax.eval_shape(build_method(config).init, jax.random.key(0))[0]
    backbone = params.get("backbone", params.get("encoder"))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(backbone))
    assert count == pytest.approx(PAPER_CONFIGS[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_quick_variant_takes_a_step(name, synthetic_slide_dir):
    config = load(name, "quick")
    config.data.slides = str(synthetic_slide_dir)
    validate(config, num_devices=1)
    mesh = parallel.single_device_mesh()
    setup = build_setup(config, mesh)
    method, state, step, rng = setup.method, setup.fresh_state(), setup.step, setup.step_rng
    index = pipeline.build_slide_index(config, str(synthetic_slide_dir))
    host = next(pipeline.build_train_iterator(config, pipeline.build_sampler(config, index)))
    batch = parallel.shard_batch({k: host[k] for k in method.batch_keys}, mesh)
    state, metrics = step(state, batch, rng)
    assert np.isfinite(float(metrics["loss"])) and int(state["step"]) == 1
