"""Merges the stages of `benchmarks/gpu_check.sh` into one JSON and one markdown table.

    python benchmarks/gpu_report.py --dir gpu_check_out --budget-s 460 --wall-s 431

Reads `stages.tsv` (one line per stage: name, status, exit code, wall s, timeout s, log), the
`<set-up>.json` that `train_step.py` wrote for each set-up stage and `probe.json` (the JAX
devices), and writes `gpu_check.json` and `gpu_check.md` in the same folder; prints the markdown.
The goals are checked against the best measured variant of each set-up. No JAX import: it runs
whatever state the accelerator is in.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
from pathlib import Path

SETUPS = ("dino_vits16", "dinov2_vitl14", "mae_vitl16")
# (set-up, metric, target, comparison): MFU at least the target, input wait below it.
GOALS = (
    ("mae_vitl16", "mfu", 0.50, ">="),
    ("dinov2_vitl14", "mfu", 0.50, ">="),
    ("dino_vits16", "mfu", 0.35, ">="),
    ("dino_vits16", "input_wait_frac", 0.05, "<"),
)
COLUMNS = ("set-up", "variant", "batch/dev", "step ms", "img/s/dev", "XLA FLOP/step", "MFU",
           "temp MiB", "compile s", "input wait")  # fmt: skip


def read_stages(directory: Path) -> list[dict]:
    path = directory / "stages.tsv"
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    keys = ("name", "status", "rc", "wall_s", "timeout_s", "log")
    stages = [dict(zip(keys, row, strict=True)) for row in rows]
    for s in stages:
        s["rc"] = int(s["rc"]) if s["rc"] not in ("", "-") else None
        s["wall_s"] = float(s["wall_s"])
        s["timeout_s"] = float(s["timeout_s"]) if s["timeout_s"] not in ("", "-") else None
    return stages


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def goal_status(setup, metric, target, op, results, inputs, tiny, cores) -> dict:
    """One goal: the best measured value, the variant it came from and met / not met / not
    measured (with why)."""
    goal = {"setup": setup, "metric": metric, "target": target, "op": op}
    if metric == "mfu":
        measured = [r for r in results if r["setup"] == setup and "step_ms" in r]
        best = max(measured, key=lambda r: r["mfu"] or 0.0, default=None)
        why = "no variant ran to the end" if best is None else "no peak rate for this device"
    else:
        best = next((r for r in inputs if r["setup"] == setup and "step_ms" in r), None)
        why = "the input-included run did not run"
    goal["value"] = best[metric] if best else None
    goal["variant"] = best["variant"] if best else None
    if metric == "input_wait_frac" and best:
        goal["num_workers"] = best["num_workers"]
        if best["num_workers"] < cores - 1:
            why = f"{best['num_workers']} workers, not all {cores} host cores"
        else:
            why = None
    if tiny:
        goal["status"], goal["why"] = "not measured", "--tiny sizes on the CPU"
    elif goal["value"] is None or (metric == "input_wait_frac" and why):
        goal["status"], goal["why"] = "not measured", why
    else:
        met = goal["value"] >= target if op == ">=" else goal["value"] < target
        goal["status"] = "met" if met else "not met"
    return goal


def _fmt(value, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if value is None else format(value * scale, spec) + unit


def _si(value: float | None) -> str:
    """10.48e12 -> '10.5 T', as the FLOPs in docs/benchmarks.md."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value is not None and value >= scale:
            return f"{value / scale:.1f} {unit}"
    return _fmt(value, ".0f")


def _line(*cells: str) -> str:
    """A table row; a short one (a reason) is padded with empty cells."""
    return "| " + " | ".join(cells + ("",) * (len(COLUMNS) - len(cells))) + " |"


def markdown(record: dict) -> str:
    peak = _fmt(record.get("peak_bf16_flops"), ".0f", 1e-12)
    machine, jax_version = record.get("machine") or "?", record.get("jax") or "?"
    mode = "`--tiny` (CPU test sizes)" if record["tiny"] else "the papers' sizes, bf16"
    wall, budget = record["wall_s"], record["budget_s"]
    lines = [
        f"GPU check {record['date']}: {machine}; jax {jax_version}; peak bf16 {peak} TFLOP/s",
        "",
        f"{mode}; {wall:.0f} s of a {budget:.0f} s budget.",
        "",
        _line(*COLUMNS),
        "|" + "---|" * len(COLUMNS),
    ]
    shown = None
    for r in record["results"]:
        name, shown = (r["setup"] if r["setup"] != shown else ""), r["setup"]
        if "step_ms" not in r:
            why = f"error: {r['error']}" if "error" in r else f"skipped: {r.get('skipped')}"
            lines.append(_line(name, r["variant"], why[:90]))
            continue
        lines.append(_line(
            name, r["variant"], str(r["per_device_batch"]), _fmt(r["step_ms"], ".1f"),
            _fmt(r["images_per_s_per_device"], ".0f"), _si(r["xla_flops"]),
            _fmt(r["mfu"], ".1f", 100, "%"), _fmt(r["temp_mib"], ".0f"),
            _fmt(r["compile_s"], ".1f"), "-",
        ))  # fmt: skip
    for r in record["input"]:
        variant = f"input included ({r['variant']})"
        if "step_ms" not in r:
            lines.append(_line(r["setup"], variant, f"error: {r.get('error')}"[:90]))
            continue
        lines.append(_line(
            r["setup"], f"{variant}, {r['num_workers']} workers", "", _fmt(r["step_ms"], ".1f"),
            _fmt(r["images_per_s_per_device"], ".0f"), "-", "-", "-", "-",
            _fmt(r["input_wait_frac"], ".1f", 100, "%"),
        ))  # fmt: skip
    lines += ["", "Goals:", ""]
    for g in record["goals"]:
        what = "MFU" if g["metric"] == "mfu" else "input wait (all host cores)"
        value = _fmt(g["value"], ".1f", 100, "%")
        about = f" ({g['variant']})" if g["value"] is not None and g.get("variant") else ""
        status = f"**{g['status']}**" + (f" ({g['why']})" if g.get("why") else "")
        lines.append(
            f"- `{g['setup']}` {what} {g['op']} {100 * g['target']:.0f}%: {value}{about}: {status}"
        )
    stages = []
    for s in record["stages"]:
        limit = f"/{s['timeout_s']:.0f}" if s["timeout_s"] else ""
        stages.append(f"{s['name']} {s['status']} {s['wall_s']:.0f}{limit}")
    lines += ["", f"Stages (wall s / timeout s): {'; '.join(stages)}."]
    return "\n".join(lines) + "\n"


def build_record(directory: Path, args) -> dict:
    stages = read_stages(directory)
    probe = _load(directory / "probe.json") or {}
    record = {
        "date": datetime.date.today().isoformat(),
        "tiny": args.tiny,
        "budget_s": args.budget_s,
        "wall_s": args.wall_s,
        "host_cores": len(os.sched_getaffinity(0)),  # what `nproc` counts
        "machine": None,
        "device_kind": probe.get("device_kind"),
        "devices": probe.get("devices"),
        "jax": probe.get("jax"),
        "peak_bf16_flops": None,
        **dict(m.split("=", 1) for m in args.meta),
        "steps": None,
        "warmup": None,
        "stages": stages,
        "results": [],
        "input": [],
    }
    for stage in stages:
        if stage["name"] not in SETUPS:
            continue
        run = _load(directory / f"{stage['name']}.json")
        if run is None:  # killed (timed out) or failed before writing: the set-up has no rows
            why = f"stage {stage['status']} after {stage['wall_s']:.0f} s, no results"
            record["results"].append({"setup": stage["name"], "variant": "-", "error": why})
            continue
        for key in ("machine", "device_kind", "jax", "peak_bf16_flops", "steps", "warmup"):
            if run.get(key) is not None:
                record[key] = run[key]
        record["devices"] = run.get("devices", record["devices"])
        record["results"] += run["results"]
        record["input"] += run["input"]
    cores = record["host_cores"] or 1
    record["goals"] = [
        goal_status(*goal, record["results"], record["input"], args.tiny, cores) for goal in GOALS
    ]
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, help="gpu_check.sh's output folder")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--wall-s", type=float, required=True)
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    record = build_record(directory, args)
    (directory / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
    text = markdown(record)
    (directory / "gpu_check.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
