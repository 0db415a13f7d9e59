"""The preparation job for real: `configs/prepare.py` killed midway and rerun, two processes on
localhost (jax.distributed) sharing the work, and training from the prebuilt index with two grain
workers that receive the index's directory instead of its masks."""

import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from testutil import REPO, tiny_dino_config, xla_flags

from pathfm.data import index_build, pipeline, slides, tissue
from pathfm.data.tissue_index import TissueIndex
from pathfm.train.metrics_log import read_metrics

N_LINKS = 40


@pytest.fixture(scope="module")
def many_slides(tmp_path_factory, synthetic_slide_dir):
    """N_LINKS distinct slide paths (links to the 4 synthetic slides) in one folder."""
    folder = tmp_path_factory.mktemp("many")
    sources = sorted(synthetic_slide_dir.glob("*.tiff"))
    for i in range(N_LINKS):
        os.symlink(sources[i % len(sources)], folder / f"slide_{i:03d}.tiff")
    return folder


def _env(tmp_path, devices=1):
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=xla_flags(devices),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path.parent / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    return env


def _prepare_cmd(slides_dir, index_dir, workdir, *extra):
    return [
        sys.executable, "-m", "pathfm.main", "--config", "configs/prepare.py",
        "--workdir", str(workdir), f"--config.data.slides={slides_dir}",
        f"--config.data.index_dir={index_dir}", *extra,
    ]  # fmt: skip


def _entries(index_dir: Path) -> dict[str, tuple[int, int]]:
    """entry file name -> (inode, mtime_ns): a rewritten entry changes both."""
    entries = index_dir / "entries"
    files = entries.glob("*.entry") if entries.exists() else []
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}


@pytest.mark.slow
def test_killed_preparation_resumes_without_recomputing_finished_slides(many_slides, tmp_path):
    index_dir = tmp_path / "index"
    cmd = _prepare_cmd(many_slides, index_dir, tmp_path / "run", "--config.data.prepare_workers=2")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(tmp_path), stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # the job and its worker pool, killed together as by a scheduler
    )  # fmt: skip
    deadline = time.time() + 300
    while len(_entries(index_dir)) < 6 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.2)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    finished = _entries(index_dir)
    assert 6 <= len(finished) < N_LINKS, "the job must be killed midway"
    assert not list(index_dir.glob("index-*/index.json"))  # no merged index yet

    out = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    todo = N_LINKS - len(finished)
    assert f"{N_LINKS} slides owned, {todo} to compute" in out.stderr
    after = _entries(index_dir)
    assert len(after) == N_LINKS
    assert all(after[name] == stamp for name, stamp in finished.items())  # none recomputed
    (directory,) = index_dir.glob("index-*")
    index = TissueIndex.load(str(directory))
    assert len(index) == N_LINKS and index.rejected == []
    assert [Path(index.path(i)).name for i in range(N_LINKS)] == sorted(
        p.name for p in many_slides.iterdir()
    )
    assert "usable slides (0 rejected)" in out.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_build_one_index_each_taking_half(many_slides, tmp_path):
    index_dir, port = tmp_path / "index", _free_port()
    procs = []
    for pid in range(2):
        cmd = _prepare_cmd(
            many_slides, index_dir, tmp_path / "run",
            f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={pid}",
        )  # fmt: skip
        log = open(tmp_path / f"process_{pid}.log", "w")  # the child keeps it open
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(tmp_path), stdout=log, stderr=log))
    for p in procs:
        p.wait(timeout=600)
    logs = [(tmp_path / f"process_{pid}.log").read_text() for pid in range(2)]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)[-4000:]
    half = N_LINKS // 2
    for pid in range(2):
        assert f"process {pid} of 2: {half} slides owned, {half} to compute" in logs[pid]
    records = slides.find_slides(str(many_slides))
    config = tissue.TissueConfig()
    for i, record in enumerate(records):  # entry i was computed by process i % 2, and only there
        key = index_build.entry_key(record, config, "")
        entry = index_build.read_entry(
            str(index_dir / "entries" / index_build.entry_name(key)), key
        )
        assert entry.made_by == f"process {i % 2} of 2"
    (directory,) = index_dir.glob("index-*")
    assert len(TissueIndex.load(str(directory))) == N_LINKS
    assert list((directory.parent / f"work-{directory.name[6:]}").iterdir())  # both shard lists


# ---- Training from a prebuilt index, two grain workers -----------------------------------------
@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory, synthetic_slide_dir):
    tmp = tmp_path_factory.mktemp("prebuilt")
    out = subprocess.run(
        _prepare_cmd(synthetic_slide_dir, tmp / "index", tmp / "prepare"),
        cwd=REPO, env=_env(tmp), capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp


TRAIN = [  # DINO (the quick start runs DINOv2): the fastest step to compile
    "--config.method=dino",
    "--config.epochs=1", "--config.steps_per_epoch=4", "--config.batch_size=8",
    "--config.log_every_steps=1", "--config.checkpoint.every_steps=2",
    "--config.model.embed_dim=32", "--config.model.depth=1", "--config.model.num_heads=2",
    "--config.dino.out_dim=64", "--config.dino.hidden_dim=32", "--config.dino.bottleneck_dim=16",
    "--config.monitor.every_steps=0", "--config.crops.n_local=2", "--config.optim.warmup_epochs=0",
    "--config.dino.warmup_teacher_temp_epochs=0", "--config.data.num_workers=2",
]  # fmt: skip


@pytest.mark.slow
def test_training_maps_the_prebuilt_index_and_workers_get_its_directory(
    prebuilt, synthetic_slide_dir
):
    cmd = [
        sys.executable, "-m", "pathfm.main", "--config", "configs/quickstart.py",
        "--workdir", str(prebuilt / "run"), f"--config.data.slides={synthetic_slide_dir}",
        f"--config.data.index_dir={prebuilt / 'index'}", *TRAIN,
        # The whole loop with the crops cut on the device from the workers' shared slots:
        "--config.crops.photometric_on_device=True", "--config.crops.geometry_on_device=True",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, env=_env(prebuilt), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "prepared earlier" in out.stderr  # mapped, nothing recomputed
    pickled = int(re.search(r"the sampler pickles to (\d+) bytes", out.stderr).group(1))
    assert pickled < 4096
    records = read_metrics(prebuilt / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records)


@pytest.fixture(scope="module")
def prebuilt_sampler(prebuilt, synthetic_slide_dir):
    config = tiny_dino_config(**{"data.slides": str(synthetic_slide_dir)})
    config.data.index_dir = str(prebuilt / "index")
    index = pipeline.build_slide_index(config, str(synthetic_slide_dir), prebuilt / "check")
    return config, pipeline.build_sampler(config, index)


def _where(batch):
    return np.stack([batch["slide"], batch["x"], batch["y"]], axis=1)


@pytest.mark.slow
def test_prebuilt_stream_keeps_the_sampler_contract_with_two_workers(prebuilt_sampler):
    config, sampler = prebuilt_sampler
    task = pipeline.SampleAndCrop(sampler, pipeline.host_transform(config), config.seed)
    assert len(pickle.dumps(task)) < 4096  # what each grain worker receives: no mask inside
    assert sampler.index.directory is not None
    workers = config.copy_and_resolve_references()
    workers.data.num_workers = 2
    straight = pipeline.build_train_iterator(config, sampler)
    with_workers = pipeline.build_train_iterator(workers, sampler)
    first = [next(straight) for _ in range(3)]
    for want in first:  # deterministic: the same batches with or without workers
        got = next(with_workers)
        np.testing.assert_array_equal(got["global_crops"], want["global_crops"])
        np.testing.assert_array_equal(_where(got), _where(want))
    state = with_workers.get_state()  # resumable: the iterator state restores the next batch
    want = next(with_workers)
    resumed = pipeline.build_train_iterator(workers, sampler)
    resumed.set_state(state)
    np.testing.assert_array_equal(_where(next(resumed)), _where(want))
    half = [
        next(pipeline.build_train_iterator(config, sampler, process_index=p, process_count=2))
        for p in range(2)
    ]  # host-disjoint: host p holds samples p, p + 2, ... of the one-host batch
    for p in range(2):
        np.testing.assert_array_equal(_where(half[p]), _where(first[0])[p::2])
