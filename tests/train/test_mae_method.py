"""MAE as a method: published size, a learning train step, and a quick run through the loop."""

import importlib.util
import json

import jax
import numpy as np
import pytest
from testutil import REPO

from pathfm import parallel
from pathfm.ssl.registry import build_method
from pathfm.train.build import build_setup
from pathfm.train.loop import train


def load(arg=None):
    path = REPO / "configs" / "campanella_mae_vitl16.py"
    spec = importlib.util.spec_from_file_location("campanella_mae_vitl16", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_full_config_is_mae_vit_large():
    params = jax.eval_shape(build_method(load()).init, jax.random.key(0))[0]
    encoder = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["encoder"]))
    assert encoder == pytest.approx(303e6, rel=0.01)  # ViT-L/16 without position embeddings
    assert params["decoder"]["decoder_embed"]["kernel"].shape == (1024, 512)


def test_repeated_steps_on_one_batch_lower_the_loss():
    config = load("quick")
    config.optim.lr = 0.05  # per 256: a visible drop within a few steps of a tiny model
    mesh = parallel.single_device_mesh()
    setup = build_setup(config, mesh)
    state, step = setup.fresh_state(), setup.step
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
    batch = parallel.shard_batch({"images": images}, mesh)
    losses = []
    for _ in range(4):
        state, metrics = step(state, batch, jax.random.key(1))  # same key: same mask each step
        losses.append(float(metrics["loss"]))
        assert float(metrics["masked_fraction"]) == pytest.approx(0.75)
    assert losses[-1] < losses[0]


def test_quick_variant_trains_through_the_loop(synthetic_slide_dir, tmp_path):
    config = load("quick")
    config.data.slides = str(synthetic_slide_dir)
    train(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert np.isfinite(records[-1]["rankme"]) and records[-1]["rankme"] > 1
