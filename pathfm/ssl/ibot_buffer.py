"""iBOT on the masked patch tokens only: each device's masked tokens in a fixed-size buffer.

facebookresearch/dinov2 `dinov2/train/ssl_meta_arch.py` `SSLMetaArch.forward_backward` selects the
masked patch tokens (`mask_indices_list`, `n_masked_patches`) with `torch.index_select` into
`buffer_tensor_teacher` / `buffer_tensor_patch_tokens` of `upperbound` rows, applies the heads to
that buffer only, runs Sinkhorn-Knopp on its first `n_masked_patches` rows and weights the loss
with `masks_weight` (`dinov2/loss/ibot_patch_loss.py` `iBOTPatchLoss.forward_masked`);
`upperbound` comes from `dinov2/data/collate.py` `collate_data_and_cast` of each GPU's batch.

Here the same with static shapes, data-parallel: the [2B] sample-major rows of the global crops
([B*2] = sample, then view, as `pathfm.ssl.base.sample_major`) split into G contiguous groups of
R = 2B/G rows, one per device shard, and each group gathers its masked tokens into U rows (its own
`upperbound`): no token crosses devices (only Sinkhorn-Knopp's [K] sums and scalar counts are
all-reduced). Padded rows have weight 0 and `valid` False. A group with more than U masked tokens
is counted in `overflow`, never truncated silently.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pathfm.data.masking import mask_upperbound
from pathfm.ssl.dinov2_loss import ibot_mask_weights


class MaskedBuffer(NamedTuple):
    """Where each group's masked tokens go: G groups of U buffer rows."""

    index: jax.Array  # [G, U] int32: the token's position in its group's [R*N] flattened tokens
    valid: jax.Array  # [G, U] bool: a masked token (the first n_masked rows of each group)
    weights: jax.Array  # [G, U] float32: DINOv2's `masks_weight`, 1 / (masked tokens of its image)
    overflow: jax.Array  # [] int32: masked tokens beyond U, summed over groups (0 for valid masks)


def buffer_size(
    rows: int,
    n_tokens: int,
    mask_probability: float,
    ratio_range: tuple[float, float],
    size: int | str = "upperbound",
) -> int:
    """U, the buffer rows of a group of `rows` global crops with `n_tokens` patch tokens each.

    "upperbound": DINOv2's collate `upperbound` (`mask_upperbound(rows, ...)`), enough for masks
    drawn by one `batch_masks(rows, ...)` call per group (each image keeps to its bin's top);
    "all": rows * n_tokens, enough for any masks; an int: that many. Clipped to [1, rows*n_tokens].
    """
    every = rows * n_tokens
    if size == "upperbound":
        size = mask_upperbound(rows, n_tokens, mask_probability, tuple(ratio_range))
    elif size == "all":
        size = every
    elif not isinstance(size, int):
        raise ValueError(f"ibot buffer size {size!r}: use 'upperbound', 'all' or a number")
    return max(1, min(int(size), every))


def group_tokens(x: jax.Array, groups: int) -> jax.Array:
    """[2B, N, ...] sample-major rows -> [G, R*N, ...]: group g holds rows g*R .. (g+1)*R - 1,
    the samples of the g-th batch shard (batch-major, so a batch-sharded array stays in place)."""
    return x.reshape(groups, (x.shape[0] // groups) * x.shape[1], *x.shape[2:])


def masked_buffer(masks: jax.Array, groups: int, size: int) -> MaskedBuffer:
    """The buffer of bool masks [2B, N] (sample-major rows) for G groups of `size` rows.

    Within a group the masked tokens come first in row-major order (a stable sort of ~mask, the
    order of DINOv2's `mask_indices_list`); padded rows point at unmasked tokens and are invalid.
    """
    flat = group_tokens(masks.astype(bool), groups)  # [G, R*N]
    index = jnp.argsort(~flat, axis=-1, stable=True)[:, :size].astype(jnp.int32)  # [G, U]
    counts = jnp.sum(flat, axis=-1, dtype=jnp.int32)  # [G]
    valid = jnp.arange(size, dtype=jnp.int32)[None] < counts[:, None]  # [G, U]
    dense = group_tokens(ibot_mask_weights(masks), groups)  # [G, R*N], 0 where unmasked
    weights = jnp.where(valid, jnp.take_along_axis(dense, index, axis=-1), 0.0)
    overflow = jnp.sum(jnp.maximum(counts - size, 0))
    return MaskedBuffer(index, valid, weights, overflow)


def gather_tokens(tokens: jax.Array, buffer: MaskedBuffer) -> jax.Array:
    """Patch tokens [2B, N, D] (sample-major) -> the buffer [G, U, D] (`torch.index_select`).

    Padded rows hold the unmasked tokens their index points at, which the dense heads saw too:
    finite, weight 0, so they add exactly 0 to values and gradients. (Zero rows, DINOv2's
    padding, would not do here: the head's L2 normalisation has a NaN gradient at 0.)
    """
    grouped = group_tokens(tokens, buffer.index.shape[0])  # [G, R*N, D]
    return jnp.take_along_axis(grouped, buffer.index[..., None], axis=1)
