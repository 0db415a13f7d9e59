"""Starting JAX's multi-process runtime: one process per host (TPU) or per GPU/host (SLURM).

`jax.distributed.initialize` must run before anything touches a device. pathfm calls it

- with the coordinator address, process count and id when they are given on the command line
  (any cluster, or several processes on one machine);
- with no arguments, letting JAX read the environment, on a Cloud TPU VM (where it also starts
  the preemption notice) and when SLURM or Open MPI launched several tasks;
- not at all for a plain single-process run.

Afterwards `jax.devices()` lists the devices of every process, each process feeds its own slice
of the batch, and orbax checkpoints are written by all processes together.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import jax

log = logging.getLogger(__name__)


def launcher() -> str | None:
    """'slurm', 'openmpi' or 'tpu' when the environment starts several processes (or is a Cloud
    TPU VM, where JAX's own detection applies), else None."""
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    if importlib.util.find_spec("libtpu") is not None and os.environ.get("JAX_PLATFORMS", "") in (
        "",
        "tpu",
    ):
        return "tpu"
    return None


def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts the multi-process runtime as `mode` says ('auto', 'on' or 'off'); True if started.

    Explicit coordinator settings always start it; 'auto' starts it when `launcher()` finds a
    cluster; 'on' lets JAX detect the cluster (e.g. Kubernetes, mpi4py)."""
    explicit = coordinator_address is not None
    if mode == "off" and not explicit:
        return False
    if explicit:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id as well")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif mode == "on" or launcher() is not None:
        jax.distributed.initialize()
    else:
        return False
    log.info(
        "process %d of %d: %d local devices, %d in all",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing to wait for in one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # the public home of this collective

        multihost_utils.sync_global_devices(name)
