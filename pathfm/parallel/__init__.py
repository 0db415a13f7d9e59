"""The device mesh (`data` x `fsdp`) and the shardings of batches and host-side arrays.

The train step is written in global view and jitted with explicit shardings (pjit style), so
means over the batch inside losses are means over the global batch across all devices and hosts.
The batch is split over both mesh axes (every device holds B / n_devices samples); parameters and
optimiser state are laid out by `pathfm.parallel.partitioning` (replicated over `data`, split
over `fsdp`). `pathfm.parallel.distributed` starts the multi-process runtime.

Device order: `fsdp` is the inner (fastest-varying) axis, so an FSDP group is a set of
neighbouring devices (one host, or one ICI/NVLink island) and `data` spans hosts.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
BATCH_AXES = MESH_AXES  # the batch dimension is split over every device


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
    """Resolves one -1 entry so that data * fsdp == num_devices; ValueError if impossible."""
    if data == -1 and fsdp == -1:
        raise ValueError("at most one of mesh.data and mesh.fsdp may be -1")
    if data == -1:
        data = num_devices // fsdp if fsdp > 0 else 0
    elif fsdp == -1:
        fsdp = num_devices // data if data > 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp != num_devices:
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} does not cover the {num_devices} devices; "
            "set mesh.data and mesh.fsdp so that their product is the device count "
            "(-1 for one of them takes the rest)"
        )
    return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices: list | None = None) -> Mesh:
    """A 2-D ('data', 'fsdp') mesh over `devices` (all devices of all processes by default).

    `jax.make_mesh` orders devices for the physical topology (TPU rings, hosts contiguous), and
    the axes are Auto: XLA propagates shardings inside the jitted step."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(data, fsdp, len(devices))
    return jax.make_mesh(shape, MESH_AXES, (AxisType.Auto,) * 2, devices=devices)


def single_device_mesh() -> Mesh:
    """A 1 x 1 mesh on the first device: the reference for sharded-equals-single tests."""
    return make_mesh(1, 1, jax.devices()[:1])


def mesh_from_config(mesh_config) -> Mesh:
    """The mesh of `config.mesh` over every device of every process."""
    return make_mesh(mesh_config.data, mesh_config.fsdp)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def shard_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble this process's slice of the batch into global arrays split over all devices.

    Each process passes its own B / process_count samples (its grain shard)."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def batch_from_global(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global batch that every process holds in full (e.g. the fixed probe set), split over
    the devices: each device takes its own rows, so this works on any number of hosts."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, batch_sharding(mesh), lambda idx: array[idx])


def replicate_tree(tree: Any, mesh: Mesh) -> Any:
    """The replicated sharding for every leaf of `tree`."""
    return jax.tree.map(lambda _: replicated(mesh), tree)
