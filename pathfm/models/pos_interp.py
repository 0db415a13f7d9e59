"""Resampling of learned position embeddings to another patch grid, in the two ways that matter.

"official": facebookresearch/dino `vision_transformer.py` `interpolate_pos_encoding` and
  facebookresearch/dinov2 `dinov2/models/vision_transformer.py` (`interpolate_offset=0.1`,
  `interpolate_antialias=False`): `F.interpolate(mode="bicubic", scale_factor=((h0 + 0.1) / M,
  (w0 + 0.1) / M))`, Keys cubic a = -0.75 sampled at `(i + 0.5) * M / (h0 + 0.1) - 0.5`, indices
  clamped at the border, no antialiasing. The 0.1 offset shifts every sample: it is part of what
  DINO and DINOv2 trained with.
"timm": timm `layers/pos_embed.py` `resample_abs_pos_embed` (what `dynamic_img_size=True` does at
  any other size): `F.interpolate(size=(h0, w0), mode="bicubic", antialias=True)`, Keys cubic
  a = -0.5 widened by the shrink factor, the window cut at the border and renormalised (PIL's
  resampling; torch `aten/src/ATen/native/cpu/UpSampleKernel.cpp` `_compute_weights_aa`).

Both are separable: one [new, old] matrix per axis, built in NumPy with torch's float32 index
arithmetic, applied as two small matmuls. The tables are equal to torch's to float32 rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

POS_INTERP_MODES = ("official", "timm")
OFFICIAL_OFFSET = 0.1  # DINO's "+ 0.1" (dino issue #8), DINOv2's interpolate_offset


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel W(x) with parameter a (torch `cubic_convolution1/2`)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0)).astype(x.dtype)


def official_weights(old: int, new: int, offset: float = OFFICIAL_OFFSET) -> np.ndarray:
    """[new, old] weights of torch bicubic (a=-0.75, align_corners=False) with
    scale_factor = (new + offset) / old, as DINO and DINOv2 call it."""
    ratio = np.float32(1.0 / ((new + offset) / old))  # torch: 1 / scale_factor, in float32
    real = ratio * (np.arange(new, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    index = np.minimum(np.floor(real).astype(np.int64), old - 1)  # guard_index_and_lambda
    t = np.clip(real - index, 0, 1).astype(np.float32)
    taps = np.stack([t + 1, t, 1 - t, 2 - t], axis=1)  # distances to index-1 .. index+2
    coeffs = _cubic(taps, np.float32(-0.75))
    weights = np.zeros((new, old), np.float64)
    for j in range(4):
        np.add.at(weights, (np.arange(new), np.clip(index - 1 + j, 0, old - 1)), coeffs[:, j])
    return weights


def timm_weights(old: int, new: int) -> np.ndarray:
    """[new, old] weights of torch bicubic with antialias=True to size `new` (timm's default)."""
    scale = old / new
    support = 2.0 * max(scale, 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((new, old), np.float64)
    for i in range(new):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), old)
        taps = np.arange(lo, hi)
        w = _cubic((taps - center + 0.5) * invscale, -0.5)
        weights[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
    return weights


def interp_weights(old: int, new: int, mode: str) -> np.ndarray:
    """[new, old] resampling matrix of one axis for `mode` (POS_INTERP_MODES)."""
    if mode == "official":
        return official_weights(old, new)
    if mode == "timm":
        return timm_weights(old, new)
    raise ValueError(
        f"unknown position-embedding interpolation {mode!r}; use one of {POS_INTERP_MODES}"
    )


def resample_pos_embed(
    pos_embed: jax.Array,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    mode: str = "timm",
) -> jax.Array:
    """Position embeddings [1, prefix + M*M, D] resampled to [1, prefix + h*w, D].

    The first `num_prefix_tokens` rows (CLS; 0 for no_embed_class) are kept as they are; the
    M x M patch grid is resampled as `mode` says. The same grid returns the input unchanged (as
    DINO, DINOv2 and timm do)."""
    prefix_pos, patch_pos = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = round(np.sqrt(patch_pos.shape[1]))
    if old * old != patch_pos.shape[1]:
        raise ValueError(f"pos_embed {pos_embed.shape} has no square patch grid")
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = patch_pos.shape[-1]
    rows = jnp.asarray(interp_weights(old, new_grid[0], mode), jnp.float32)  # [h, M]
    cols = jnp.asarray(interp_weights(old, new_grid[1], mode), jnp.float32)  # [w, M]
    grid = patch_pos.reshape(old, old, dim).astype(jnp.float32)
    # Columns first, then rows: torch's order (`cpu_upsample_generic` sums x inside y).
    grid = jnp.einsum("mnd,wn->mwd", grid, cols, precision=jax.lax.Precision.HIGHEST)
    grid = jnp.einsum("hm,mwd->hwd", rows, grid, precision=jax.lax.Precision.HIGHEST)
    patch = grid.reshape(1, -1, dim).astype(pos_embed.dtype)
    return jnp.concatenate([prefix_pos, patch], axis=1)
