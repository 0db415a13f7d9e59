"""Training-step speed of the paper set-ups: step time, images/s, FLOPs and MFU, with options.

    python benchmarks/train_step.py --out train_step.json                  # the papers' sizes
    python benchmarks/train_step.py --compare model.attention=explicit,dot_product \\
        --compare model.remat=none,block --out train_step.json            # a matrix of options
    python benchmarks/train_step.py --tiny --steps 2 --out tiny.json      # CPU test sizes

For each set-up (DINO ViT-S/16 with 2x224 + 8x96 crops, DINOv2 ViT-L/14 with 4 registers, MAE
ViT-L/16, at the papers' per-device batch sizes) and each variant (the product of the
`--compare` lists; the first is the baseline the others are compared with), it compiles the real
jitted step of `pathfm.train.build.build_setup` and reports, on a synthetic device-resident batch
(input excluded): the median step time over `--steps` steps after `--warmup`, images per second
per device, XLA's FLOPs per step and device, model FLOPs utilisation against the device's peak
bf16 rate (null where unknown, as on CPUs) and XLA's temporary memory. Model FLOPs are the XLA
count of the set-up with explicit attention and no rematerialisation, so recomputation and cuDNN
custom calls (which XLA counts as zero) do not distort MFU. Then, for the baseline variant, the
same step fed by the real grain pipeline on synthetic slides (input included): step time and the
fraction of it spent waiting for input. Prints tables and writes JSON (after every set-up).
Matmuls run in bfloat16 unless `--set model.dtype=float32`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import ml_collections
import numpy as np
from common import (
    apply_overrides,
    device_batch,
    input_pipeline,
    load_config,
    machine_name,
    train_with_input,
)
from flops import analytic_step_flops, peak_flops, xla_flops

from pathfm import parallel
from pathfm.config import validate
from pathfm.data.pipeline import AddBlockMasks
from pathfm.train.build import build_setup


@dataclasses.dataclass(frozen=True)
class SetUp:
    """A paper experiment at its per-device batch size."""

    config: str
    per_device_batch: int
    about: str


SETUPS = {
    "dino_vits16": SetUp(
        "configs/campanella_dino_vits16.py", 90, "DINO ViT-S/16, 2x224 + 8x96 (Campanella: 90/GPU)"
    ),
    "dinov2_vitl14": SetUp(
        "configs/kaiko_dinov2_vitl14_reg4.py", 32, "DINOv2 ViT-L/14 reg4, 2x224 + 8x98 (32/GPU)"
    ),
    "mae_vitl16": SetUp(
        "configs/campanella_mae_vitl16.py", 180, "MAE ViT-L/16, 224, mask 0.75 (Campanella: 180)"
    ),
}
REPO = Path(__file__).resolve().parents[1]
TINY_BATCH = 4  # per device, on each config's `:quick` variant
MODEL_FLOPS_VARIANT = ("model.attention=explicit", "model.remat=none")


def variants(compare: list[str]) -> list[tuple[str, ...]]:
    """Every combination of `key=v1,v2` lists, as tuples of `key=value` overrides."""
    axes = []
    for item in compare:
        key, _, values = item.partition("=")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return list(itertools.product(*axes)) or [()]


def variant_name(overrides: tuple[str, ...]) -> str:
    return " ".join(o.split(".")[-1] for o in overrides) or "default"


def setup_config(name: str, tiny: bool, sets: list[str], overrides=()) -> ml_collections.ConfigDict:
    """The set-up's config at its per-device batch over all devices, with the overrides."""
    setup = SETUPS[name]
    config = load_config(str(REPO / setup.config) + (":quick" if tiny else ""), [])
    config.batch_size = (TINY_BATCH if tiny else setup.per_device_batch) * jax.device_count()
    config.model.dtype = "bfloat16"
    config.monitor.every_steps = 0
    apply_overrides(config, [*sets, *overrides])
    validate(config, jax.device_count())
    return config


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 views (and DINOv2 block masks) shaped as this host's pipeline batches."""
    rng = np.random.default_rng(seed)
    b, cr = config.batch_size // jax.process_count(), config.crops
    pixels = lambda *shape: rng.integers(0, 256, (b, *shape, 3), np.uint8)
    g, n, s = cr.global_size, cr.n_local, cr.local_size
    if config.method == "mae":
        return {"images": pixels(g, g)}
    batch = {"global_crops": pixels(2, g, g), "local_crops": pixels(n, s, s)}
    if config.method == "dinov2":
        grid = (g // config.model.patch_size,) * 2
        masks = AddBlockMasks(
            grid,
            config.dinov2.mask_probability,
            tuple(config.dinov2.mask_ratio),
            seed,
            groups=jax.local_device_count(),  # as the pipeline: one draw per device's shard
        )
        batch = masks({**batch, "index": np.zeros(b, np.int64)})
        del batch["index"]
    return batch


def measure_step(config: ml_collections.ConfigDict, steps: int, warmup: int) -> dict:
    """Compile the jitted step, count its FLOPs and time it on a device-resident batch. The
    result holds the executable and the state under `_run`, for the input-included run."""
    devices = jax.device_count()
    mesh = parallel.mesh_from_config(config.mesh)
    setup = build_setup(config, mesh)
    state, rng = setup.fresh_state(), setup.step_rng
    batch = device_batch(synthetic_batch(config), setup.method.batch_keys, mesh)
    start = time.perf_counter()
    compiled = setup.step.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    for _ in range(warmup):
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    per_device = config.batch_size // devices
    return {
        "per_device_batch": per_device,
        "global_batch": config.batch_size,
        "compile_s": compile_s,
        "step_ms": 1000 * step_s,
        "step_ms_min": 1000 * min(times),
        "images_per_s_per_device": per_device / step_s,
        "xla_flops": xla_flops(compiled),
        "analytic_flops": analytic_step_flops(config, devices),
        "temp_mib": memory.temp_size_in_bytes / 2**20 if memory is not None else None,
        "loss": float(metrics["loss"]),
        "_run": (compiled, state, rng, mesh, setup.method.batch_keys),
    }


def model_flops(name: str, args, rows: list[dict]) -> float:
    """XLA's FLOPs of the set-up with explicit attention and no remat: from a measured variant
    when one is that, else from compiling it (without running it)."""
    for row in rows:
        if "xla_flops" in row and set(MODEL_FLOPS_VARIANT) <= set(row["effective"]):
            return row["xla_flops"]
    config = setup_config(name, args.tiny, args.set, MODEL_FLOPS_VARIANT)
    mesh = parallel.mesh_from_config(config.mesh)
    setup = build_setup(config, mesh)
    state = setup.restore_target()  # shapes and shardings: nothing allocated
    batch = device_batch(synthetic_batch(config), setup.method.batch_keys, mesh)
    return xla_flops(setup.step.lower(state, batch, setup.step_rng).compile())


def measure_input(row: dict, run: tuple, config, steps: int, workdir: str) -> dict:
    """The measured executable fed by the real grain pipeline (input included)."""
    compiled, state, rng, mesh, keys = run
    data, _ = input_pipeline(config, workdir)()
    state, seconds, waited = train_with_input(compiled, state, data, keys, mesh, rng, steps)
    step_ms = 1000 * seconds / steps
    return {
        "setup": row["setup"],
        "variant": row["variant"],
        "num_workers": config.data.num_workers,
        "step_ms": step_ms,
        "images_per_s_per_device": row["per_device_batch"] / (seconds / steps),
        "input_wait_frac": waited / seconds,
        "slowdown_vs_synthetic": step_ms / row["step_ms"],
    }


def run_setup(name: str, args, peak: float | None, workdir: str) -> tuple[list, list]:
    """Every variant of one set-up; the first that runs (the baseline) also with its input.
    Each variant's state is released before the next one is built. With `--budget-s`, a
    variant after the first starts only if it would end within the budget, taking as long as the
    last one (build, compile and steps); the others are recorded as skipped."""
    rows, inputs, start, last = [], [], time.perf_counter(), 0.0
    for overrides in variants(args.compare):
        row = {"setup": name, "about": SETUPS[name].about, "variant": variant_name(overrides)}
        row["overrides"] = list(overrides)
        rows.append(row)
        if args.budget_s is not None and len(rows) > 1:
            if time.perf_counter() - start + last > args.budget_s:
                row["skipped"] = f"would end past the set-up's --budget-s {args.budget_s:g}"
                continue
        began = time.perf_counter()
        try:
            config = setup_config(name, args.tiny, args.set, overrides)
            m = config.model
            row["effective"] = [f"model.attention={m.attention}", f"model.remat={m.remat}"]
            row["dtype"] = m.dtype
            measured = measure_step(config, args.steps, args.warmup)
        except Exception as e:  # one failing variant (a kernel the backend lacks) is a result
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {e}"
            continue
        finally:
            last = time.perf_counter() - began
        run = measured.pop("_run")
        row.update(measured)
        if name in args.input and not inputs:
            config.data.num_workers = args.workers
            try:
                inputs.append(measure_input(row, run, config, args.input_steps, workdir))
            except Exception as e:
                traceback.print_exc()
                inputs.append({"setup": name, "variant": row["variant"], "error": str(e)})
        del run
    base = next((r for r in rows if "step_ms" in r), None)
    flops = model_flops(name, args, rows) if base is not None else None
    for row in rows:
        if "step_ms" in row:
            row["model_flops"] = flops
            row["mfu"] = flops / (row["step_ms"] / 1000) / peak if peak else None
            row["speedup_vs_baseline"] = base["step_ms"] / row["step_ms"]
    return rows, inputs


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_tables(rows: list[dict], inputs: list[dict]) -> None:
    head = ("set-up", "variant", "batch/dev", "step ms", "img/s/dev", "GFLOP/step", "MFU",
            "temp MiB", "vs base")  # fmt: skip
    lines = [head]
    for r in rows:
        if "error" in r or "skipped" in r:
            why = f"error: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            lines.append((r["setup"], r["variant"], why[:67]))
            continue
        lines.append((
            r["setup"], r["variant"], str(r["per_device_batch"]), _fmt(r["step_ms"], ".1f"),
            _fmt(r["images_per_s_per_device"], ".1f"), _fmt(r["xla_flops"] / 1e9, ".2f"),
            _fmt(r["mfu"] and 100 * r["mfu"], ".1f"), _fmt(r["temp_mib"], ".0f"),
            _fmt(r["speedup_vs_baseline"], ".2f"),
        ))  # fmt: skip
    if inputs:
        lines += [(), ("input included", "variant", "workers", "step ms", "img/s/dev",
                       "input wait", "vs synthetic")]  # fmt: skip
        for r in inputs:
            if "error" in r:
                lines.append((r["setup"], r["variant"], "error: " + r["error"][:60]))
                continue
            lines.append((
                r["setup"], r["variant"], str(r["num_workers"]), _fmt(r["step_ms"], ".1f"),
                _fmt(r["images_per_s_per_device"], ".1f"),
                f"{100 * r['input_wait_frac']:.0f}%", _fmt(r["slowdown_vs_synthetic"], ".2f"),
            ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines if len(line) > i) for i in range(len(head))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated names")
    parser.add_argument("--tiny", action="store_true", help="the configs' :quick CPU sizes")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--compare", action="append", default=[], metavar="KEY=V1,V2")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--input", default="all", help="set-ups to run with the real pipeline")
    parser.add_argument("--input-steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=-1, help="grain workers; -1: cores - 1")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="override the table")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="per set-up: start a variant only if it would end within this many "
                             "seconds, taking as long as the last (0: only the first)")  # fmt: skip
    parser.add_argument("--out", default="train_step.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.input_steps < 1:
        parser.error("need --steps >= 1, --warmup >= 0 and --input-steps >= 1")
    args.setups = args.setups.split(",")
    unknown = set(args.setups) - set(SETUPS)
    if unknown:
        parser.error(f"unknown set-ups {sorted(unknown)}; use some of {list(SETUPS)}")
    args.input = {"all": args.setups, "none": []}.get(args.input, args.input.split(","))
    if args.workers < 0:
        args.workers = max(0, (os.cpu_count() or 1) - 1) if not args.tiny else 0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops * 1e12 or peak_flops(kind)
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_name(),
        "device_kind": kind,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "peak_bf16_flops": peak,
        "tiny": args.tiny,
        "steps": args.steps,
        "compare": args.compare,
        "set": args.set,
        "results": [],
        "input": [],
    }
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.setups:
            rows, inputs = run_setup(name, args, peak, workdir)
            record["results"] += rows
            record["input"] += inputs
            with open(args.out, "w") as f:
                json.dump(record, f, indent=2)
    print(f"{record['machine']}; peak bf16 {_fmt(peak and peak / 1e12, '.0f')} TFLOP/s")
    print_tables(record["results"], record["input"])
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in record["results"] + record["input"]) else 0


if __name__ == "__main__":
    sys.exit(main())
