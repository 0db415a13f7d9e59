"""Paths and loaders shared by the tests."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# XLA's CPU backend without LLVM's optimisation passes compiles the tests' many tiny programs
# 1.4-1.6x faster; floating-point semantics are the same (no fast-math either way), so golden
# values hold as before. Runs of many steps (tests/evaluation/test_pretraining_helps.py) keep the
# default, where execution outweighs compilation.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden"
TEST_SLIDES = SHARED / "test-slides"


def golden(name: str):
    """A golden .npz computed by the official reference code (see ../shared/golden/README.md)."""
    path = GOLDEN / name
    if not path.exists():
        pytest.fail(f"golden file {path} is missing: the shared/ folder must sit beside the repo")
    return np.load(path)


def tiny_dino_config(**overrides):
    """The reference DINO config shrunk to a 2-block 32-wide ViT on 32/16 px crops."""
    from pathfm.config import base_config

    c = base_config()
    c.epochs, c.steps_per_epoch, c.batch_size, c.log_every_steps = 2, 3, 8, 1
    c.model.update(size="tiny", patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2)
    c.dino.update(out_dim=64, hidden_dim=32, bottleneck_dim=16, freeze_last_layer=1)
    c.optim.warmup_epochs = 1
    c.crops.update(global_size=32, local_size=16, n_local=2)
    c.data.update(patch_size=48, synthetic_size=2048, mpps=(0.5,), num_workers=0)
    c.monitor.update(every_steps=3, num_patches=16, batch_size=8)
    c.checkpoint.every_steps = 2
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def random_dino_batch(config, seed=0):
    """uint8 crops shaped like the input pipeline's batches."""
    rng = np.random.default_rng(seed)
    b, cr = config.batch_size, config.crops
    return {
        "global_crops": rng.integers(0, 256, (b, 2, cr.global_size, cr.global_size, 3), np.uint8),
        "local_crops": rng.integers(
            0, 256, (b, cr.n_local, cr.local_size, cr.local_size, 3), np.uint8
        ),
    }


# A quick-start run shrunk to seconds: the CLI tests start it as a user would.
TINY_CLI = [  # DINO: the behaviours tested do not depend on the method; its step compiles fastest
    "--config.method=dino",
    "--config.epochs=1", "--config.steps_per_epoch=40", "--config.batch_size=8",
    "--config.log_every_steps=1", "--config.checkpoint.every_steps=100",
    "--config.model.embed_dim=32", "--config.model.depth=1", "--config.model.num_heads=2",
    "--config.dino.out_dim=64", "--config.dino.hidden_dim=32", "--config.dino.bottleneck_dim=16",
    "--config.monitor.every_steps=0", "--config.crops.n_local=2", "--config.optim.warmup_epochs=0",
    "--config.dino.warmup_teacher_temp_epochs=0",
]  # fmt: skip


def cli_command(workdir, slides, *extra: str, config: str = "configs/quickstart.py") -> list[str]:
    """`python -m pathfm.main` of a tiny quick-start run on `slides` (extra keys override)."""
    return [
        sys.executable, "-m", "pathfm.main", "--config", config, "--workdir", str(workdir),
        f"--config.data.slides={slides}", *TINY_CLI, *extra,
    ]  # fmt: skip


def xla_flags(devices: int = 1) -> str:
    """XLA_FLAGS of a test process with `devices` CPU devices (1: a user's CPU run)."""
    count = f"--xla_force_host_platform_device_count={devices} " if devices > 1 else ""
    return count + FAST_COMPILE_FLAGS


def cli_env(cache_dir) -> dict[str, str]:
    """The environment of a CLI subprocess: one CPU device, a shared compilation cache."""
    env = dict(os.environ, XLA_FLAGS=xla_flags())
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def run_cli(args: list[str], cache_dir, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `python -m pathfm.main ...` (full argv in `args`) in the repository; text output."""
    return subprocess.run(
        args, cwd=REPO, env=cli_env(cache_dir), capture_output=True, text=True, timeout=timeout
    )


def batch_where(batch) -> np.ndarray:
    """int [B, 3]: each sample's (slide, x, y), where its patch came from."""
    return np.stack([batch["slide"], batch["x"], batch["y"]], axis=1)


def assert_same_batch(got, want, crops=("global_crops",)) -> None:
    """Two pipeline batches hold the same `crops` from the same places (slide, x, y)."""
    for key in crops:
        np.testing.assert_array_equal(got[key], want[key])
    np.testing.assert_array_equal(batch_where(got), batch_where(want))


def assert_iterator_state_restores(config, sampler) -> None:
    """A pipeline iterator restored from its state after one batch yields the next two batches
    of the uninterrupted one: the same crops from the same places."""
    from pathfm.data import pipeline

    it = pipeline.build_train_iterator(config, sampler)
    next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = pipeline.build_train_iterator(config, sampler)
    resumed.set_state(state)
    for want in expected:
        assert_same_batch(next(resumed), want, crops=("global_crops", "local_crops"))
