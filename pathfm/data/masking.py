"""iBOT block masks on the host, as DINOv2's `MaskingGenerator` and `collate_data_and_cast`.

NumPy only: this runs in the data pipeline. Masks are bool, True = the patch token is masked
(replaced by the mask token in the student). Neither function guarantees the exact target count:
like DINOv2, block placement stops when ten tries in a row add nothing, so a mask can undershoot
(never overshoot) its target.
"""

from __future__ import annotations

import math

import numpy as np


def block_mask(
    grid: tuple[int, int],
    n_mask_patches: int,
    rng: np.random.Generator,
    min_num_patches: int = 4,
    max_num_patches: float | None = None,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
) -> np.ndarray:
    """DINOv2 `MaskingGenerator(grid, ...)(n_mask_patches)`: bool [h, w] with <= n masked patches.

    Repeatedly adds one rectangle (area uniform in [min_num_patches, budget], aspect ratio
    log-uniform in [min_aspect, max_aspect = 1/min_aspect], top/left uniform, up to 10 tries) whose
    newly masked patches fit the remaining budget (capped by max_num_patches, default n); stops at
    the target or when a round of tries adds nothing (a target < min_num_patches may stay empty).
    """
    height, width = grid
    mask = np.zeros((height, width), dtype=bool)
    max_block = n_mask_patches if max_num_patches is None else max_num_patches
    log_aspect = (math.log(min_aspect), math.log(max_aspect or 1.0 / min_aspect))
    count = 0
    while count < n_mask_patches:
        budget = min(n_mask_patches - count, max_block)
        delta = 0
        for _ in range(10):
            # random.uniform(a, b) semantics: b may be below a once the budget runs low.
            target_area = min_num_patches + (budget - min_num_patches) * rng.random()
            aspect = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(target_area * aspect))
            w = round(math.sqrt(target_area / aspect))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                new = h * w - int(mask[top : top + h, left : left + w].sum())
                if 0 < new <= budget:
                    mask[top : top + h, left : left + w] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask


def batch_masks(
    n_images: int,
    grid: tuple[int, int],
    mask_probability: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    rng: np.random.Generator | None = None,
    max_num_patches: float | None = None,
) -> np.ndarray:
    """DINOv2 `collate_data_and_cast` masks: bool [n_images, h*w], crop-major like the crops.

    The first int(n_images * mask_probability) images get block masks whose target counts are
    int(N * r_i), r_i uniform in the i-th bin of linspace(*ratio_range, n_masked + 1); the rest are
    empty; the list is then shuffled. max_num_patches defaults to 0.5 * N (DINOv2's train.py).
    """
    rng = np.random.default_rng() if rng is None else rng
    n_tokens = grid[0] * grid[1]
    max_block = 0.5 * n_tokens if max_num_patches is None else max_num_patches
    n_masked = int(n_images * mask_probability)
    probs = np.linspace(*ratio_range, n_masked + 1)
    targets = [int(n_tokens * rng.uniform(probs[i], probs[i + 1])) for i in range(n_masked)]
    masks = [block_mask(grid, n, rng, max_num_patches=max_block) for n in targets]
    masks += [np.zeros(grid, dtype=bool)] * (n_images - n_masked)
    order = rng.permutation(n_images)
    return np.stack([masks[i] for i in order]).reshape(n_images, n_tokens)


def mask_upperbound(
    n_images: int,
    n_tokens: int,
    mask_probability: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
) -> int:
    """DINOv2 collate `upperbound`: sum_i int(N * bin_max_i) >= masked tokens of any batch.

    Any batch of one `batch_masks(n_images, ...)` call: image i gets at most its target
    int(N * r_i) <= int(N * bin_max_i) (blocks never overshoot). A static buffer size for
    gathering the masked tokens under jit (pad with weight 0; `pathfm.ssl.ibot_buffer`).
    """
    n_masked = int(n_images * mask_probability)
    probs = np.linspace(*ratio_range, n_masked + 1)
    return int(sum(int(n_tokens * p) for p in probs[1:]))
