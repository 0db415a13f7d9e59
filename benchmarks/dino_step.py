"""Is DINO pre-training input-bound or compute-bound? Three rates measured side by side.

    python benchmarks/dino_step.py --config configs/quickstart.py --steps 30 --out dino_step.json

(a) the jitted train step alone on a device-resident batch, (b) the grain online-patching input
pipeline alone, (c) the two together as the training loop runs them (input included). Prints
images/s for each, the ratio (b)/(a) (above 1: the input keeps up) and the input-wait fraction of
(c), and writes them as JSON. Overrides: `--set key=value` (e.g. `--set data.num_workers=2`).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

from pathfm import parallel
from pathfm.data import pipeline
from pathfm.train.setup import build_setup


def load_config(path: str, overrides: list[str]):
    """`get_config()` of a config file with `key=value` overrides applied."""
    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("bench_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
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
    return config


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


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def run(config, steps: int, workdir: str) -> dict:
    """The three measurements (after one warm-up step or batch each), as a dict."""
    mesh = parallel.mesh_from_config(config.mesh)
    setup = build_setup(config, mesh)
    method, state, step_fn, rng = setup.method, setup.fresh_state(), setup.step, setup.step_rng
    index = pipeline.build_slide_index(config, pipeline.resolve_slide_source(config, workdir))
    sampler = pipeline.build_sampler(config, index)

    def fresh_iterator():
        """A new iterator past its first batch: grain's prefetch threads fill a buffer in the
        background, so every timing starts from an empty one."""
        data = pipeline.build_train_iterator(config, sampler)
        return data, next(data)

    to_device = lambda b: parallel.shard_batch({k: b[k] for k in method.batch_keys}, mesh)
    images = steps * config.batch_size

    data, first = fresh_iterator()
    device_batch = to_device(first)
    state, metrics = step_fn(state, device_batch, rng)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, device_batch, rng)
    jax.block_until_ready(metrics)
    step_only = time.perf_counter() - start

    data, _ = fresh_iterator()
    start = time.perf_counter()
    for _ in range(steps):
        next(data)
    input_only = time.perf_counter() - start

    data, _ = fresh_iterator()
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = to_device(next(data))
        waited += time.perf_counter() - t0
        state, metrics = step_fn(state, batch, rng)
    jax.block_until_ready(metrics)
    together = time.perf_counter() - start

    step_rate, input_rate = _rate(images, step_only), _rate(images, input_only)
    return {
        "machine": machine_name(),
        "steps": steps,
        "batch_size": config.batch_size,
        "num_workers": config.data.num_workers,
        "step_only_images_per_s": step_rate,
        "input_only_images_per_s": input_rate,
        "training_images_per_s": _rate(images, together),
        "input_over_step": input_rate / step_rate,
        "input_wait_frac": waited / together,
        "step_ms": 1000 * step_only / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/quickstart.py")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="dino_step.json")
    args = parser.parse_args()
    config = load_config(args.config, args.set)
    with tempfile.TemporaryDirectory() as workdir:
        result = run(config, args.steps, workdir)
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.3f}" if isinstance(value, float) and not np.isnan(value) else value
        print(f"{key:<{width}}  {shown}")
    with open(args.out, "w") as f:
        json.dump({"config": args.config, "overrides": args.set, **result}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
