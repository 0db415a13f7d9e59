import zlib

import cv2
import numpy as np
import pytest

from pathfm.data.masking import batch_masks, block_mask, mask_upperbound
from pathfm.data.pipeline import MASK_STREAM, AddBlockMasks

GRID = (14, 14)
N = GRID[0] * GRID[1]


def small_component_fraction(masks: np.ndarray) -> float:
    """Share of masked patches in 4-connected components smaller than 4 patches."""
    small = total = 0
    for m in masks:
        _, labels = cv2.connectedComponents(m.reshape(GRID).astype(np.uint8), connectivity=4)
        sizes = np.bincount(labels.ravel())[1:]
        small += sizes[sizes < 4].sum()
        total += sizes.sum()
    return small / total


def test_shapes_counts_and_stratified_ratios():
    rng = np.random.default_rng(0)
    n_images = 32
    for _ in range(20):
        masks = batch_masks(n_images, GRID, 0.5, (0.1, 0.5), rng=rng)
        assert masks.dtype == bool and masks.shape == (n_images, N)
        counts = masks.sum(1)
        masked = np.sort(counts[counts > 0])
        assert len(masked) == int(n_images * 0.5)
        # Image i targets int(N * r_i), r_i in bin i of linspace(0.1, 0.5, 17); blocks never
        # overshoot, so the sorted counts sit below the sorted bin tops (and above 0).
        tops = np.array([int(N * p) for p in np.linspace(0.1, 0.5, 17)[1:]])
        assert (masked <= tops).all()
        assert counts.sum() <= mask_upperbound(n_images, N, 0.5, (0.1, 0.5))
    # The masked images are shuffled among the batch, not always the first ones.
    assert not (masks[:16].any(1)).all()


def test_block_mask_never_overshoots_and_mostly_hits_the_target():
    rng = np.random.default_rng(1)
    targets = rng.integers(4, 99, 300)
    counts = np.array([block_mask(GRID, int(n), rng, max_num_patches=98).sum() for n in targets])
    assert (counts <= targets).all() and (counts > 0).all()
    # No exact-count guarantee (as DINOv2): a run stops when 10 tries add nothing. Targets below
    # min_num_patches can even stay empty (a block must fit the budget after rounding).
    assert (counts == targets).mean() > 0.8 and (targets - counts).mean() < 0.5


def test_deterministic_per_rng():
    a = batch_masks(8, GRID, rng=np.random.default_rng(7))
    b = batch_masks(8, GRID, rng=np.random.default_rng(7))
    c = batch_masks(8, GRID, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_masks_are_blocks_not_scattered_patches():
    rng = np.random.default_rng(2)
    masks = np.concatenate([batch_masks(32, GRID, rng=rng) for _ in range(10)])
    masks = masks[masks.any(1)]
    # Only final partial fills (budget < 4) and 1x3 rounding give components below 4 patches.
    assert small_component_fraction(masks) < 0.05
    scattered = np.stack([rng.permutation(m) for m in masks])
    assert small_component_fraction(scattered) > 0.3


def test_block_shapes_follow_the_log_uniform_aspect_range():
    # min_num_patches = target = 12: every try has area 12, aspect in [0.3, 1/0.3], rounded.
    # Masks that are one rectangle must be 3x4, 2x6 or their transposes (1x12 needs aspect 1/12).
    rng = np.random.default_rng(3)
    shapes = set()
    for _ in range(300):
        m = block_mask(GRID, 12, rng, min_num_patches=12)
        rows, cols = np.nonzero(m)
        h, w = int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1
        if h * w == m.sum() == 12:
            shapes.add((h, w))
    assert shapes and shapes <= {(3, 4), (4, 3), (2, 6), (6, 2)}
    assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)


def _host_batch(b: int) -> dict[str, np.ndarray]:
    return {"global_crops": np.zeros((b, 2, 1, 1, 3), np.uint8), "index": np.arange(b) + 40}


def test_one_group_is_the_stream_from_before_groups():
    # Resumed runs rely on it: one collate draw over the host batch's 2B crops, crop-major.
    masks = AddBlockMasks(GRID, 0.5, (0.1, 0.5), 3)(_host_batch(6))["masks"]  # [6, 2, N]
    assert masks.shape == (6, 2, N)
    assert zlib.crc32(np.packbits(masks).tobytes()) == 2426598653  # the masks before `groups`
    rng = np.random.default_rng([3, MASK_STREAM, 40])
    expected = batch_masks(12, GRID, 0.5, (0.1, 0.5), rng).reshape(2, 6, N).swapaxes(0, 1)
    np.testing.assert_array_equal(masks, expected)


def test_each_group_of_samples_gets_its_own_draw_within_its_bound():
    # As DINOv2's per-GPU collate: group g = samples 2g, 2g+1, its 4 crops drawn crop-major.
    groups, b = 4, 8
    masks = AddBlockMasks(GRID, 0.5, (0.1, 0.5), 3, groups=groups)(_host_batch(b))["masks"]
    rng = np.random.default_rng([3, MASK_STREAM, 40])
    for g in range(groups):
        drawn = batch_masks(4, GRID, 0.5, (0.1, 0.5), rng).reshape(2, 2, N).swapaxes(0, 1)
        np.testing.assert_array_equal(masks[2 * g : 2 * g + 2], drawn)
        assert masks[2 * g : 2 * g + 2].sum() <= mask_upperbound(4, N, 0.5, (0.1, 0.5))
        assert masks[2 * g : 2 * g + 2].any(-1).sum() == 2  # int(4 x 0.5) masked crops each
    with pytest.raises(ValueError, match="does not split into 3 groups"):
        AddBlockMasks(GRID, 0.5, (0.1, 0.5), 3, groups=3)(_host_batch(b))
