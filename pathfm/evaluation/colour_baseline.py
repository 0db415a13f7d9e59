"""The colour-statistics baseline: what a classifier that sees only each patch's colours scores.

A task on which this baseline is far above chance measures colour, not the representation: any
features, even a random network's, would solve it. Features per patch (uint8 RGB [N, H, W, 3]):
a joint RGB histogram with `bins`^3 cells (pixel fractions), plus per-channel mean, standard
deviation and the 10/50/90th percentiles (scaled to [0, 1]). They are classified by the linear
probe of `pathfm.evaluation.linear_probe`, like any frozen features.
"""

from __future__ import annotations

import numpy as np


def colour_features(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """[N, bins^3 + 15] float32 colour statistics of uint8 images [N, H, W, 3]."""
    pixels = images.reshape(len(images), -1, 3)
    cells = (pixels.astype(np.int64) * bins) // 256  # [N, P, 3] in [0, bins)
    flat = (cells[..., 0] * bins + cells[..., 1]) * bins + cells[..., 2]
    hist = np.stack([np.bincount(f, minlength=bins**3) for f in flat]) / pixels.shape[1]
    x = pixels.astype(np.float32) / 255.0
    stats = [x.mean(1), x.std(1), *np.percentile(x, [10, 50, 90], axis=1)]
    return np.concatenate([hist, *stats], axis=1).astype(np.float32)
