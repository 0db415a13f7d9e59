"""The train state (a plain dict of pytrees), created already sharded, and the jitted step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from pathfm import parallel
from pathfm.ssl.base import Method

TrainState = dict[str, Any]  # {'step': int32 [], 'params', 'extra', 'opt_state'}


def init_state_fn(method: Method, optimizer: optax.GradientTransformation) -> Callable:
    """rng -> fresh train state."""

    def init(rng: jax.Array) -> TrainState:
        params, extra = method.init(rng)
        return {
            "step": jnp.zeros([], jnp.int32),
            "params": params,
            "extra": extra,
            "opt_state": optimizer.init(params),
        }

    return init


def abstract_state(method: Method, optimizer, rng: jax.Array) -> TrainState:
    """Shapes and dtypes of the train state, without allocating it."""
    return jax.eval_shape(init_state_fn(method, optimizer), rng)


def create_state(method: Method, optimizer, rng: jax.Array, mesh: Mesh) -> TrainState:
    """A fresh train state created directly with its shardings (`eval_shape` then jitted init)."""
    shardings = parallel.replicate_tree(abstract_state(method, optimizer, rng), mesh)
    return jax.jit(init_state_fn(method, optimizer), out_shardings=shardings)(rng)


def make_train_step(
    method: Method, optimizer: optax.GradientTransformation, schedules: dict[str, Callable]
) -> Callable:
    """The pure update: (state, batch, rng) -> (state, metrics). `rng` is folded with the step."""

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        step = state["step"]
        rng = jax.random.fold_in(rng, step)
        grad_fn = jax.value_and_grad(method.loss, has_aux=True)
        (loss, aux), grads = grad_fn(state["params"], state["extra"], batch, rng, step)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        extra = method.update_extra(state["extra"], params, aux, step)
        metrics = {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
            **{name: fn(step) for name, fn in schedules.items()},
            **aux["metrics"],
        }
        new_state = {"step": step + 1, "params": params, "extra": extra, "opt_state": opt_state}
        return new_state, metrics

    return train_step


def jit_train_step(train_step: Callable, state: TrainState, mesh: Mesh, batch_keys) -> Callable:
    """`train_step` jitted with explicit in/out shardings and the state donated."""
    state_sh = parallel.replicate_tree(state, mesh)
    batch_sh = {k: parallel.batch_sharding(mesh) for k in batch_keys}
    rep = parallel.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_sh, batch_sh, rep),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
    )
