"""The training-step benchmark compares variants with sane numbers. Its three paper set-ups and
the input-included run at tiny sizes are checked in test_gpu_check.py, whose stages run them."""

import json

import pytest
from testutil import REPO


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.chdir(REPO)
    import train_step

    return train_step


def test_variants_are_compared_and_mfu_uses_the_plain_step(bench, tmp_path):
    out = tmp_path / "remat.json"
    argv = ["--tiny", "--setups", "mae_vitl16", "--steps", "1", "--warmup", "1", "--input", "none"]
    argv += ["--compare", "model.remat=none,block", "--peak-tflops", "1", "--out", str(out)]
    assert bench.main([*argv, "--set", "model.depth=1", "--set", "model.dtype=float32"]) == 0
    plain, remat = json.loads(out.read_text())["results"]
    assert (plain["variant"], remat["variant"]) == ("remat=none", "remat=block")
    assert remat["loss"] == pytest.approx(plain["loss"], rel=1e-5)  # same maths
    assert remat["xla_flops"] > plain["xla_flops"] == remat["model_flops"]  # recomputation
    assert remat["speedup_vs_baseline"] == pytest.approx(plain["step_ms"] / remat["step_ms"])
    assert remat["mfu"] == pytest.approx(plain["xla_flops"] / (remat["step_ms"] / 1e3) / 1e12)
