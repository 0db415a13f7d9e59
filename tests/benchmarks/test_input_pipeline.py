"""The input-pipeline benchmark runs at a tiny size and its ratios are consistent."""

import json
import subprocess
import sys

from testutil import REPO


def test_input_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "input.json"
    cmd = [
        sys.executable,
        "benchmarks/input_pipeline.py",
        "--reads",
        "4",
        "--batches",
        "1",
        "--side",
        "2048",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    slides = {r["slide"] for r in result["readers"]}
    assert {"synthetic_2x", "synthetic_4x", "CMU-1-Small-Region.svs"} <= slides
    mpps = {r["mpp"] for r in result["readers"] if r["slide"] == "CMU-1-Small-Region.svs"}
    assert mpps == {0.5, 1.0, 2.0}  # a 0.499 um/px slide never upscales to 0.25
    for r in result["readers"]:
        assert r["a_openslide_pil"] > 0 and r["b_pathfm"] > 0 and r["d_decode_floor"] > 0
        assert abs(r["b_over_a"] - r["b_pathfm"] / r["a_openslide_pil"]) < 1e-9
    assert result["pipeline"][0]["workers"] == 1 and result["pipeline"][0]["samples_per_s"] > 0
    assert "(c) pipeline" in done.stdout
