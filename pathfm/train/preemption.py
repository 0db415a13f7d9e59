"""Preemption: SIGTERM (and the TPU maintenance notice) ends the run with a checkpoint.

With JAX's multi-process runtime started (`pathfm.parallel.distributed`): every process must
stop at the same step, so the loop asks JAX's preemption sync manager, which catches SIGTERM
(and the TPU maintenance notice) in C++ and agrees on a step with the other processes about a
second later, through orbax's `reached_preemption`. A Python SIGTERM handler must not be
installed then: it would replace JAX's and silently disable the notice.
Without it (a plain single-process run): a Python SIGTERM handler raises a flag instead.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

import jax
from orbax.checkpoint import multihost

log = logging.getLogger(__name__)


class PreemptionWatch:
    """`reached(step)` is True once the run was asked to stop; use as a context manager."""

    def __init__(self):
        self.signalled = False
        self._previous = None

    def __enter__(self) -> PreemptionWatch:
        if not jax.distributed.is_initialized():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            # Once preempted the process is on its way out, having saved: repeated TERMs (SLURM,
            # Kubernetes) stay ignored so that it exits 0. Otherwise TERM is what it was.
            if not self.signalled:
                signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame) -> None:
        if self.signalled:  # SLURM and Kubernetes repeat TERM after a grace period
            log.warning("SIGTERM again: still saving the checkpoint; ignored")
            return
        log.warning("SIGTERM: saving a checkpoint after the current step, then exiting")
        self.signalled = True

    def reached(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step` (the same answer on every process)."""
        return self.signalled or multihost.reached_preemption(step)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGTERM and SIGINT inside the block (a checkpoint commit), then restore them.

    Single-process runs only: with JAX's multi-process runtime, SIGTERM belongs to its preemption
    notifier, which agrees on a step instead of killing the process."""
    if jax.distributed.is_initialized():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
