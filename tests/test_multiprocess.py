"""Two processes on localhost with jax.distributed (CPU collectives over gloo): each feeds its own
input shard, both checkpoint together, a SIGTERM stops both at one agreed step, and the restarted
pair ends bit-identical to an uninterrupted 2-process run."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from testutil import REPO, xla_flags

from pathfm.train.checkpoint import load_state
from pathfm.train.metrics_log import read_metrics

STEPS = 16
ARGS = [  # DINO (the quick start runs DINOv2): the fastest step to compile
    "--config.method=dino",
    "--config.epochs=2",
    f"--config.steps_per_epoch={STEPS // 2}",
    "--config.batch_size=8",
    "--config.log_every_steps=1",
    "--config.checkpoint.every_steps=4",
    "--config.model.embed_dim=32",
    "--config.model.depth=1",
    "--config.model.num_heads=2",
    "--config.dino.out_dim=64",
    "--config.dino.hidden_dim=32",
    "--config.dino.bottleneck_dim=16",
    "--config.monitor.every_steps=8",
    "--config.monitor.num_patches=16",
    "--config.optim.warmup_epochs=1",
    "--config.dino.warmup_teacher_temp_epochs=1",
    "--config.crops.n_local=2",
    "--config.mesh.fsdp=2",  # 2 hosts x 2 devices: data=2 across processes, fsdp=2 within
    "--config.mesh.fsdp_min_size=0",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch_pair(workdir: Path, slides: Path, cache: Path) -> list[subprocess.Popen]:
    port = _free_port()
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=xla_flags(devices=2),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    procs = []
    for pid in range(2):
        cmd = [
            sys.executable, "-m", "pathfm.main", "--config", "configs/quickstart.py",
            "--workdir", str(workdir), f"--config.data.slides={slides}", *ARGS,
            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={pid}",
        ]  # fmt: skip
        with open(workdir.parent / f"{workdir.name}_{pid}.log", "w") as log:  # the child keeps it
            procs.append(
                subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
    return procs


def _finish(procs, workdir: Path, timeout=600) -> str:
    for p in procs:
        p.wait(timeout=timeout)
    logs = "\n".join(
        (workdir.parent / f"{workdir.name}_{i}.log").read_text() for i in range(len(procs))
    )
    assert all(p.returncode == 0 for p in procs), logs[-4000:]
    return logs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_slide_dir):
    tmp = tmp_path_factory.mktemp("two_processes")
    workdir = tmp / "straight"
    workdir.mkdir()
    logs = _finish(_launch_pair(workdir, synthetic_slide_dir, tmp / "jax_cache"), workdir)
    return workdir, logs


@pytest.mark.slow
def test_two_processes_train_on_their_own_shards(uninterrupted):
    workdir, logs = uninterrupted
    assert "process 1 of 2: 2 local devices, 4 in all" in logs
    assert "mesh {'data': 2, 'fsdp': 2} over 4 devices on 2 processes" in logs
    records = read_metrics(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # written by process 0 only
    assert all(np.isfinite(r["loss"]) for r in records)
    assert np.isfinite(records[-1]["rankme"])
    assert sorted(p.name for p in (workdir / "checkpoints" / "16" / "data").iterdir()) == [
        "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigterm_stops_both_processes_at_one_step_and_they_resume_exactly(
    uninterrupted, synthetic_slide_dir, tmp_path
):
    reference_dir, _ = uninterrupted
    workdir = tmp_path / "preempted"
    workdir.mkdir()
    cache = reference_dir.parent / "jax_cache"
    procs = _launch_pair(workdir, synthetic_slide_dir, cache)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if metrics.exists() and len(read_metrics(metrics)) >= 3:
            break
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    logs = _finish(procs, workdir)
    stopped = read_metrics(metrics)[-1]["step"]
    assert stopped < STEPS, "the run ended before the preemption notice"
    assert logs.count(f"preempted: saved checkpoint {stopped}") == 2  # both, at the same step

    logs = _finish(_launch_pair(workdir, synthetic_slide_dir, cache), workdir)
    assert logs.count(f"resumed from step {stopped}") == 2
    step, state = load_state(workdir / "checkpoints")
    ref_step, ref = load_state(reference_dir / "checkpoints")
    assert step == ref_step == STEPS
    jax.tree.map(np.testing.assert_array_equal, state, ref)
    resumed = {r["step"]: r for r in read_metrics(metrics)}
    reference = {r["step"]: r for r in read_metrics(reference_dir / "metrics.jsonl")}
    assert sorted(resumed) == sorted(reference)
    for s in reference:
        assert resumed[s]["loss"] == reference[s]["loss"], s
