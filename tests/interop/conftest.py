"""Fixtures of the timm interop tests: real slide patches and random images."""

import numpy as np
import openslide
import pytest
from testutil import TEST_SLIDES

CMU = TEST_SLIDES / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def slide_patches() -> np.ndarray:
    """Four 224 px patches at 0.5 um/px from the real CMU-1-Small-Region H&E slide: the most
    tissue-rich (darkest) cells of a 224 px grid over its level 0."""
    with openslide.OpenSlide(str(CMU)) as slide:
        width, height = slide.dimensions
        image = np.asarray(slide.read_region((0, 0), 0, (width, height)).convert("RGB"))
    size = 224
    cells = [
        (y, x) for y in range(0, height - size + 1, size) for x in range(0, width - size + 1, size)
    ]
    darkness = [-image[y : y + size, x : x + size].mean() for y, x in cells]
    chosen = [cells[i] for i in np.argsort(darkness)[::-1][:4]]
    return np.stack([image[y : y + size, x : x + size] for y, x in chosen])


@pytest.fixture(scope="session")
def random_images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), np.uint8)
