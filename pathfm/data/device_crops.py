"""DINO's multi-crop cut on the accelerator: RandomResizedCrop, flips and quarter turns.

With ``crops.geometry_on_device=True`` the host reads a patch and only draws each view's crop box
and orientation (``pathfm.data.augment.DinoMultiCrop``, the same draws as the host crops); the
jitted step cuts the views here, then colours them (``pathfm.data.device_augment``). The host
then sends one uint8 patch per sample instead of 2 global and n local crops (150 KB instead of
521 KB for 224 px patches and DINO's 2 x 224 + 8 x 96 crops) and skips the resizes, about a third
of its time per sample.

The resize is PIL's ``Image.resize(BICUBIC)`` of the cropped box (torchvision's
``RandomResizedCrop(interpolation=BICUBIC)`` on PIL images, as facebookresearch/dino
``main_dino.py`` ``DataAugmentationDINO`` uses for every crop): Keys' cubic with a = -0.5, widened
by the shrink factor when shrinking (antialiased), weights normalised over the pixels inside the
box (PIL ``Resample.c`` ``precompute_coeffs``). Per axis that is a [S, P] matrix, so a view is two
matmuls. PIL rounds and clips to uint8 after each axis; here the result stays float32, clipped
to [0, 1] once: 0.3 grey levels from PIL on average, a few at most where PIL clips an overshoot
between its two passes. The host path (OpenCV, ``pathfm.data.augment.resize``) differs
from PIL by about a grey level as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pathfm.data.augment import transpose_flips

_CUBIC_A = -0.5  # PIL's bicubic (OpenCV's INTER_CUBIC uses -0.75)
_CUBIC_SUPPORT = 2.0


def bicubic(t: jax.Array) -> jax.Array:
    """Keys' cubic convolution kernel with a = -0.5 (PIL ``bicubic_filter``)."""
    t = jnp.abs(t)
    a = _CUBIC_A
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = (((t - 5.0) * t + 8.0) * t - 4.0) * a
    return jnp.where(t < 1.0, near, jnp.where(t < _CUBIC_SUPPORT, far, 0.0))


def resize_weights(start: jax.Array, length: jax.Array, in_size: int, out_size: int) -> jax.Array:
    """[out_size, in_size] float32: PIL's antialiased bicubic resampling of the input rows
    [start, start + length) to ``out_size`` rows, as a matrix (zero outside the box)."""
    start, length = jnp.asarray(start, jnp.float32), jnp.asarray(length, jnp.float32)
    scale = length / out_size
    stretch = jnp.maximum(scale, 1.0)  # the kernel widens when shrinking (antialias)
    centers = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale  # [S]
    pixels = jnp.arange(in_size, dtype=jnp.float32)  # [P]
    w = bicubic((pixels[None, :] + 0.5 - centers[:, None]) / stretch)
    w = jnp.where((pixels >= start) & (pixels < start + length), w, 0.0)
    return w / jnp.sum(w, axis=1, keepdims=True)  # the nearest pixel always has weight > 0.5


def cut_view(patch: jax.Array, box: jax.Array, orient: jax.Array, size: int) -> jax.Array:
    """One view: uint8 patch [P, P, 3], int box (top, left, h, w), int orient (hflip, vflip, k)
    -> float32 [size, size, 3] in [0, 1]: the box resized to ``size``, flipped, then turned k
    quarter turns counter-clockwise (``np.rot90``), as ``DinoMultiCrop._augment`` does."""
    top, left, h, w = box[0], box[1], box[2], box[3]
    rows = resize_weights(top, h, patch.shape[0], size)  # [S, P]
    cols = resize_weights(left, w, patch.shape[1], size)  # [S, P]
    x = patch.astype(jnp.float32)
    hp = jax.lax.Precision.HIGHEST  # no bf16/TF32 passes: pixel values need 8+ bits
    x = jnp.einsum("oi,ijc->ojc", rows, x, precision=hp)
    x = jnp.einsum("pj,ojc->opc", cols, x, precision=hp)
    transpose, h_flip, v_flip = transpose_flips(orient[0] != 0, orient[1] != 0, orient[2])
    x = jnp.where(transpose, jnp.swapaxes(x, 0, 1), x)
    x = jnp.where(h_flip, x[:, ::-1], x)
    x = jnp.where(v_flip, x[::-1], x)
    return jnp.clip(x / 255.0, 0.0, 1.0)


def cut_multicrop(
    patches: jax.Array, boxes: jax.Array, orient: jax.Array, global_size: int, local_size: int
) -> tuple[jax.Array, jax.Array]:
    """A DINO batch from patches uint8 [B, P, P, 3], boxes [B, V, 4] and orientations [B, V, 3]
    (2 global views, then V - 2 local) -> float32 in [0, 1]: global [B, 2, G, G, 3] and local
    [B, V - 2, L, L, 3]. Per sample, so a batch-sharded input needs no communication."""

    def views(patch, box, orient, size):
        return jax.vmap(lambda b, o: cut_view(patch, b, o, size))(box, orient)

    per_sample = jax.vmap(views, in_axes=(0, 0, 0, None))
    global_views = per_sample(patches, boxes[:, :2], orient[:, :2], global_size)
    local_views = per_sample(patches, boxes[:, 2:], orient[:, 2:], local_size)
    return global_views, local_views
