"""Pieces the training benchmarks share: config loading (the command line's), the machine's name,
the real input pipeline on a config's slides (the training loop's), and the training loop with
its input wait measured."""

from __future__ import annotations

import ast
import os
import platform
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections

import pathfm.main
from pathfm import parallel
from pathfm.data import pipeline


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
    """`key=value` strings (dotted keys, Python literals or bare strings) set in place."""
    for item in overrides:
        key, _, raw = item.partition("=")
        *parents, leaf = key.split(".")
        target = config
        for p in parents:
            target = target[p]
        try:
            target[leaf] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            target[leaf] = raw


def load_config(path: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """The config of `file.py[:arg]` with `key=value` overrides, parsed as the command line
    parses `--config` and `--config.key=value`."""
    return pathfm.main.load_config(path, overrides)


def machine_name() -> str:
    """CPU model, core count and the JAX devices, for the benchmark record."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devices = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    return f"{cpu}, {os.cpu_count()} cores; JAX devices: {devices}"


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def input_pipeline(config: ml_collections.ConfigDict, workdir: str) -> Callable:
    """A function returning a fresh iterator of the real grain pipeline (slides of the config,
    or synthetic ones generated under `workdir`) already past its first batch, and that batch:
    grain's prefetch threads fill a buffer in the background, so every timing starts from an
    empty one."""
    sampler = pipeline.training_slides(config, workdir).sampler  # as the training loop builds it

    def fresh() -> tuple[Iterator, dict]:
        data = pipeline.build_train_iterator(config, sampler)
        return data, next(data)

    return fresh


def device_batch(batch: dict, keys: tuple[str, ...], mesh) -> dict[str, jax.Array]:
    """The method's fields of a host batch, split over the mesh's devices."""
    return parallel.shard_batch({k: batch[k] for k in keys}, mesh)


def train_with_input(step_fn, state, data: Iterator, keys, mesh, rng, steps: int):
    """`steps` training steps fed by `data` as the training loop feeds them (the next batch is
    fetched while the device still runs the previous step). Returns (state, seconds, seconds
    spent waiting for input)."""
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = device_batch(next(data), keys, mesh)
        waited += time.perf_counter() - t0
        state, metrics = step_fn(state, batch, rng)
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - start, waited
