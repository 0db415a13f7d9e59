"""The command line for real: bad input stops with one clear message; kill then resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testutil import REPO

from pathfm.train.metrics_log import read_metrics

TINY = [
    "--config.epochs=3",
    "--config.steps_per_epoch=4",
    "--config.batch_size=8",
    "--config.log_every_steps=1",
    "--config.checkpoint.every_steps=4",
    "--config.model.embed_dim=32",
    "--config.model.depth=2",
    "--config.model.num_heads=2",
    "--config.dino.out_dim=128",
    "--config.dino.hidden_dim=64",
    "--config.dino.bottleneck_dim=32",
    "--config.monitor.every_steps=6",
    "--config.monitor.num_patches=16",
    "--config.optim.warmup_epochs=1",
    "--config.dino.warmup_teacher_temp_epochs=1",
    "--config.crops.n_local=2",
]


def _env(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one device, as a user's CPU run
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path.parent / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _cli(args, tmp_path, **kw):
    cmd = [sys.executable, "-m", "pathfm.main", "--config", "configs/quickstart.py", *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, **kw)


def test_unknown_config_key_stops_before_writing(tmp_path):
    workdir = tmp_path / "run"
    out = _cli(["--workdir", str(workdir), "--config.batchsize=8"], tmp_path)
    assert out.returncode == 2
    assert "batchsize" in out.stderr and "batch_size" in out.stderr  # names it, suggests the fix
    assert len([line for line in out.stderr.splitlines() if "error" in line]) == 1
    assert not workdir.exists()


def test_invalid_value_stops_before_writing(tmp_path):
    workdir = tmp_path / "run"
    for bad, name in (
        ("--config.batch_size=abc", "batch_size"),
        ("--config.model.size=huge", "model.size"),
        ("--config.crops.global_size=60", "crops.global_size"),
    ):
        out = _cli(["--workdir", str(workdir), bad], tmp_path)
        assert out.returncode == 2, out.stderr
        assert name in out.stderr
        assert "Traceback" not in out.stderr
    assert not workdir.exists()


def test_missing_slide_directory_is_one_clear_error(tmp_path):
    missing = tmp_path / "no_such_slides"
    out = _cli(["--workdir", str(tmp_path / "run"), f"--config.data.slides={missing}"], tmp_path)
    assert out.returncode == 2
    assert str(missing) in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_manifest_naming_missing_files_lists_them(tmp_path, synthetic_slide_dir):
    manifest = tmp_path / "slides.csv"
    real = sorted(synthetic_slide_dir.glob("*.tiff"))[0]
    manifest.write_text(f"path,mpp\n{real},0.25\nlost_a.svs,\nlost_b.svs,0.5\n")
    out = _cli(["--workdir", str(tmp_path / "run"), f"--config.data.slides={manifest}"], tmp_path)
    assert out.returncode == 2
    assert "lost_a.svs" in out.stderr and "lost_b.svs" in out.stderr
    assert "Traceback" not in out.stderr


def _committed(workdir: Path, step: int) -> bool:
    """orbax writes into a temporary folder and renames it to the step once complete."""
    return (workdir / "checkpoints" / str(step) / "commit_success.txt").exists()


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_data_order(tmp_path, synthetic_slide_dir):
    args = [*TINY, f"--config.data.slides={synthetic_slide_dir}"]
    straight = tmp_path / "straight"
    out = _cli(["--workdir", str(straight), *args], tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    reference = {r["step"]: r for r in read_metrics(straight / "metrics.jsonl")}
    assert sorted(reference) == list(range(1, 13))

    # Start again in a fresh workdir, SIGKILL it once the step-4 checkpoint is committed.
    killed = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "pathfm.main",
        "--config",
        "configs/quickstart.py",
        "--workdir",
        str(killed),
        *args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while not _committed(killed, 4) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_metrics(killed / "metrics.jsonl")
    assert partial[-1]["step"] < 12, "the run ended before it could be killed"

    out = _cli(["--workdir", str(killed), *args], tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from step 4" in out.stderr
    resumed = {r["step"]: r for r in read_metrics(killed / "metrics.jsonl")}
    assert sorted(resumed) == list(range(1, 13))  # no duplicated or missing steps
    for step in range(5, 13):
        assert resumed[step]["batch_id"] == reference[step]["batch_id"], f"data differs at {step}"
        assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-5)
    final = reference[12]
    for key in ("loss", "rankme", "odcorr"):
        assert isinstance(final[key], float) and final[key] == final[key]  # finite, not NaN
    assert json.loads((killed / "config.json").read_text())["method"] == "dino"
