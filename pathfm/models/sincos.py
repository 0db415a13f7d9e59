"""Fixed 2D sin-cos position embeddings, as MAE's `util/pos_embed.get_2d_sincos_pos_embed`.

Channel order (D = embed_dim, divisible by 4; token k = row * w + col, row-major over the grid):
  [0,      D/4)   sin(col * omega)      <- the W (column, x) axis comes FIRST, as the reference's
  [D/4,    D/2)   cos(col * omega)         `np.meshgrid(grid_w, grid_h)` puts it in `grid[0]`
  [D/2,  3D/4)    sin(row * omega)
  [3D/4,    D)    cos(row * omega)
with omega_i = 1 / 10000^(i / (D/4)), i = 0 .. D/4 - 1. With `cls_token` a zero row is prepended.
"""

from __future__ import annotations

import numpy as np


def sincos_1d_pos_embed(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """[sin(pos * omega), cos(pos * omega)] -> [M, embed_dim]; MAE's 1d_sincos_..._from_grid."""
    if embed_dim % 2:
        raise ValueError(f"1D sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # [D/2]
    out = np.einsum("m,d->md", np.asarray(positions, np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d_pos_embed(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False
) -> np.ndarray:
    """Fixed 2D sin-cos embedding [(1 +) h * w, D] in float64 (W-axis channels first, see above).

    `grid_size` is `s` (an s x s grid, as the reference) or `(h, w)`; rows are in row-major order
    of the patch grid (the order of `patchify`), with a zero CLS row first when `cls_token`.
    """
    if embed_dim % 4:
        raise ValueError(f"2D sin-cos embedding needs embed_dim divisible by 4, got {embed_dim}")
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    grid_h = np.arange(h, dtype=np.float32)
    grid_w = np.arange(w, dtype=np.float32)
    cols, rows = np.meshgrid(grid_w, grid_h)  # each [h, w]; the reference's grid[0], grid[1]
    emb = np.concatenate(
        [sincos_1d_pos_embed(embed_dim // 2, cols), sincos_1d_pos_embed(embed_dim // 2, rows)],
        axis=1,
    )
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return emb
