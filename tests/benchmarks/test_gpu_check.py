"""The one-shot accelerator check: `benchmarks/gpu_check.sh --tiny` runs every stage on the CPU
and writes its JSON and markdown table; the report judges the goals only on real measurements."""

import json
import math
import os
import subprocess
import sys

import pytest
from testutil import REPO, xla_flags

SETUPS = {"dino_vits16", "dinov2_vitl14", "mae_vitl16"}


@pytest.fixture
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_report

    return gpu_report


def test_tiny_check_runs_every_stage_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import train_step

    out = tmp_path / "out"
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])  # the venv
    env = dict(os.environ, PATH=path)
    env["XLA_FLAGS"] = xla_flags()  # one CPU device, as on one GPU
    cmd = ["bash", str(REPO / "benchmarks/gpu_check.sh"), "--tiny", "--out", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["tiny"] and record["device_kind"] == "cpu" and record["peak_bf16_flops"] is None
    stages = {s["name"]: s for s in record["stages"]}
    assert set(stages) == {"probe", "slides", *SETUPS}
    assert all(s["status"] == "ok" and s["wall_s"] > 0 for s in stages.values())

    measured = [r for r in record["results"] if "step_ms" in r]
    assert {r["setup"] for r in measured} == SETUPS
    for r in measured:
        assert math.isfinite(r["step_ms"]) and r["step_ms"] > 0 and math.isfinite(r["loss"])
        assert math.isfinite(r["xla_flops"]) and r["xla_flops"] > 0 and r["mfu"] is None
        assert r["model_flops"] > 0 and r["compile_s"] > 0
    # DINO compares two attentions; the ViT-L set-ups run only their first variant (--budget-s 0)
    # and record the rest as skipped.
    dino = [r["variant"] for r in measured if r["setup"] == "dino_vits16"]
    assert dino == ["attention=explicit", "attention=dot_product"]
    skipped = [r for r in record["results"] if "skipped" in r]
    assert {r["setup"] for r in skipped} == {"dinov2_vitl14", "mae_vitl16"} and len(skipped) == 6

    (fed,) = record["input"]
    assert fed["setup"] == "dino_vits16" and fed["step_ms"] > 0 and fed["num_workers"] == 0
    assert 0 <= fed["input_wait_frac"] <= 1
    # Each stage's own train_step.py record (this run is also the tiny train-step benchmark's).
    analytic = {}
    for setup in SETUPS:
        (first, *_) = json.loads((out / f"{setup}.json").read_text())["results"]
        assert first["per_device_batch"] == train_step.TINY_BATCH and first["mfu"] is None
        assert 0 < first["step_ms_min"] <= first["step_ms"] and math.isfinite(first["loss"])
        expected = 1e3 * train_step.TINY_BATCH / first["step_ms"]
        assert first["images_per_s_per_device"] == pytest.approx(expected)
        # XLA adds the elementwise work (norms, softmax, AdamW) to the analytic matmul count.
        assert first["model_flops"] == first["xla_flops"] > 0
        assert 0.8 < first["xla_flops"] / first["analytic_flops"] < 2.0
        analytic[setup] = first["analytic_flops"]
    # DINOv2 runs the same ViT on the same crops as DINO, plus the iBOT head on masked tokens.
    assert analytic["dinov2_vitl14"] > analytic["dino_vits16"]
    assert (out / "slides").is_dir()  # made in the background, read by the input-included run

    goals = record["goals"]
    assert [(g["setup"], g["metric"]) for g in goals] == [
        ("mae_vitl16", "mfu"), ("dinov2_vitl14", "mfu"), ("dino_vits16", "mfu"),
        ("dino_vits16", "input_wait_frac"),
    ]  # fmt: skip
    assert all(g["status"] == "not measured" for g in goals)
    assert all(g["value"] is None for g in goals if g["metric"] == "mfu")

    table = (out / "gpu_check.md").read_text()
    assert "| set-up | variant | batch/dev | step ms |" in table and "**met**" not in table
    assert all(f"| {name} |" in table for name in SETUPS) and "input included" in table
    assert table.strip() in done.stdout  # printed at the end


def _stage(name, status="ok", rc=0, wall=10.0, limit=100):
    return f"{name}\t{status}\t{rc}\t{wall}\t{limit}\tlogs/{name}.log\n"


def _row(setup, variant, mfu, step_ms=50.0):
    return {
        "setup": setup, "variant": variant, "per_device_batch": 32, "step_ms": step_ms,
        "images_per_s_per_device": 640.0, "xla_flops": 7e13, "mfu": mfu, "temp_mib": 1000.0,
        "compile_s": 60.0,
    }  # fmt: skip


def test_goals_use_the_best_variant_and_never_a_missing_number(report, tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    (tmp_path / "stages.tsv").write_text(
        _stage("install", wall=80) + _stage("dino_vits16", "errors", 1)
        + _stage("dinov2_vitl14") + _stage("mae_vitl16", "timeout", 124, 100.0, 100)
    )  # fmt: skip
    dino = {
        "machine": "test host", "device_kind": "NVIDIA H200", "jax": "0.10.2",
        "peak_bf16_flops": 989e12, "results": [
            _row("dino_vits16", "attention=explicit", 0.30),
            _row("dino_vits16", "attention=cudnn", 0.37, 40.0),
            {"setup": "dino_vits16", "variant": "attention=x", "error": "XlaRuntimeError: boom"},
        ],
        "input": [{"setup": "dino_vits16", "variant": "attention=explicit", "step_ms": 52.0,
                   "num_workers": cores - 1, "images_per_s_per_device": 1700.0,
                   "input_wait_frac": 0.04, "slowdown_vs_synthetic": 1.04}],
    }  # fmt: skip
    dinov2 = {"results": [_row("dinov2_vitl14", "remat=none attention=explicit", 0.48)]}
    dinov2["input"] = []
    (tmp_path / "dino_vits16.json").write_text(json.dumps(dino))
    (tmp_path / "dinov2_vitl14.json").write_text(json.dumps(dinov2))
    argv = ["--dir", str(tmp_path), "--budget-s", "460", "--wall-s", "455"]
    assert report.main([*argv, "--meta", "jax_cuda_extra=cuda13"]) == 0
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["jax_cuda_extra"] == "cuda13" and record["device_kind"] == "NVIDIA H200"
    goals = {(g["setup"], g["metric"]): g for g in record["goals"]}
    assert goals["dino_vits16", "mfu"]["status"] == "met"  # the best variant: cudnn, 37%
    assert goals["dino_vits16", "mfu"]["variant"] == "attention=cudnn"
    assert goals["dinov2_vitl14", "mfu"]["status"] == "not met"
    mae = goals["mae_vitl16", "mfu"]  # timed out: no number, so not judged
    assert mae["status"] == "not measured" and mae["value"] is None
    assert goals["dino_vits16", "input_wait_frac"]["status"] == "met"
    table = capsys.readouterr().out
    assert "| mae_vitl16 | - | error: stage timeout after 100 s, no results |" in table
    assert "|  | attention=cudnn | 32 | 40.0 | 640 | 70.0 T | 37.0% | 1000 | 60.0 | - |" in table

    # Fewer workers than cores - 1: the input-wait goal is not judged.
    dino["input"][0]["num_workers"] = 0
    (tmp_path / "dino_vits16.json").write_text(json.dumps(dino))
    assert report.main(argv) == 0
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["goals"][3]["status"] == ("not measured" if cores > 1 else "met")
