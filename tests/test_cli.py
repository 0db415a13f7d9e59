"""The command line for real: bad input stops with one clear message; a SIGKILL or SIGTERM
mid-run, then a rerun, ends with the same state bit for bit as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from testutil import REPO, xla_flags

from pathfm.config import validate
from pathfm.errors import ConfigError
from pathfm.main import load_config
from pathfm.train.checkpoint import load_state
from pathfm.train.metrics_log import read_metrics

TINY = [  # DINO (the quick start runs DINOv2): resume does not depend on the method
    "--config.method=dino",
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
    env["XLA_FLAGS"] = xla_flags()  # one device, as a user's CPU run
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
    for bad, name in (  # through the command line: a value that does not parse, a device check
        ("--config.batch_size=abc", "batch_size"),
        ("--config.mesh.fsdp=3", "config.mesh"),  # 1 device is not 3-way divisible
    ):
        out = _cli(["--workdir", str(workdir), bad], tmp_path)
        assert out.returncode == 2, out.stderr
        assert name in out.stderr
        assert "Traceback" not in out.stderr
    assert not workdir.exists()
    for bad, name in (  # the same checks in-process (each CLI start costs seconds of imports)
        ("model.size=huge", "model.size"),
        ("crops.global_size=60", "crops.global_size"),
        ("on_nonfinite=ignore", "on_nonfinite"),
    ):
        with pytest.raises(ConfigError, match=name):
            validate(load_config(str(REPO / "configs/quickstart.py"), [bad]))


def test_coordinator_without_process_id_is_one_clear_error(tmp_path):
    out = _cli(["--workdir", str(tmp_path / "run"), "--coordinator_address=localhost:1"], tmp_path)
    assert out.returncode == 2 and "--process_id" in out.stderr and "Traceback" not in out.stderr


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


def _launch(workdir: Path, args, tmp_path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pathfm.main", "--config", "configs/quickstart.py"]
    return subprocess.Popen(
        [*cmd, "--workdir", str(workdir), *args],
        cwd=REPO,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, proc, timeout=600):
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)


def _assert_same_final_state(workdir: Path, reference: Path):
    """Bit-identical parameters, teacher, center and Adam state after the last step."""
    step, state = load_state(workdir / "checkpoints")
    ref_step, ref = load_state(reference / "checkpoints")
    assert step == ref_step == 12
    jax.tree.map(np.testing.assert_array_equal, state, ref)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, synthetic_slide_dir):
    """12 steps without interruption: the reference run."""
    tmp_path = tmp_path_factory.mktemp("straight")
    args = [*TINY, f"--config.data.slides={synthetic_slide_dir}"]
    workdir = tmp_path / "run"
    out = _cli(["--workdir", str(workdir), *args], tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # the terminal (here a pipe): plain progress lines, the compile time, then the summary
    assert "compiling the train step" in out.stderr and "compiled in " in out.stderr
    assert "step 1/12 (8%) loss " in out.stderr and "\r" not in out.stderr
    assert "step 6/12 (50%) loss " in out.stderr and ", RankMe " in out.stderr
    assert " s/step " in out.stderr and " img/s | " in out.stderr and ", ETA " in out.stderr
    assert "grad_norm=" not in out.stderr  # the full metrics go to the log file
    assert "step 12: " in (workdir / "pathfm.log").read_text()
    assert "pathfm: finished 12 steps in " in out.stdout and "ODCorr" in out.stdout
    assert f"checkpoints: {workdir / 'checkpoints'} (step 12)" in out.stdout
    assert f"python -m pathfm.report --workdir {workdir}" in out.stdout
    # rerunning the finished run trains nothing and says so
    again = _cli(["--workdir", str(workdir), *args], tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete: checkpoint 12 of 12 steps" in again.stdout
    assert f"--config.checkpoint={workdir}" in again.stdout and "resumed" not in again.stderr
    return workdir, args


@pytest.mark.slow
def test_killed_run_resumes_bit_exactly(straight, tmp_path):
    reference_dir, args = straight
    reference = {r["step"]: r for r in read_metrics(reference_dir / "metrics.jsonl")}
    assert sorted(reference) == list(range(1, 13))

    # Start again in a fresh workdir, SIGKILL it once the step-4 checkpoint is committed.
    killed = tmp_path / "killed"
    proc = _launch(killed, args, tmp_path)
    _wait_for(lambda: _committed(killed, 4), proc)
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
        assert resumed[step]["loss"] == reference[step]["loss"], f"loss differs at {step}"
    _assert_same_final_state(killed, reference_dir)
    final = reference[12]
    for key in ("loss", "rankme", "odcorr"):
        assert isinstance(final[key], float) and final[key] == final[key]  # finite, not NaN
    assert json.loads((killed / "config.json").read_text())["method"] == "dino"


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resumes_bit_exactly(straight, tmp_path):
    reference_dir, args = straight
    run = tmp_path / "run"
    proc = _launch(run, args, tmp_path)
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(read_metrics(metrics)) >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    stopped_at = read_metrics(metrics)[-1]["step"]
    assert 5 <= stopped_at < 12, "the run ended before it could be preempted"
    assert f"preempted: saved checkpoint {stopped_at}" in stderr
    assert _committed(run, stopped_at)  # saved at the step it reached, not the last multiple of 4

    out = _cli(["--workdir", str(run), *args], tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resumed from step {stopped_at}" in out.stderr
    _assert_same_final_state(run, reference_dir)
