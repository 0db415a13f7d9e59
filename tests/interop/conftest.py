"""Fixtures of the timm interop tests: random images (real slide patches: tests/conftest.py)."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def random_images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), np.uint8)
