"""MAE's array ops: patchify, per-sample random masking and un-shuffling, pure JAX
(facebookresearch/mae `models_mae.py` `patchify`, `random_masking`).

Images are NHWC. A patch vector is laid out (p_row, p_col, channel), channel fastest, as the
reference's `einsum('nchpwq->nhwpqc')`; patches are in row-major order of the patch grid.
Masks are float32 with 1 = removed (masked) and 0 = kept, in the original token order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[N, H, W, C] -> [N, (H/p) * (W/p), p * p * C], as MAE's `patchify` (channel fastest)."""
    n, height, width, c = images.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch size {p}")
    h, w = height // p, width // p
    x = images.reshape(n, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5)  # [N, h, w, p, p, C]
    return x.reshape(n, h * w, p * p * c)


def unpatchify(
    patches: jax.Array, patch_size: int, grid: tuple[int, int] | None = None, channels: int = 3
) -> jax.Array:
    """[N, h * w, p * p * C] -> [N, h * p, w * p, C], the inverse of `patchify` (square default)."""
    n, length, _ = patches.shape
    p = patch_size
    if grid is None:
        side = round(length**0.5)
        if side * side != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid=(h, w)")
        grid = (side, side)
    h, w = grid
    x = patches.reshape(n, h, w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * p, w * p, channels)


def num_kept(length: int, mask_ratio: float) -> int:
    """Tokens kept per sample: int(L * (1 - mask_ratio)), exactly the reference's expression."""
    return int(length * (1 - mask_ratio))


def random_masking(
    tokens: jax.Array,
    mask_ratio: float,
    key: jax.Array | None = None,
    *,
    noise: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-sample random masking by argsort of U(0, 1) noise, as MAE's `random_masking`.

    tokens: [N, L, D]; `mask_ratio` a Python float (static). Pass a PRNG `key` or explicit
    `noise` [N, L]. Returns kept [N, L_keep, D] (in shuffled order), mask [N, L] float32
    (1 = removed, original order) and ids_restore [N, L] int32, with L_keep = int(L*(1-ratio)).
    """
    n, length, _ = tokens.shape
    keep = num_kept(length, mask_ratio)
    if noise is None:
        if key is None:
            raise ValueError("random_masking needs a PRNG key or explicit noise")
        noise = jax.random.uniform(key, (n, length))
    ids_shuffle = jnp.argsort(noise, axis=1)  # ascending: small noise is kept
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    ids_keep = ids_shuffle[:, :keep]
    kept = jnp.take_along_axis(tokens, ids_keep[:, :, None], axis=1)
    mask = jnp.ones((n, length), jnp.float32).at[:, :keep].set(0.0)
    mask = jnp.take_along_axis(mask, ids_restore, axis=1)
    return kept, mask, ids_restore


def unshuffle(kept: jax.Array, fill: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """Append `fill` [N, L - L_keep, D] to `kept` and put every token back to its original slot."""
    x = jnp.concatenate([kept, fill.astype(kept.dtype)], axis=1)
    return jnp.take_along_axis(x, ids_restore[:, :, None], axis=1)
