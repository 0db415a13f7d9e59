"""Shared fixtures. Eight CPU devices are emulated so sharded code paths run for real, and
compiled programs are cached on disk for the session: many tests compile the same tiny step."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="pathfm-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_slide_dir(tmp_path_factory) -> Path:
    """Four small synthetic H&E slides (2048 px, 0.25 um/px), generated once per test session."""
    from pathfm.data.synthetic import generate_synthetic_slides

    directory = tmp_path_factory.mktemp("synthetic_slides")
    generate_synthetic_slides(directory, n_slides=4, seed=0, width=2048, height=2048, mpp=0.25)
    return directory
