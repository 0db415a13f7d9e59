"""Acceptance of the evaluation stack: a tiny ViT pre-trained with DINO on the synthetic slides
beats the same architecture at random initialisation on the synthetic patch task (eva's linear
probe, balanced accuracy), and the slide-level MIL command runs end to end on its checkpoint.

The pre-training is the quick start's recipe (reference DINO hyper-parameters, a 4-block 64-wide
ViT) run for 900 steps with a 4x higher base lr and teacher momentum 0.99, which a run this
short needs: at the quick start's own 300 steps the linear probe does not yet beat random
initialisation (0.946 vs 0.958), at 900 steps it does (0.992 +- 0.004 vs 0.958 +- 0.004; 0.996
at 1,200).
"""

import json
import os
import subprocess
import sys

import pytest
from testutil import REPO

from pathfm.runs.evaluate import eval_config, evaluate

STEPS = 900


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, synthetic_slide_dir):
    """The command line on one CPU device (the tests' 8 emulated devices would slow it 6x)."""
    workdir = tmp_path_factory.mktemp("pretrained")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    keys = {
        "epochs": STEPS // 30,  # the quick start's pseudo-epochs are 30 steps
        "optim.lr": 2e-3,  # base lr per 256 images: peak 2.5e-4 at batch 32
        "dino.momentum_teacher": 0.99,
        "data.slides": synthetic_slide_dir,
        "monitor.every_steps": 0,
        "checkpoint.every_steps": STEPS,
        "log_every_steps": 100,
    }
    command = [
        *(sys.executable, "-m", "pathfm.main", "--config", "configs/quickstart.py"),
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in keys.items()),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def _probe(run, slides, workdir, random_init):
    c = eval_config()
    c.update(checkpoint=str(run), data_root=str(slides), random_init=random_init)
    c.protocols = ("linear_probe",)
    c.linear_probe.update(max_steps=2000, patience_steps=500, eval_every=100, seeds=(0, 1, 2))
    result = evaluate(c, workdir)["protocols"]["linear_probe"]
    return result["mean"]["balanced_accuracy"], result["std"]["balanced_accuracy"]


def test_dino_pretraining_beats_random_init_on_the_linear_probe(
    pretrained, synthetic_slide_dir, tmp_path
):
    trained, trained_std = _probe(pretrained, synthetic_slide_dir, tmp_path / "dino", False)
    random, random_std = _probe(pretrained, synthetic_slide_dir, tmp_path / "random", True)
    print(f"linear probe: DINO {trained:.3f} +- {trained_std:.3f}, random {random:.3f}")
    # a clear margin: half the random-init errors gone, and apart by 3 stds of both
    assert trained >= random + 0.5 * (1 - random)
    assert trained - 3 * trained_std > random + 3 * random_std


def test_mil_command_detects_tumour_slides_from_the_checkpoint(pretrained, tmp_path):
    out = tmp_path / "mil"
    command = [
        sys.executable,
        "-m",
        "pathfm.main",
        "--config",
        str(REPO / "configs/eval/mil.py") + ":quick",
        f"--config.checkpoint={pretrained}",
        f"--workdir={out}",
        "--config.synthetic.n_slides=24",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == ["normal", "tumor"] and len(results["slides"]) == 24
    assert results["n_failed"] == 0 and results["step"] == STEPS
    mil = results["protocols"]["mil"]
    assert len(mil["splits"]) == 5
    print("MIL AUC", mil["mean"]["auc"], "+-", mil["std"]["auc"])
    assert mil["mean"]["auc"] >= 0.9
    assert "| mil | auc |" in (out / "results.md").read_text()
    summary = json.loads((out / "slide_features" / "summary.json").read_text())
    assert summary["n_written"] == 24
    # a rerun (here with 2 splits) reuses every slide's features
    again = subprocess.run(
        [*command, "--config.mil.n_splits=2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "slide_features" / "summary.json").read_text())
    assert summary["n_existing"] == 24 and summary["n_written"] == 0
    rerun = json.loads((out / "results.json").read_text())["protocols"]["mil"]["splits"]
    assert rerun == mil["splits"][:2]  # same features, same seeds: the same first splits
