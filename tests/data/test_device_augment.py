"""Tests for the accelerator photometric augmentation (pathfm.data.device_augment).

Values are checked against the host NumPy/OpenCV versions in pathfm.data.augment. Shapes are
kept few and small: every distinct (function, config, shape) is one XLA compile.
"""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pathfm.data import augment as A
from pathfm.data import device_augment as D
from pathfm.errors import ConfigError

_OFF = dict(color_jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0, 0.0, 0.0), solarize_p=(0.0, 0.0))
_FULL = D.PhotometricConfig(hed_p=0.5)  # every op on global crop 2 (blur p 0.1, solarize 0.2)


def _images(n: int = 6, size: int = 16, seed: int = 0) -> np.ndarray:
    """Random float32 images in [0, 1], [n, size, size, 3] (not quantised to 8 bits)."""
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _host(fn, x: np.ndarray, *factors) -> np.ndarray:
    """A host float op (on [0, 255]) applied per image to [N, H, W, 3] in [0, 1]."""
    out = [fn(img * 255.0, *(f[i].tolist() for f in factors)) for i, img in enumerate(x)]
    return np.stack(out) / 255.0


@jax.jit
def _jitter_ops(x: jax.Array, f: jax.Array) -> tuple[jax.Array, ...]:
    """The four colour-jitter ops with explicit per-image factors f [N, 4]."""
    return (
        D.adjust_brightness(x, f[:, 0]),
        D.adjust_contrast(x, f[:, 1]),
        D.adjust_saturation(x, f[:, 2]),
        D.adjust_hue(x, f[:, 3]),
    )


def test_jitter_ops_match_host() -> None:
    x = _images()
    f = np.array(
        [
            [0.6, 0.6, 0.8, -0.1],
            [1.4, 1.4, 1.2, 0.1],
            [1.0, 1.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.5],
            [2.0, 2.5, 3.0, -0.5],
            [0.83, 1.21, 0.9, 0.037],
        ],
        np.float32,
    )
    got = [np.asarray(g) for g in _jitter_ops(x, f)]
    host_ops = (A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue)
    for k, (g, op) in enumerate(zip(got, host_ops, strict=True)):
        np.testing.assert_allclose(g, _host(op, x, f[:, k]), atol=1e-3)
        assert g.min() >= 0.0 and g.max() <= 1.0
    np.testing.assert_allclose(got[0][2], x[2], atol=1e-6)  # factor 1 / hue 0: identity
    np.testing.assert_allclose(got[3][2], x[2], atol=1e-6)
    red = jnp.array([[[1.0, 0.0, 0.0]]])
    np.testing.assert_allclose(D.adjust_hue(red, 1 / 3), [[[0.0, 1.0, 0.0]]], atol=1e-6)


def test_hsv_round_trip_and_hed_matches_host() -> None:
    x = _images(2)
    np.testing.assert_allclose(D.hsv_to_rgb(D.rgb_to_hsv(x)), x, atol=1e-6)
    alpha = np.array([[1.05, 0.95, 1.0], [0.9, 1.1, 1.03]], np.float32)
    beta = np.array([[0.02, -0.03, 0.01], [-0.05, 0.05, 0.0]], np.float32)
    got = np.asarray(D.adjust_hed(x, alpha, beta))
    np.testing.assert_allclose(got, _host(A.adjust_hed, x, alpha, beta), atol=1e-3)
    same = D.adjust_hed(x, np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32))
    np.testing.assert_allclose(same, np.maximum(x, 1e-6), atol=2e-5)


def test_grayscale_and_solarize_exact() -> None:
    x = _images(2)
    luma = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    np.testing.assert_array_equal(D.to_grayscale(x), np.repeat(luma[..., None], 3, axis=-1))
    u8 = (x * 255).astype(np.uint8)
    grey = np.asarray(D.to_grayscale(D.to_float(u8)))  # float luma vs PIL's truncated one
    pil = np.stack([A.to_grayscale(img) for img in u8])
    assert np.abs(grey * 255 - pil).max() < 1.0
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    xf = values / np.float32(255.0)
    got = np.asarray(D.solarize(xf))
    np.testing.assert_array_equal(got, np.where(values >= 128, 1 - xf, xf))  # PIL's threshold
    np.testing.assert_allclose(got, A.solarize(values) / 255.0, atol=1e-7)


def test_gaussian_blur_matches_cv2() -> None:
    sigmas = np.array([0.1, 0.5, 0.7, 1.0, 1.37, 2.0], np.float32)
    w = np.asarray(D.gaussian_kernel(sigmas, 13))
    for s, row in zip(sigmas, w, strict=True):
        k = 2 * int(np.ceil(3 * s)) + 1
        ref = np.zeros(13)
        ref[6 - k // 2 : 7 + k // 2] = cv2.getGaussianKernel(k, float(s))[:, 0]
        np.testing.assert_allclose(row, ref, atol=1e-6)
    x = _images(6, 20)
    got = np.asarray(jax.jit(D.gaussian_blur)(x, sigmas))
    for img, s, out in zip(x, sigmas, got, strict=True):
        k = 2 * int(np.ceil(3 * s)) + 1
        ref = cv2.GaussianBlur(
            img, (k, k), float(s), sigmaY=float(s), borderType=cv2.BORDER_REFLECT
        )
        np.testing.assert_allclose(out, ref, atol=1e-5)  # borders included
    const = np.full((1, 20, 20, 3), 0.3, np.float32)
    np.testing.assert_allclose(D.gaussian_blur(const, 1.7), const, atol=1e-6)
    assert D.blur_taps(2.0) == 13


_JITTER_CFG = D.PhotometricConfig()


@jax.jit
def _color_jitter(x: jax.Array, u: jax.Array) -> jax.Array:
    """Vmapped colour jitter with DINO's strengths."""
    return jax.vmap(lambda img, v: D.color_jitter(img, v, _JITTER_CFG))(x, u)


def test_color_jitter_random_order_matches_host() -> None:
    x = _images(8)
    u = np.random.default_rng(3).random((8, 8), dtype=np.float32)
    got = np.asarray(_color_jitter(x, u))
    ops = (A.adjust_brightness, A.adjust_contrast, A.adjust_saturation, A.adjust_hue)
    orders = set()
    for img, v, out in zip(x, u, got, strict=True):
        b, c, s = 0.6 + 0.8 * v[4], 0.6 + 0.8 * v[5], 0.8 + 0.4 * v[6]
        factors = (b, c, s, 0.1 * (2 * v[7] - 1))
        f = img * 255.0
        order = tuple(np.argsort(v[:4]))
        for idx in order:
            f = ops[idx](f, float(factors[idx]))
        np.testing.assert_allclose(out, f / 255.0, atol=1e-3)
        orders.add(order)
    assert len(orders) > 4  # the images really use different op orders
    off = D.PhotometricConfig(brightness=0, contrast=0, saturation=0, hue=0)
    np.testing.assert_array_equal(D.color_jitter(x[0], u[0], off), x[0])


_TRACES: list[int] = []


@jax.jit
def _full(images: jax.Array, key: jax.Array) -> jax.Array:
    """Every op (global crop 2, HED on), counting traces."""
    _TRACES.append(1)
    return D.photometric(images, key, _FULL, "global2")


def test_photometric_random_deterministic_compiled_once() -> None:
    img = (_images(1, 16, seed=5) * 255).astype(np.uint8)
    batch = np.repeat(img, 8, axis=0)  # the same image 8 times
    outs = [np.asarray(_full(batch, jax.random.key(s))) for s in (0, 0, 1)]
    assert len(_TRACES) == 1  # one compile for a batch shape, whatever the key
    assert outs[0].dtype == np.float32 and outs[0].shape == batch.shape
    assert outs[0].min() >= 0.0 and outs[0].max() <= 1.0
    np.testing.assert_array_equal(outs[0], outs[1])  # deterministic for a key
    assert not np.array_equal(outs[0], outs[2])
    assert len({o.tobytes() for o in outs[0]}) == 8  # per-image randomness across the batch


def test_probability_zero_is_identity_and_one_always_applies() -> None:
    u8 = (_images(4, 8) * 255).astype(np.uint8)
    off = D.PhotometricConfig(**_OFF)
    for view in D.VIEWS:
        np.testing.assert_array_equal(
            D.photometric(u8, jax.random.key(0), off, view), u8 / np.float32(255)
        )
    cfg = D.PhotometricConfig(**(_OFF | {"grayscale_p": 1.0, "solarize_p": (0.0, 1.0)}))
    x = D.to_float(u8)
    for view, ref in (("global2", D.solarize(D.to_grayscale(x))), ("local", D.to_grayscale(x))):
        np.testing.assert_array_equal(D.photometric(u8, jax.random.key(1), cfg, view), ref)


def test_probability_rate() -> None:
    img = np.zeros((400, 2, 2, 3), np.uint8)
    img[..., 0] = 200  # coloured: grayscale is visible
    cfg = D.PhotometricConfig(**(_OFF | {"grayscale_p": 0.3}))
    out = np.asarray(D.photometric(img, jax.random.key(2), cfg, "local"))
    grey = np.all(out == out[..., :1], axis=(1, 2, 3))
    assert abs(grey.mean() - 0.3) < 0.07  # 400 draws: sd ~0.023


def test_multicrop_views() -> None:
    cfg = D.PhotometricConfig(**(_OFF | {"solarize_p": (0.0, 1.0)}))
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (2, 2, 8, 8, 3), dtype=np.uint8)
    loc = rng.integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)
    og, ol = D.photometric_multicrop(g, loc, jax.random.key(0), cfg)
    assert og.shape == g.shape and ol.shape == loc.shape and og.dtype == jnp.float32
    np.testing.assert_array_equal(og[:, 0], g[:, 0] / np.float32(255))
    np.testing.assert_array_equal(og[:, 1], D.solarize(D.to_float(g[:, 1])))
    np.testing.assert_array_equal(ol, loc / np.float32(255))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    np.testing.assert_allclose(
        D.normalize(og, mean, std), (np.asarray(og) - mean) / np.float32(0.2), atol=1e-6
    )


def test_config() -> None:
    mc = A.MultiCropConfig(grayscale_p=0.1, blur_p=(0.9, 0.2, 0.4), hed_p=0.3, hue=0.05)
    cfg = D.PhotometricConfig.from_multicrop(mc)
    assert cfg.grayscale_p == 0.1 and cfg.hed_p == 0.3 and cfg.hue == 0.05
    assert cfg.probabilities("global1") == (0.3, 0.8, 0.1, 0.9, 0.0)
    assert cfg.probabilities("global2") == (0.3, 0.8, 0.1, 0.2, 0.2)
    assert cfg.probabilities("local") == (0.3, 0.8, 0.1, 0.4, 0.0)
    assert D.PhotometricConfig.from_multicrop(A.MultiCropConfig()) == D.PhotometricConfig()
    hash(cfg)  # usable as a static jit argument
    with pytest.raises(ValueError):
        cfg.probabilities("global3")
    with pytest.raises(ConfigError):
        D.PhotometricConfig(grayscale_p=1.5)
    with pytest.raises(ConfigError):
        D.PhotometricConfig(blur_p=(1.0, 0.1))
    with pytest.raises(ConfigError):
        D.PhotometricConfig(hue=0.6)
