"""When pathfm starts JAX's multi-process runtime, and when it leaves a run single-process."""

import pytest

from pathfm.parallel import distributed


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),  # one task: a plain run
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, "slurm"),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
    ],
)
def test_launcher_reads_the_environment(monkeypatch, env, expected):
    for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert distributed.launcher() == expected


def test_single_process_runs_do_not_start_the_runtime(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
    assert distributed.initialize("auto") is False
    assert distributed.initialize("off") is False


def test_coordinator_needs_process_count_and_id():
    with pytest.raises(ValueError, match="--num_processes and --process_id"):
        distributed.initialize("auto", coordinator_address="localhost:1234")
