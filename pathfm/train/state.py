"""The train state (a plain dict of pytrees), created already sharded, and the jitted step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from pathfm import parallel
from pathfm.parallel.partitioning import DEFAULT_RULES, tree_shardings
from pathfm.ssl.base import Method

UPDATED = ("params", "extra", "opt_state")  # what a non-finite step leaves untouched
TrainState = dict[str, Any]  # {'step', 'skipped': int32 [], 'params', 'extra', 'opt_state'}


def init_state_fn(method: Method, optimizer: optax.GradientTransformation) -> Callable:
    """rng -> fresh train state."""

    def init(rng: jax.Array) -> TrainState:
        params, extra = method.init(rng)
        return {
            "step": jnp.zeros([], jnp.int32),
            "skipped": jnp.zeros([], jnp.int32),  # steps whose update was dropped (non-finite)
            "params": params,
            "extra": extra,
            "opt_state": optimizer.init(params),
        }

    return init


def abstract_state(method: Method, optimizer, rng: jax.Array) -> TrainState:
    """Shapes and dtypes of the train state, without allocating it."""
    return jax.eval_shape(init_state_fn(method, optimizer), rng)


def state_shardings(
    method: Method, optimizer, rng: jax.Array, mesh: Mesh, rules=DEFAULT_RULES, min_size: int = 0
) -> Any:
    """The NamedSharding of every state leaf by the partition rules (student, teacher and
    optimiser moments alike; see `pathfm.parallel.partitioning`)."""
    return tree_shardings(abstract_state(method, optimizer, rng), mesh, rules, min_size)


def make_train_step(
    method: Method, optimizer: optax.GradientTransformation, schedules: dict[str, Callable]
) -> Callable:
    """The pure update: (state, batch, rng) -> (state, metrics). `rng` is folded with the step.

    A step whose loss, gradients or updates are not all finite changes nothing but `step` and
    `skipped` (metrics['nonfinite'] = 1), so a NaN never reaches the parameters, the teacher, the
    optimiser moments or a checkpoint; the loop then skips on or stops (`config.on_nonfinite`)."""

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        step = state["step"]
        rng = jax.random.fold_in(rng, step)
        grad_fn = jax.value_and_grad(method.loss, has_aux=True)
        (loss, aux), grads = grad_fn(state["params"], state["extra"], batch, rng, step)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        extra = method.update_extra(state["extra"], params, aux, step)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        finite &= jnp.isfinite(optax.global_norm(updates))
        kept = keep_if(finite, (params, extra, opt_state), tuple(state[k] for k in UPDATED))
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "nonfinite": 1 - finite.astype(jnp.int32),
            **{name: fn(step) for name, fn in schedules.items()},
            **aux["metrics"],
        }
        skipped = state["skipped"] + metrics["nonfinite"]
        metrics["skipped_steps"] = skipped
        new_state = {"step": step + 1, "skipped": skipped, **dict(zip(UPDATED, kept, strict=True))}
        return new_state, metrics

    return train_step


def keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
    """`new` where the scalar `ok` holds, else `old`, leaf by leaf."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def jit_train_step(train_step: Callable, state_sh: Any, mesh: Mesh, batch_keys) -> Callable:
    """`train_step` jitted with explicit in/out shardings (`state_sh`: the state's shardings, e.g.
    from `state_shardings`; the batch is split over every device) and the state donated."""
    batch_sh = {k: parallel.batch_sharding(mesh) for k in batch_keys}
    rep = parallel.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_sh, batch_sh, rep),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
    )
