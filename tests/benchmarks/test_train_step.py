"""The training-step benchmark runs the three paper set-ups at tiny sizes with sane numbers."""

import json
import math

import pytest
from testutil import REPO


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.chdir(REPO)
    import train_step

    return train_step


def test_three_setups_and_the_input_included_run(bench, tmp_path, synthetic_slide_dir, capsys):
    out = tmp_path / "train_step.json"
    argv = ["--tiny", "--steps", "2", "--warmup", "1", "--input", "dino_vits16"]
    argv += ["--input-steps", "2", "--set", "model.depth=1", "--out", str(out)]
    assert bench.main([*argv, "--set", f"data.slides={synthetic_slide_dir}"]) == 0
    record = json.loads(out.read_text())
    assert record["peak_bf16_flops"] is None  # a CPU: no peak, no MFU
    rows = {r["setup"]: r for r in record["results"]}
    assert set(rows) == {"dino_vits16", "dinov2_vitl14", "mae_vitl16"}
    for r in rows.values():
        assert r["per_device_batch"] == bench.TINY_BATCH and r["mfu"] is None
        assert 0 < r["step_ms_min"] <= r["step_ms"] and math.isfinite(r["loss"])
        assert r["images_per_s_per_device"] == pytest.approx(1e3 * bench.TINY_BATCH / r["step_ms"])
        # XLA adds the elementwise work (norms, softmax, AdamW) to the analytic matmul count.
        assert r["model_flops"] == r["xla_flops"] > 0
        assert 0.8 < r["xla_flops"] / r["analytic_flops"] < 2.0
    # DINOv2 runs the same ViT on the same crops as DINO, plus the iBOT head on patch tokens.
    assert rows["dinov2_vitl14"]["analytic_flops"] > rows["dino_vits16"]["analytic_flops"]
    (fed,) = record["input"]
    assert fed["setup"] == "dino_vits16" and fed["num_workers"] == 0
    assert fed["step_ms"] > 0 and 0 <= fed["input_wait_frac"] <= 1
    shown = capsys.readouterr().out
    assert "input included" in shown and "mae_vitl16" in shown


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
