"""Is DINO pre-training input-bound or compute-bound? Three rates measured side by side.

    python benchmarks/dino_step.py --config configs/quickstart.py --steps 30 --out dino_step.json

(a) the jitted train step alone on a device-resident batch, (b) the grain online-patching input
pipeline alone, (c) the two together as the training loop runs them (input included). Prints
images/s for each, the ratio (b)/(a) (above 1: the input keeps up) and the input-wait fraction of
(c), and writes them as JSON. Overrides: `--set key=value` (e.g. `--set data.num_workers=2`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import numpy as np
from common import device_batch, input_pipeline, load_config, machine_name, rate, train_with_input

from pathfm import parallel
from pathfm.train.build import build_setup


def run(config, steps: int, workdir: str) -> dict:
    """The three measurements (after one warm-up step or batch each), as a dict."""
    mesh = parallel.mesh_from_config(config.mesh)
    setup = build_setup(config, mesh)
    method, state, step_fn, rng = setup.method, setup.fresh_state(), setup.step, setup.step_rng
    fresh_iterator = input_pipeline(config, workdir)
    keys = method.batch_keys
    images = steps * config.batch_size

    data, first = fresh_iterator()
    batch = device_batch(first, keys, mesh)
    state, metrics = step_fn(state, batch, rng)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, batch, rng)
    jax.block_until_ready(metrics)
    step_only = time.perf_counter() - start

    data, _ = fresh_iterator()
    start = time.perf_counter()
    for _ in range(steps):
        next(data)
    input_only = time.perf_counter() - start

    data, _ = fresh_iterator()
    state, together, waited = train_with_input(step_fn, state, data, keys, mesh, rng, steps)

    step_rate, input_rate = rate(images, step_only), rate(images, input_only)
    return {
        "machine": machine_name(),
        "steps": steps,
        "batch_size": config.batch_size,
        "num_workers": config.data.num_workers,
        "step_only_images_per_s": step_rate,
        "input_only_images_per_s": input_rate,
        "training_images_per_s": rate(images, together),
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
