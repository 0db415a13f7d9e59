"""Crops cut on the accelerator (pathfm.data.device_crops): PIL's bicubic, the host's draws and
orientations, sharded = single device, and the DINO loss equal to host-cut crops."""

import dataclasses

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from testutil import tiny_dino_config

from pathfm import parallel
from pathfm.config import validate
from pathfm.data import augment as A
from pathfm.data import pipeline
from pathfm.data.device_crops import cut_multicrop, cut_view, resize_weights
from pathfm.errors import ConfigError
from pathfm.ssl.dino import Dino


def _patch(size: int = 96, seed: int = 0) -> np.ndarray:
    """uint8 [size, size, 3]: smooth colour plus noise, so the resize overshoots and clips."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), np.uint8), (5, 5), 1.5)
    return np.clip(img + rng.integers(-30, 31, img.shape), 0, 255).astype(np.uint8)


BOXES = [  # (top, left, h, w) -> size: enlarge, shrink < 1.5x, shrink > 2x, mixed axes
    ((10, 20, 50, 70), 96),
    ((0, 0, 96, 96), 80),
    ((5, 7, 88, 60), 24),
    ((30, 1, 20, 90), 40),
]


@pytest.mark.parametrize("box,size", BOXES)
def test_weights_are_pils_bicubic(box, size):
    # PIL resizes horizontally, rounds and clips to uint8, then vertically: the same two passes
    # with our weight matrices give PIL's pixels (PIL's fixed point rounds a rare pixel by one).
    patch = _patch()
    top, left, h, w = box
    pil = np.asarray(Image.fromarray(patch[top : top + h, left : left + w]).resize((size, size), 3))
    rows = np.asarray(resize_weights(top, h, patch.shape[0], size), np.float64)
    cols = np.asarray(resize_weights(left, w, patch.shape[1], size), np.float64)
    np.testing.assert_allclose(rows.sum(1), 1.0, rtol=1e-6)
    wide = np.clip(np.round(np.einsum("pj,ijc->ipc", cols, patch.astype(np.float64))), 0, 255)
    two_pass = np.clip(np.round(np.einsum("oi,ipc->opc", rows, wide)), 0, 255)
    assert np.abs(two_pass - pil).max() <= 1
    assert np.mean(two_pass != pil) < 0.01
    # One float pass (no rounding in between) stays within a grey level of PIL on average.
    cut = jax.jit(cut_view, static_argnums=3)
    got = np.asarray(cut(patch, np.array(box), np.zeros(3, int), size))
    assert got.dtype == np.float32 and got.shape == (size, size, 3)
    assert 0.0 <= got.min() and got.max() <= 1.0
    assert np.mean(np.abs(got * 255 - pil)) < 0.6


@pytest.mark.parametrize("k", range(4))
def test_orientations_are_the_hosts(k):
    # A whole-patch box at the patch's size is the identity resize: only the orientation acts.
    patch = _patch(32, seed=k)
    box, cut = np.array([0, 0, 32, 32]), jax.jit(cut_view, static_argnums=3)
    for hflip in (0, 1):
        for vflip in (0, 1):
            want = patch.copy()
            A.orient_inplace(want, bool(hflip), bool(vflip), k)
            got = cut(patch, box, np.array([hflip, vflip, k]), 32)
            np.testing.assert_array_equal(np.round(np.asarray(got) * 255), want)


def test_views_are_drawn_as_the_host_draws_them():
    cfg = A.MultiCropConfig(global_size=48, local_size=24, n_local=3, vflip_p=0.5, rot90=True)
    cfg = dataclasses.replace(cfg, photometric_on_host=False)
    host = A.DinoMultiCrop(cfg)
    cut = A.DinoMultiCrop(dataclasses.replace(cfg, geometry_on_host=False))
    patch = _patch(64)
    for seed in range(3):
        rng_host, rng_cut = np.random.default_rng(seed), np.random.default_rng(seed)
        crops, views = host(patch, rng_host), cut(patch, rng_cut)
        assert rng_host.random() == rng_cut.random()  # the same number of draws
        assert views["patches"] is patch
        assert views["crop_boxes"].shape == (5, 4) and views["crop_orient"].shape == (5, 3)
        drawn = zip(views["crop_boxes"], views["crop_orient"], strict=True)
        for i, (box, orient) in enumerate(drawn):
            top, left, h, w = box
            want = crops["global_crops"][i] if i < 2 else crops["local_crops"][i - 2]
            redo = A.resize(patch[top : top + h, left : left + w], want.shape[0])
            A.orient_inplace(redo, bool(orient[0]), bool(orient[1]), int(orient[2]))
            np.testing.assert_array_equal(redo, want)


def test_sharded_batch_equals_one_device():
    cfg = dataclasses.replace(
        A.MultiCropConfig(global_size=32, local_size=16, n_local=2, vflip_p=0.5, rot90=True),
        photometric_on_host=False,
        geometry_on_host=False,
    )
    cut = A.DinoMultiCrop(cfg)
    samples = [cut(_patch(48, s), np.random.default_rng(s)) for s in range(8)]
    batch = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    fn = jax.jit(cut_multicrop, static_argnums=(3, 4))
    want = fn(batch["patches"], batch["crop_boxes"], batch["crop_orient"], 32, 16)
    mesh = parallel.make_mesh(8, 1, jax.devices()[:8])
    sharded = parallel.shard_batch(batch, mesh)
    got = fn(sharded["patches"], sharded["crop_boxes"], sharded["crop_orient"], 32, 16)
    assert got[0].shape == (8, 2, 32, 32, 3) and got[1].shape == (8, 2, 16, 16, 3)
    for g, w in zip(got, want, strict=True):  # device matmuls may round a last bit differently
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)


def test_dino_loss_from_device_cut_crops_equals_host_cut_crops():
    # Whole-patch boxes at the patch's size: both paths make the same oriented views, so the
    # loss (colour ops on the device, same key) must agree: draws, orientations and batch keys.
    whole = {"global_size": 32, "local_size": 32, "global_scale": (1.0, 1.0)}
    config = tiny_dino_config(**{f"crops.{k}": v for k, v in whole.items()})
    config.crops.update(local_scale=(1.0, 1.0), vflip_p=0.5, rot90=True)
    config.data.patch_size = 32
    config.crops.photometric_on_device = True  # needed; its ops off (a quicker compile)
    config.crops.update(color_jitter_p=0.0, grayscale_p=0.0)
    on_device = config.copy_and_resolve_references()
    on_device.crops.geometry_on_device = True
    patches = [_patch(32, s) for s in range(config.batch_size)]

    def batch(cfg):
        transform = pipeline.host_transform(cfg)
        views = [transform(p, np.random.default_rng(i)) for i, p in enumerate(patches)]
        return {k: jnp.asarray(np.stack([v[k] for v in views])) for k in views[0]}

    host_method, device_method = Dino(config), Dino(on_device)
    assert device_method.batch_keys == ("patches", "crop_boxes", "crop_orient")
    host_batch, device_batch = batch(config), batch(on_device)
    assert set(device_batch) == set(device_method.batch_keys)
    assert len(np.unique(np.asarray(device_batch["crop_orient"]), axis=0)) > 3
    params, extra = jax.jit(host_method.init)(jax.random.key(0))  # eager init: 5 s
    key = jax.random.key(3)
    both = jax.jit(  # one compile for the two
        lambda h, d: (host_method.loss(params, extra, h, key, 0)[0],
                      device_method.loss(params, extra, d, key, 0)[0])
    )  # fmt: skip
    want, got = both(host_batch, device_batch)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    "overrides,needs",
    [
        ({"crops.geometry_on_device": True}, "photometric_on_device"),
        ({"crops.geometry_on_device": True, "crops.photometric_on_device": True,
          "method": "mae"}, "'dino' only"),
    ],
)  # fmt: skip
def test_bad_combinations_stop_before_any_work(overrides, needs):
    with pytest.raises(ConfigError, match=needs) as e:
        validate(tiny_dino_config(**overrides))
    assert "crops.geometry_on_device" in str(e.value)
