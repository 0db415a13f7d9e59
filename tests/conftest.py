"""Shared fixtures. Eight CPU devices are emulated so sharded code paths run for real, XLA
compiles without LLVM's optimisation passes (testutil.FAST_COMPILE_FLAGS), and compiled programs
are cached on disk for the session: many tests compile the same tiny step."""

import os
import tempfile

from testutil import TEST_SLIDES, xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags(devices=8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="pathfm-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from pathlib import Path

import numpy as np
import openslide
import pytest

# The longest test files (minutes each on 2 cores), run first: with --no-loadscope-reorder
# (pytest.ini) pytest-xdist's --dist loadfile hands out files in collection order, so starting
# with these leaves the short files to even out the workers at the end instead of one worker
# finishing a long file alone. (By default xdist would order files by their number of tests.)
LONGEST_FIRST = (
    "evaluation/test_pretraining_helps.py",
    "benchmarks/test_gpu_check.py",
    "test_multiprocess.py",
    "train/test_sharding.py",
    "test_cli.py",
    "ssl/test_ibot_buffer.py",
    "train/test_train_from_store.py",
    "benchmarks/test_slide_index.py",
    "test_notebook.py",
    "test_eva.py",
)


def _rank(item) -> int:
    path = item.path.as_posix()
    return next(
        (i for i, name in enumerate(LONGEST_FIRST) if path.endswith("tests/" + name)),
        len(LONGEST_FIRST),
    )


def pytest_collection_modifyitems(config, items):
    """The LONGEST_FIRST files first, in that order; the rest as collected."""
    items.sort(key=_rank)  # stable: each file's tests keep their order


@pytest.fixture(scope="session")
def synthetic_slide_dir(tmp_path_factory) -> Path:
    """Four small synthetic H&E slides (2048 px, 0.25 um/px), generated once per test session."""
    from pathfm.data.synthetic import generate_synthetic_slides

    directory = tmp_path_factory.mktemp("synthetic_slides")
    generate_synthetic_slides(directory, n_slides=4, seed=0, width=2048, height=2048, mpp=0.25)
    return directory


@pytest.fixture(scope="session")
def slide_patches() -> np.ndarray:
    """Four 224 px patches at 0.5 um/px from the real CMU-1-Small-Region H&E slide: the most
    tissue-rich (darkest) cells of a 224 px grid over its level 0."""
    with openslide.OpenSlide(str(TEST_SLIDES / "CMU-1-Small-Region.svs")) as slide:
        width, height = slide.dimensions
        image = np.asarray(slide.read_region((0, 0), 0, (width, height)).convert("RGB"))
    size = 224
    cells = [
        (y, x) for y in range(0, height - size + 1, size) for x in range(0, width - size + 1, size)
    ]
    darkness = [-image[y : y + size, x : x + size].mean() for y, x in cells]
    chosen = [cells[i] for i in np.argsort(darkness)[::-1][:4]]
    return np.stack([image[y : y + size, x : x + size] for y, x in chosen])
