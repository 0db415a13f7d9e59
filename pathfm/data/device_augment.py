"""DINO's photometric augmentations on the accelerator: pure JAX, jittable, vmapped over images.

With ``MultiCropConfig(photometric_on_host=False)`` the host only crops, resizes, flips and
rotates; ``photometric`` (one view) or ``photometric_multicrop`` (a DINO batch) then applies, per
image and in this order, as ``pathfm.data.augment.DinoMultiCrop`` does: HED stain jitter (p),
colour jitter (p; brightness, contrast, saturation and hue in a per-image random order), grayscale
(p), Gaussian blur (p, sigma ~ U(0.1, 2.0)) and solarize (p). Images are float32 in [0, 1]
(uint8 input is divided by 255 first); the result is float32 in [0, 1], to be normalised with
``normalize`` (not ``pathfm.ssl.base.normalize_images``, which expects uint8).

Per-op functions take explicit factors and images [..., H, W, 3] with factors of shape [...]
(scalars for one image), so they batch by broadcasting as well as under ``jax.vmap``.
Differences from the host version (same distributions, not the same samples or bits):

* Randomness: one ``jax.random.uniform`` draw of 20 numbers per image (keys split per image);
  colour-jitter order is the argsort of 4 of them, like the host's. Ops with probability 0 or
  strength 0 are removed at trace time (exact identity); probabilities compare ``u < p``.
* Everything stays float32: no uint8 rounding after jitter, HED or blur (the host rounds after
  each), and grayscale is the float luma 0.299 R + 0.587 G + 0.114 B (PIL truncates to 8 bits).
* Hue uses torchvision's tensor RGB<->HSV (the host uses cv2's float HSV; equal to ~1e-6).
* Blur: per-image Gaussian weights over a fixed 2 * ceil(3 * sigma_max) + 1 taps, the taps
  beyond ceil(3 * sigma) zeroed (cv2's kernel size), symmetric padding (cv2 BORDER_REFLECT);
  cv2 blurs uint8 in fixed point, here in float32.
* Solarize: x >= 0.5 -> 1 - x, i.e. PIL's threshold 128 applied to the value rounded to uint8.
* Colour mixes (saturation, grayscale, HED) are broadcast sums, not matmuls, so no TF32 on GPUs.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from pathfm.data.augment import (
    HED_FROM_RGB,
    HED_LOG_ADJUST,
    RGB_FROM_HED,
    PhotometricConfig,
)
from pathfm.data.augment import VIEWS as VIEWS  # re-exported: the views' names, for callers

_GRAY = (0.299, 0.587, 0.114)
_N_UNIFORMS = 20  # per image: hed 1+6, jitter 1+4+4 (order), gray 1, blur 1+1, solarize 1


def _per_image(f: jax.Array | float, x: jax.Array) -> jax.Array:
    """Factors [...] -> [..., 1, 1, 1], broadcastable against images [..., H, W, 3]."""
    return jnp.asarray(f, x.dtype)[..., None, None, None]


def _mix(x: jax.Array, m: Any) -> jax.Array:
    """Per-pixel row vector times a colour matrix: [..., H, W, 3] @ [(...,) 3, 3] as a sum."""
    m = jnp.asarray(m, x.dtype)
    m = m[..., None, None, :, :]  # [..., 1, 1, 3, 3] against pixels [..., H, W, 3]
    return x[..., 0:1] * m[..., 0, :] + x[..., 1:2] * m[..., 1, :] + x[..., 2:3] * m[..., 2, :]


def luma(x: jax.Array) -> jax.Array:
    """Float grayscale [..., H, W, 3] -> [..., H, W, 1] (0.299 R + 0.587 G + 0.114 B)."""
    return x[..., 0:1] * _GRAY[0] + x[..., 1:2] * _GRAY[1] + x[..., 2:3] * _GRAY[2]


def to_grayscale(x: jax.Array) -> jax.Array:
    """Grayscale [..., H, W, 3] -> [..., H, W, 3], the luma in every channel."""
    return jnp.broadcast_to(luma(x), x.shape)


def _blend(x: jax.Array, other: jax.Array, f: jax.Array | float) -> jax.Array:
    """torchvision ``_blend``: clip(f * x + (1 - f) * other) to [0, 1]."""
    f = _per_image(f, x)
    return jnp.clip(f * x + (1.0 - f) * other, 0.0, 1.0)


def adjust_brightness(x: jax.Array, f: jax.Array | float) -> jax.Array:
    """Brightness: clip(f * x); x [..., H, W, 3], f [...]."""
    return _blend(x, jnp.zeros((), x.dtype), f)


def adjust_contrast(x: jax.Array, f: jax.Array | float) -> jax.Array:
    """Contrast: blend with the mean grayscale value of each image."""
    return _blend(x, jnp.mean(luma(x), axis=(-3, -2, -1), keepdims=True), f)


def adjust_saturation(x: jax.Array, f: jax.Array | float) -> jax.Array:
    """Saturation: blend with the per-pixel grayscale image."""
    return _blend(x, luma(x), f)


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """RGB [..., 3] in [0, 1] -> HSV [..., 3], hue in [0, 1) (torchvision ``_rgb2hsv``)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = jnp.max(x, axis=-1), jnp.min(x, axis=-1)
    cr = maxc - minc
    s = cr / jnp.where(maxc == 0, 1.0, maxc)
    cr_div = jnp.where(cr == 0, 1.0, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    is_r, is_g = maxc == r, (maxc == g) & (maxc != r)
    h = jnp.where(is_r, bc - gc, jnp.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.mod(h / 6.0 + 1.0, 1.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
    """HSV [..., 3] -> RGB [..., 3] (torchvision ``_hsv2rgb``)."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    i = jnp.mod(i.astype(jnp.int32), 6)
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    sel = [i == k for k in range(5)]
    pick = lambda *c: jnp.select(sel, c[:5], c[5])
    return jnp.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], -1)


def adjust_hue(x: jax.Array, f: jax.Array | float) -> jax.Array:
    """Hue: rotate the HSV hue by f in [-0.5, 0.5] of a turn."""
    hsv = rgb_to_hsv(x)
    h = jnp.mod(hsv[..., 0] + jnp.asarray(f, x.dtype)[..., None, None], 1.0)
    return hsv_to_rgb(jnp.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1))


def adjust_hed(x: jax.Array, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """HED stains s -> s * alpha + beta; alpha, beta [..., 3] (H, E, DAB), skimage units."""
    alpha, beta = jnp.asarray(alpha, x.dtype), jnp.asarray(beta, x.dtype)
    rgb = jnp.asarray(RGB_FROM_HED, x.dtype)
    hed = jnp.asarray(HED_FROM_RGB, x.dtype)
    a = jnp.sum(hed[:, :, None] * (alpha[..., :, None] * rgb)[..., None, :, :], axis=-2)
    c = HED_LOG_ADJUST * jnp.sum(beta[..., :, None] * rgb, axis=-2)  # OD' = OD @ a + c
    log_rgb = _mix(jnp.log(jnp.maximum(x, 1e-6)), a) - c[..., None, None, :]
    return jnp.clip(jnp.exp(log_rgb), 0.0, 1.0)


def solarize(x: jax.Array) -> jax.Array:
    """PIL solarize at 128 of the uint8 value: x >= 0.5 -> 1 - x."""
    return jnp.where(x >= 0.5, 1.0 - x, x)


def blur_taps(sigma_max: float) -> int:
    """Kernel taps for sigmas up to ``sigma_max``: 2 * ceil(3 * sigma_max) + 1 (13 for 2.0)."""
    return 2 * math.ceil(3 * sigma_max) + 1


def gaussian_kernel(sigma: jax.Array, taps: int) -> jax.Array:
    """Normalised 1-D Gaussian [..., taps] (cv2's, zero beyond radius ceil(3 * sigma))."""
    sigma = jnp.asarray(sigma, jnp.float32)[..., None]
    pos = jnp.arange(taps, dtype=jnp.float32) - (taps - 1) // 2
    w = jnp.exp(-(pos**2) / (2.0 * sigma**2)) * (jnp.abs(pos) <= jnp.ceil(3.0 * sigma))
    return w / jnp.sum(w, axis=-1, keepdims=True)


def gaussian_blur(x: jax.Array, sigma: jax.Array | float, taps: int = 13) -> jax.Array:
    """Separable Gaussian blur of [..., H, W, 3], sigma [...], symmetric (cv2 REFLECT) border."""
    w = gaussian_kernel(sigma, taps).astype(x.dtype)  # [..., taps]
    height, width, r = x.shape[-3], x.shape[-2], (taps - 1) // 2
    pad = [(0, 0)] * (x.ndim - 3) + [(r, r), (r, r), (0, 0)]
    xp = jnp.pad(x, pad, mode="symmetric")
    wk = lambda k: w[..., k, None, None, None]
    rows = sum(wk(k) * xp[..., k : k + height, :, :] for k in range(taps))
    return sum(wk(k) * rows[..., :, k : k + width, :] for k in range(taps))


def _jitter_factor(u: jax.Array, strength: float) -> jax.Array:
    """U(max(0, 1 - x), 1 + x) from a uniform in [0, 1)."""
    lo = max(0.0, 1.0 - strength)
    return lo + (1.0 + strength - lo) * u


def color_jitter(x: jax.Array, u: jax.Array, cfg: PhotometricConfig) -> jax.Array:
    """ColorJitter of one image [H, W, 3] from 8 uniforms u: argsort(u[:4]) order, u[4:] factors."""
    factors = jnp.stack(
        [
            _jitter_factor(u[4], cfg.brightness),
            _jitter_factor(u[5], cfg.contrast),
            _jitter_factor(u[6], cfg.saturation),
            cfg.hue * (2.0 * u[7] - 1.0),
        ]
    )
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    on = (cfg.brightness > 0, cfg.contrast > 0, cfg.saturation > 0, cfg.hue > 0)
    branches = [
        (lambda y, f, op=op: op(y, f)) if active else (lambda y, f: y)
        for op, active in zip(ops, on, strict=True)
    ]
    if not any(on):
        return x
    order = jnp.argsort(u[:4])

    def body(i: jax.Array, y: jax.Array) -> jax.Array:
        """Apply the op at position i of this image's random order."""
        idx = order[i]
        return jax.lax.switch(idx, branches, y, factors[idx])

    return jax.lax.fori_loop(0, 4, body, x)


def _maybe(apply: jax.Array, fn: Any, x: jax.Array) -> jax.Array:
    """fn(x) where ``apply`` (a scalar bool), else x."""
    return jnp.where(apply, fn(x), x)


def _one(x: jax.Array, key: jax.Array, cfg: PhotometricConfig, view: str) -> jax.Array:
    """All photometric ops on one float image [H, W, 3] in the host's order."""
    p_hed, p_jit, p_gray, p_blur, p_sol = cfg.probabilities(view)
    u = jax.random.uniform(key, (_N_UNIFORMS,), jnp.float32)
    if p_hed > 0:
        s, b = cfg.hed_sigma, cfg.hed_bias
        alpha, beta = 1.0 - s + 2.0 * s * u[1:4], b * (2.0 * u[4:7] - 1.0)
        x = _maybe(u[0] < p_hed, lambda y: adjust_hed(y, alpha, beta), x)
    if p_jit > 0:
        x = _maybe(u[7] < p_jit, lambda y: color_jitter(y, u[8:16], cfg), x)
    if p_gray > 0:
        x = _maybe(u[16] < p_gray, to_grayscale, x)
    if p_blur > 0:
        lo, hi = cfg.blur_sigma
        taps = blur_taps(hi)
        x = _maybe(u[17] < p_blur, lambda y: gaussian_blur(y, lo + (hi - lo) * u[18], taps), x)
    if p_sol > 0:
        x = _maybe(u[19] < p_sol, solarize, x)
    return x


def to_float(images: jax.Array) -> jax.Array:
    """uint8 -> float32 / 255; float input is taken to be in [0, 1] already."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def photometric(images: jax.Array, key: jax.Array, cfg: PhotometricConfig, view: str) -> jax.Array:
    """Photometric augmentation of one view: [N, H, W, 3] uint8 or [0, 1] float -> float32."""
    cfg.probabilities(view)  # validate the view
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda x, k: _one(x, k, cfg, view))(to_float(images), keys)


def photometric_multicrop(
    global_crops: jax.Array, local_crops: jax.Array, key: jax.Array, cfg: PhotometricConfig
) -> tuple[jax.Array, jax.Array]:
    """DINO batch: global [B, 2, G, G, 3], local [B, V, L, L, 3] -> the same shapes, float32."""
    k1, k2, k3 = jax.random.split(key, 3)
    g1 = photometric(global_crops[:, 0], k1, cfg, "global1")
    g2 = photometric(global_crops[:, 1], k2, cfg, "global2")
    b, v = local_crops.shape[:2]
    loc = photometric(local_crops.reshape(b * v, *local_crops.shape[2:]), k3, cfg, "local")
    return jnp.stack([g1, g2], axis=1), loc.reshape(b, v, *loc.shape[1:])


def normalize(x: jax.Array, mean: Any, std: Any, dtype: Any = jnp.float32) -> jax.Array:
    """Float [..., 3] in [0, 1] -> (x - mean) / std in ``dtype`` (float32 arithmetic)."""
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    return x.astype(dtype)
