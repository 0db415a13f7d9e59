"""pathfm.data.host_memory: with glibc, freed sample-size buffers are reused, not faulted in
again page by page (the input pipeline's allocation pattern, in fresh processes)."""

import subprocess
import sys

import pytest

PATTERN = """
import resource, sys
import numpy as np
from pathfm.data.host_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def batch():  # per sample: decoded tiles, dropped; crops, held until the batch leaves
    held = []
    for _ in range(32):
        tiles = [np.ones(196_608, np.uint8) for _ in range(2)]
        held.append((np.ones(301_056, np.uint8), np.ones(221_184, np.uint8)))
        del tiles
    return held
for _ in range(3):
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    batch()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 320)
"""


def _faults_per_sample(mode):
    done = subprocess.run(
        [sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    kept, faults = done.stdout.split()
    return kept, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    kept, with_setting = _faults_per_sample("keep")
    _, default = _faults_per_sample("default")
    assert kept == "True"
    assert default > 50  # glibc's defaults: each sample faults its buffers in again (~130)
    assert with_setting < 1
