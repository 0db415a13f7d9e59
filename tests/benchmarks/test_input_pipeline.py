"""The input-pipeline benchmark runs at a tiny size and its ratios are consistent."""

import json
import subprocess
import sys

from testutil import REPO

from pathfm.config import base_config
from pathfm.data.workers import resolve_read_threads


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
        "--crops",
        "device",  # the host placement is the same loop with one config key (and takes 10 s)
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
        assert abs(r["b_over_d"] - r["b_pathfm"] / r["d_decode_floor"]) < 1e-9
        for peer in ("tiffslide", "cucim"):  # absent (None) where not installed
            assert (r[peer] is None) == (r[f"b_over_{peer}"] is None) == (not result["peers"][peer])
            if r[peer] is not None:
                assert abs(r[f"b_over_{peer}"] - r["b_pathfm"] / r[peer]) < 1e-9
    scales = {(r["slide"], r["mpp"]): r["decode_scale"] for r in result["readers"]}
    assert scales[("CMU-1-Small-Region.svs", 1.0)] == 2 and scales[("synthetic_4x", 0.5)] == 2
    assert scales[("synthetic_2x", 0.25)] == 1  # native resolution: full decode
    assert {r["crops"] for r in result["pipeline"]} == {"device"}
    assert [r["workers"] for r in result["pipeline"]][:3] == [0, 1, 2]
    assert result["pipeline_projected_16_cores"]["device"]["measured"] is False
    assert all(r["samples_per_s"] > 0 for r in result["pipeline"])
    b = [r["b_pathfm"] for r in result["readers"] if r["slide"].startswith("synthetic")]
    mix = result["reader_over_the_pipeline_mix"]  # the harmonic mean: the uniform mix's rate
    assert min(b) < mix < max(b) and abs(mix - len(b) / sum(1 / x for x in b)) < 1e-6
    for r in result["pipeline"]:
        assert r["b_mix_adjacent"] > 0  # (b) over the same mix, timed next to the row
        assert abs(r["c_over_b_per_core"] - r["per_core"] / r["b_mix_adjacent"]) < 1e-9
        # data.read_threads="auto": none in a worker with one core (or less) to itself
        auto = resolve_read_threads(base_config(), r["workers"], cores=result["cores"]).threads
        assert r["read_threads"] == auto and (1 <= auto <= 4 if r["workers"] == 0 else auto >= 0)
        assert auto == 0 or r["workers"] < result["cores"] - 1
    assert "(c) pipeline" in done.stdout
