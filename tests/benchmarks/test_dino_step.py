"""The DINO step benchmark runs end to end at a tiny size and reports consistent numbers."""

import json
import subprocess
import sys

from testutil import REPO


def test_benchmark_runs_and_writes_json(tmp_path, synthetic_slide_dir):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "benchmarks/dino_step.py",
        "--config",
        "configs/dino_vits16.py:quick",
        "--steps",
        "2",
        "--out",
        str(out),
        "--set",
        f"data.slides={synthetic_slide_dir}",
        "--set",
        "model.depth=1",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("step_only_images_per_s", "input_only_images_per_s", "training_images_per_s"):
        assert result[key] > 0
    assert 0 <= result["input_wait_frac"] <= 1
    ratio = result["input_only_images_per_s"] / result["step_only_images_per_s"]
    assert abs(result["input_over_step"] - ratio) < 1e-9
    assert "input_over_step" in done.stdout
