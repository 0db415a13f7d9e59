"""Every experiment config loads, validates, and builds the model it names."""

import importlib.util

import jax
import numpy as np
import pytest
from testutil import REPO, tiny_dino_config

from pathfm.config import validate
from pathfm.errors import ConfigError
from pathfm.runs.prepare import validate_prepare
from pathfm.ssl.registry import build_method

# Training experiments; configs/export.py (mode "export") is checked in tests/interop and
# configs/prepare.py (mode "prepare") below.
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.stem not in ("export", "prepare"))


def load(path, arg=None):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_validates(path):
    validate(load(path), num_devices=1)


def test_prepare_config_needs_slides_and_valid_data_keys(tmp_path):
    config = load(REPO / "configs" / "prepare.py")
    assert config.mode == "prepare"
    with pytest.raises(ConfigError, match=r"config\.data\.slides"):
        validate_prepare(config)
    config.data.slides = str(tmp_path)
    validate_prepare(config)
    config.data.root = str(tmp_path / "not_there")
    with pytest.raises(ConfigError, match=r"config\.data\.root"):
        validate_prepare(config)
    config.data.root, config.data.read_threads, config.data.prefetch_batches = "", 2, 1
    with pytest.raises(ConfigError, match=r"config\.data\.prefetch_batches"):
        validate_prepare(config)


def test_dino_vits16_is_the_reference_vit_small():
    config = load(REPO / "configs" / "dino_vits16.py")
    params = jax.eval_shape(build_method(config).init, jax.random.key(0))[0]
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params["backbone"]))
    assert count == pytest.approx(21.7e6, rel=0.01)
    assert params["head"]["last_layer"]["weight_v"].shape == (256, 65536)
    validate(load(REPO / "configs" / "dino_vits16.py", "quick"), num_devices=1)


@pytest.mark.parametrize(
    "key,value,name",
    [
        ("batch_size", 0, "config.batch_size"),
        ("model.size", "huge", "config.model.size"),
        ("crops.local_size", 20, "config.crops.local_size"),
        ("data.mpp_weights", (1.0, 2.0), "config.data.mpp_weights"),
        ("optim.warmup_epochs", 99, "config.optim.warmup_epochs"),
        ("model.attention", "flash", "config.model.attention"),
        ("model.attention", "cudnn", "config.model.attention"),  # CPU here, float32
        ("model.remat", "everything", "config.model.remat"),
    ],
)
def test_invalid_values_name_the_key(key, value, name):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        validate(tiny_dino_config(**{key: value}), num_devices=1)


def test_batch_must_split_over_devices():
    with pytest.raises(ConfigError, match="divisible"):
        validate(tiny_dino_config(batch_size=6), num_devices=4)


@pytest.mark.parametrize("key,value", [("data.median_blur", -3), ("crops.hed_sigma", -1.0)])
def test_tissue_and_crop_settings_are_checked_up_front(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[0]):
        validate(tiny_dino_config(**{key: value}), num_devices=1)
