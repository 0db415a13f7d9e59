"""Frozen features from a real training run's checkpoint: the right backbone, exact values,
the same on one device as split over eight, and a round trip through disk."""

import jax
import numpy as np
import pytest
from testutil import tiny_dino_config

from pathfm import parallel
from pathfm.config import config_from_json
from pathfm.errors import DataError
from pathfm.evaluation.features import (
    extract_features,
    load_features,
    save_features,
)
from pathfm.runs.extractor import load_extractor
from pathfm.ssl.registry import build_method
from pathfm.train.checkpoint import load_state
from pathfm.train.loop import train


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_slide_dir):
    """A 4-step DINO run (the teacher and the student differ after it)."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_dino_config(epochs=2, steps_per_epoch=2)
    config.data.slides = str(synthetic_slide_dir)
    config.monitor.every_steps = 0
    config.dino.freeze_last_layer = 0
    train(config, workdir)
    return workdir, config


@pytest.fixture(scope="module")
def one(run):
    return load_extractor(run[0], mesh=parallel.single_device_mesh())


@pytest.fixture(scope="module")
def eight(run):
    return load_extractor(run[0], mesh=parallel.make_mesh(8, 1))


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), np.uint8)


def test_config_json_restores_the_run_config(run):
    workdir, config = run
    assert config_from_json(workdir / "config.json").to_dict() == config.to_dict()


def test_features_are_the_teacher_cls_and_mean_patch_tokens(run, one):
    workdir, config = run
    extractor = one
    assert extractor.which == "teacher" and extractor.step == 4
    images = _images(5)
    features = extractor(images)
    _, state = load_state(workdir / "checkpoints")
    method = build_method(config)
    tokens = jax.jit(method.tokens, static_argnums=3)
    cls, patches = tokens(state["params"], state["extra"], images, "teacher")
    np.testing.assert_allclose(features["cls"], cls, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features["mean_patch"], patches.mean(1), rtol=1e-4, atol=1e-5)
    embed = jax.jit(method.embed)(state["params"], state["extra"], images)
    np.testing.assert_allclose(features["cls"], embed, rtol=1e-4, atol=1e-5)  # the monitors' CLS
    student_cls, _ = tokens(state["params"], state["extra"], images, "student")
    assert not np.allclose(student_cls, cls, atol=1e-4)


def test_sharded_extraction_equals_one_device_and_pads_odd_batches(one, eight):
    images = _images(11)  # not a multiple of 8: padded, then cut back
    a, b = one(images), eight(images)
    assert a["cls"].shape == (11, 32)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_extract_save_and_load_round_trip(eight, tmp_path):
    extractor = eight
    batches = [(_images(8, i), np.full(8, i)) for i in range(3)]
    arrays = extract_features(extractor, batches, total=24)
    assert arrays["cls"].shape == (24, 32) and list(arrays["labels"][::8]) == [0, 1, 2]
    np.testing.assert_allclose(arrays["cls"][8:16], extractor(_images(8, 1))["cls"], rtol=1e-6)
    folder = save_features(tmp_path / "feats", arrays, {"step": extractor.step})
    loaded = load_features(folder)
    for key in arrays:
        np.testing.assert_array_equal(loaded[key], arrays[key])
    (folder / "meta.json").unlink()
    with pytest.raises(DataError, match="no complete feature set"):
        load_features(folder)


def test_unknown_backbone_is_named(run):
    method = build_method(run[1])
    with pytest.raises(ValueError, match="'teacher' and a 'student'"):
        method.tokens({}, {}, _images(1), "encoder")
