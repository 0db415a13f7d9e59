"""Per-iteration schedules, identical to the reference code's NumPy arrays but as functions of step.

`cosine_schedule` reproduces DINO's `utils.cosine_scheduler` value for value: a linear warm-up
`np.linspace(start_warmup, base, warmup_steps)` (endpoint included) followed by
`final + 0.5 (base - final) (1 + cos(pi i / n))` for i in [0, n). Past the end the last value holds.
`mae_cosine_schedule` is MAE's `util/lr_sched.py adjust_learning_rate` called every iteration:
the same half-cosine after a warm-up of `base * i / W` (no endpoint: the peak is reached at W).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

Schedule = Callable[[int], float]


def cosine_schedule(
    base: float,
    final: float,
    total_steps: int,
    warmup_steps: int = 0,
    start_warmup: float = 0.0,
) -> Schedule:
    """Linear warm-up then half-cosine from `base` to `final` over `total_steps` iterations."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})")
    decay_steps = total_steps - warmup_steps

    def schedule(step):
        step = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps - 1)
        if warmup_steps > 1:
            warm = start_warmup + (base - start_warmup) * step / (warmup_steps - 1)
        else:
            warm = jnp.asarray(start_warmup, jnp.float32)
        if decay_steps == 0:
            return warm
        i = jnp.maximum(step - warmup_steps, 0.0)
        cos = final + 0.5 * (base - final) * (1.0 + jnp.cos(jnp.pi * i / decay_steps))
        return jnp.where(step < warmup_steps, warm, cos)

    return schedule


def mae_cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0
) -> Schedule:
    """MAE's per-iteration lr (facebookresearch/mae `util/lr_sched.py adjust_learning_rate` with
    the fractional epoch i / steps_per_epoch): `base * i / W` for i < W, then the half-cosine from
    `base` to `final` over the remaining `total_steps - W` iterations."""
    cosine = cosine_schedule(base, final, total_steps, warmup_steps)

    def schedule(step):
        warm = base * jnp.asarray(step, jnp.float32) / max(warmup_steps, 1)
        return jnp.where(jnp.asarray(step) < warmup_steps, warm, cosine(step))

    return schedule


def epoch_linear_warmup(
    start: float, value: float, warmup_epochs: int, steps_per_epoch: int
) -> Schedule:
    """DINO's teacher temperature: `linspace(start, value, warmup_epochs)` indexed by EPOCH, then
    constant. It changes once per epoch, not per iteration, exactly as the reference."""

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        if warmup_epochs <= 1:
            warm = jnp.asarray(start, jnp.float32)
        else:
            warm = start + (value - start) * epoch.astype(jnp.float32) / (warmup_epochs - 1)
        return jnp.where(epoch < warmup_epochs, warm, jnp.asarray(value, jnp.float32))

    return schedule


def as_array(schedule: Schedule, total_steps: int) -> np.ndarray:
    """The schedule evaluated at every iteration [total_steps] (for tests and plots)."""
    return np.asarray(schedule(jnp.arange(total_steps)))
