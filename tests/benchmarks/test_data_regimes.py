"""The online-vs-store benchmark runs at a tiny size and its numbers are consistent."""

import json
import subprocess
import sys

from testutil import REPO


def test_regimes_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "regimes.json"
    args = "--slides 2 --side 2048 --tiles-per-slide 4 --batches 1 --variety 400".split()
    cmd = [sys.executable, "benchmarks/data_regimes.py", *args, "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    (plain,) = result["builds"]
    assert plain["tiles"] == 8 and plain["bytes_per_tile"] > 1000 and plain["beam_workers"] == 0
    for regime in ("online", "store"):
        rate = result["pipeline"][regime]
        assert rate["samples_per_s"] > 0 and rate["per_cpu_s"] > 0
    ratio = result["pipeline"]["store"]["per_cpu_s"] / result["pipeline"]["online"]["per_cpu_s"]
    assert abs(result["store_over_online_per_cpu_s"] - ratio) < 1e-9
    online, store = result["variety"]["online"], result["variety"]["store"]
    assert store["distinct_locations"] == 8  # 400 samples over an 8-tile store
    # Online locations are continuous: nearly every sample is a new place, in fewer grid cells.
    assert 390 <= online["distinct_locations"] <= 400
    assert 8 < online["distinct_cells"] <= online["distinct_locations"]
