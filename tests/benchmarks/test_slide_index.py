"""The slide-index benchmark runs at a tiny size and writes the JSON the issue asks for."""

import json
import subprocess
import sys

import numpy as np
from testutil import REPO

from pathfm.config import base_config
from pathfm.data.workers import resolve_read_threads

KEYS = {
    "slides", "build_s_per_slide_1w", "build_s_per_slide_2w", "disk_bytes_per_slide", "load_s",
    "rss_main_bytes", "rss_worker_bytes", "pickled_sampler_bytes", "draws_per_s",
}  # fmt: skip


def test_slide_index_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "slide_index.json"
    cmd = [
        sys.executable, "benchmarks/slide_index.py", "--slides", "16",
        "--build-sample", "4", "--pipeline-batch", "8", "--pipeline-batches", "1",
        "--pipeline-side", "2048",
        "--workdir", str(tmp_path / "work"), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["slides"] for r in result["runs"]] == [16]
    for run in result["runs"]:
        assert KEYS <= set(run)
        assert run["pickled_sampler_bytes"] < 2048 and run["workers_seen"] == 2
        assert 20_000 < run["disk_bytes_per_slide"] < 256 * 1024  # runs of a TCGA-like mask
        assert run["listed"] == [run["slides"], run["slides"]]  # manifest and recursive glob
    assert result["build"]["build_sample_slides"] == 4
    pipe = result["pipeline"]  # read threads resolved from "auto" for its workers on this host
    auto = resolve_read_threads(base_config(), pipe["pipeline_workers"]).threads
    assert pipe["pipeline_read_threads"] == auto and 0 <= auto <= 4
    assert result["pipeline_peak_rss_bytes_batch512"] > result["pipeline"]["pipeline_batch_bytes"]
    assert result["extrapolated"]["slides"] == 423_000


def test_tcga_like_masks_are_about_30_percent_tissue():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from slide_index import tcga_like_mask
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    fractions = [tcga_like_mask(seed).mean() for seed in range(4)]
    assert tcga_like_mask(0).shape == (2500, 3125)
    np.testing.assert_allclose(fractions, 0.3, atol=0.04)
    assert not np.array_equal(tcga_like_mask(0), tcga_like_mask(1))
