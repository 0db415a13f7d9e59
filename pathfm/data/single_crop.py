"""MAE's augmentation: one RandomResizedCrop (scale 0.2-1, bicubic) and a horizontal flip.

Pathology flips and 90-degree rotations are optional, as in the multi-crop. Output stays uint8;
normalisation runs on the accelerator.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from pathfm.data.augment import random_resized_crop


@dataclasses.dataclass(frozen=True)
class SingleCrop:
    """image uint8 [H, W, 3] -> {"images": uint8 [size, size, 3]}."""

    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    rot90: bool = False

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = random_resized_crop(image, self.size, self.scale, self.ratio, rng)
        hflip, vflip = rng.random() < self.hflip_p, rng.random() < self.vflip_p
        if hflip or vflip:
            out = cv2.flip(out, -1 if hflip and vflip else (1 if hflip else 0))
        if self.rot90 and (k := int(rng.random() * 4)):
            out = np.ascontiguousarray(np.rot90(out, k))
        return {"images": out}
