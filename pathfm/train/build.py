"""Everything a run builds from its config before the first step: method, optimiser, schedules,
the state's shardings on the mesh, the jitted state initialiser and the jitted train step.

Shared by the training loop, the benchmarks and the tests, so they all compile the same step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from pathfm.interop.timm_import import load_backbone
from pathfm.ssl.base import Method
from pathfm.ssl.registry import build_method
from pathfm.train.optimizer import build_optimizer
from pathfm.train.state import (
    TrainState,
    abstract_state,
    init_state_fn,
    jit_train_step,
    make_train_step,
    state_shardings,
)


@dataclasses.dataclass
class TrainSetup:
    """A method's jitted init and step on a mesh, with the state's layout."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    method: Method
    optimizer: Any
    schedules: dict[str, Callable]
    shardings: Any  # NamedSharding per state leaf
    init_rng: jax.Array
    step_rng: jax.Array
    step: Callable  # (state, batch, step_rng) -> (state, metrics), state donated

    def __post_init__(self):
        self._init = jax.jit(
            init_state_fn(self.method, self.optimizer), out_shardings=self.shardings
        )

    def fresh_state(self) -> TrainState:
        """The initial state, created already sharded (no device holds more than its shard).
        With `model.init_from`, the student backbone (and the EMA teacher, which starts as its
        copy) holds those weights; heads stay randomly initialised."""
        state = self._init(self.init_rng)
        if self.config.model.init_from:
            state = self._import_backbone(state)
        return state

    def _import_backbone(self, state: TrainState) -> TrainState:
        model = self.config.model
        template = self.method.backbone(state["params"], state["extra"], "student")
        weights = load_backbone(
            model.init_from, model.init_prefix, template.config, template.params
        )
        params, extra = self.method.with_backbone(state["params"], state["extra"], weights)
        state = {**state, "params": params, "extra": extra}
        return jax.tree.map(_place, state, self.shardings, _first_uses(state))

    def restore_target(self) -> TrainState:
        """ShapeDtypeStructs with shardings: how a checkpoint is laid out when restored."""
        abstract = abstract_state(self.method, self.optimizer, self.init_rng)
        return jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
            abstract,
            self.shardings,
        )


def _first_uses(state: Any) -> Any:
    """Per leaf: False where the same device array already appeared in an earlier leaf.

    `with_backbone` puts one backbone into the student and the EMA teacher: the file's arrays,
    and the template's device arrays for leaves the file lacks (e.g. DINOv2's iBOT `mask_token`),
    are then one object in both places. The train step donates the state, so a buffer in two
    leaves would be donated twice (and on CPU a host array can become the device buffer)."""
    seen: set[int] = set()

    def first(value: Any) -> bool:
        fresh = id(value) not in seen
        seen.add(id(value))
        return fresh

    return jax.tree.map(first, state)


def _place(value: Any, sharding: jax.sharding.Sharding, first_use: bool = True) -> jax.Array:
    """A host array laid out with `sharding` (each process fills its own shards; every process
    holds the whole array); a device array stays as it is. A value already placed in an earlier
    leaf (`first_use` False) is copied, so no two leaves share a buffer."""
    if isinstance(value, jax.Array):
        return value if first_use else jax.device_put(value, sharding, may_alias=False)
    host = np.array(value, copy=not first_use)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def build_setup(
    config: ml_collections.ConfigDict, mesh: Mesh, method: Method | None = None
) -> TrainSetup:
    """The TrainSetup of `config` on `mesh` (partition rules from `config.mesh`)."""
    method = build_method(config) if method is None else method
    init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
    abstract_params = jax.eval_shape(method.init, init_rng)[0]
    optimizer, schedules = build_optimizer(config, method, abstract_params)
    shardings = state_shardings(
        method, optimizer, init_rng, mesh, config.mesh.rules, config.mesh.fsdp_min_size
    )
    step = jit_train_step(
        make_train_step(method, optimizer, schedules), shardings, mesh, method.batch_keys
    )
    return TrainSetup(
        config, mesh, method, optimizer, schedules, shardings, init_rng, step_rng, step
    )
