"""A workdir belongs to one run and never loses or mixes its records: a second run on a busy
workdir stops at once naming the first; a second SIGTERM cannot cut the checkpoint commit short;
a restart from step 0 keeps the old records aside (issue 14, first part)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from testutil import REPO, cli_command, cli_env, tiny_dino_config

from pathfm.runs.workdir import LOCK_FILE, WorkdirBusy, lock_workdir
from pathfm.train.loop import train
from pathfm.train.metrics_log import read_metrics


def _cmd(workdir, slides):
    return cli_command(workdir, slides)


def _env(tmp_path):
    return cli_env(tmp_path.parent / "jax_cache")


def _launch(workdir, slides, tmp_path) -> subprocess.Popen:
    """A tiny training run in the background; its stderr is a text pipe."""
    return subprocess.Popen(
        _cmd(workdir, slides), cwd=REPO, env=_env(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait(condition, proc, timeout=300):
    deadline = time.time() + timeout
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)


def test_the_lock_names_its_holder_and_is_released_when_the_process_ends(tmp_path):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pathfm.runs.workdir import lock_workdir; "
         f"lock_workdir({str(workdir)!r}, 'holder'); import time; time.sleep(60)"],
        cwd=REPO,
    )  # fmt: skip
    _wait(lambda: (workdir / LOCK_FILE).exists() and (workdir / LOCK_FILE).stat().st_size, holder)
    with pytest.raises(WorkdirBusy, match=f"pid {holder.pid} on host"):
        lock_workdir(workdir)
    holder.kill()  # kill -9: the OS drops the lock, nothing to clean up
    holder.wait()
    lock_workdir(workdir)
    assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_stops_at_once(tmp_path, synthetic_slide_dir):
    workdir = tmp_path / "run"
    first = _launch(workdir, synthetic_slide_dir, tmp_path)
    _wait(lambda: (workdir / "metrics.jsonl").exists(), first)
    first.send_signal(signal.SIGSTOP)  # mid-run however slow the second one starts
    try:
        second = subprocess.run(
            _cmd(workdir, synthetic_slide_dir), cwd=REPO, env=_env(tmp_path),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"in use by another pathfm run (pid {first.pid} on host" in second.stderr
    assert "Traceback" not in second.stderr
    first.wait(timeout=600)
    assert first.returncode == 0, first.stderr.read()[-2000:]
    steps = [r["step"] for r in read_metrics(workdir / "metrics.jsonl")]
    assert steps == list(range(1, 41))  # one run's records, each step once


@pytest.mark.slow
def test_a_second_sigterm_cannot_lose_the_checkpoint(tmp_path, synthetic_slide_dir):
    workdir = tmp_path / "run"
    run = _launch(workdir, synthetic_slide_dir, tmp_path)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(run.stderr), daemon=True)
    reader.start()
    metrics = workdir / "metrics.jsonl"
    _wait(lambda: metrics.exists() and len(read_metrics(metrics)) >= 3, run)
    run.send_signal(signal.SIGTERM)
    for _ in range(3):  # as a scheduler repeats TERM: these land while the save is in flight
        time.sleep(0.02)
        run.send_signal(signal.SIGTERM)
    _wait(lambda: any("preempted: saved" in line for line in lines), run)
    for _ in range(2):  # and right after the run says it saved
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
    run.wait(timeout=300)
    reader.join(timeout=10)
    stderr = "".join(lines)
    assert run.returncode == 0, stderr[-2000:]
    saved = int(stderr.split("preempted: saved checkpoint ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(saved) / "commit_success.txt").exists()
    assert not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))
    rerun = subprocess.run(
        _cmd(workdir, synthetic_slide_dir), cwd=REPO, env=_env(tmp_path),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resumed from step {saved}" in rerun.stderr
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, 41))


def test_a_restart_from_step_0_keeps_the_old_records_aside(tmp_path, synthetic_slide_dir):
    workdir = tmp_path / "run"
    workdir.mkdir()
    old = [{"step": s, "loss": 9.0} for s in (1, 2, 3)]  # a run killed before its first save
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    config = tiny_dino_config(**{"data.slides": str(synthetic_slide_dir), "epochs": 1})
    config.monitor.every_steps = 0
    train(config, workdir)
    assert [r["step"] for r in read_metrics(workdir / "metrics.jsonl")] == [1, 2, 3]
    assert all(r["loss"] != 9.0 for r in read_metrics(workdir / "metrics.jsonl"))
    (kept,) = workdir.glob("metrics.jsonl.*")
    assert read_metrics(kept) == old
    assert len(list(workdir.glob("tensorboard*"))) == 1  # no old events to keep: none moved
