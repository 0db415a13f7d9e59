"""orbax checkpoints of the train state together with the grain iterator state.

Every process calls save and restore (orbax writes each process's shards and coordinates the
commit). A save is complete once orbax renames its temporary folder to the step; a kill during a
save leaves only the temporary folder, which orbax never lists. A committed step that still fails
to restore (a truncated or corrupted file) is moved to `<dir>_damaged/` with a warning and the
previous step is restored instead. A state holding NaN or inf is never saved.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import multihost

from pathfm.errors import TrainingStopped

log = logging.getLogger(__name__)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class Checkpointer:
    """Saves {'state': train state, 'data': grain iterator} when the loop asks."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.directory = Path(directory).absolute()
        self.damaged_dir = self.directory.with_name(self.directory.name + "_damaged")
        if multihost.process_index() == 0:
            self._remove_unfinished()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def _remove_unfinished(self) -> None:
        """Delete saves a killed run left half-written (`N.orbax-checkpoint-tmp*`): orbax never
        lists them, and no run can finish them (the workdir lock keeps other runs out)."""
        for leftover in sorted(self.directory.glob("*.orbax-checkpoint-tmp*")):
            log.warning("removing the unfinished save %s left by an interrupted run", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Saves the state after `step` steps and the iterator positioned at the next batch."""
        if not bool(_all_finite(state)):
            raise TrainingStopped(
                f"refusing to save checkpoint {step}: the train state holds NaN or inf; the "
                f"previous checkpoint in {self.directory} is kept"
            )
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        )
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, target: Any, data_iterator: Any) -> Any:
        """The train state at `step`, laid out as `target` (ShapeDtypeStructs with shardings);
        the iterator is restored in place."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        )
        log.info("restoring checkpoint %d from %s", step, self.directory)
        return self.manager.restore(step, args=args)["state"]

    def restore_latest(
        self, target: Callable[[], Any], data_iterator: Any
    ) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that restores, or None when there is none.

        `target()` gives the restore layout. A damaged checkpoint is set aside, never deleted.
        With nothing restorable the iterator is put back where it was (a fresh start)."""
        initial = data_iterator.get_state()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return step, self.restore(step, target(), data_iterator)
            except Exception as e:  # orbax/tensorstore raise many types for unreadable files
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                log.warning(
                    "checkpoint %d in %s cannot be restored (%s); moving it to %s and "
                    "trying the previous one",
                    step,
                    self.directory,
                    reason,
                    self.damaged_dir,
                )
                self._set_aside(step)
        data_iterator.set_state(initial)
        return None

    def _set_aside(self, step: int) -> None:
        """Moves step `step` out of orbax's sight (process 0 moves, every process waits)."""
        if multihost.process_index() == 0:
            self.damaged_dir.mkdir(parents=True, exist_ok=True)
            destination = self.damaged_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.move(str(self.directory / str(step)), str(destination))
        multihost.sync_global_processes(f"pathfm_set_aside_{step}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_state(directory: str | Path, step: int | None = None) -> tuple[int, dict]:
    """(step, state as NumPy arrays) of a checkpoint folder, on one host with any devices;
    the newest step by default. For inspection, export and evaluation."""
    directory = Path(directory).absolute()
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise TrainingStopped(f"no complete checkpoint in {directory}")
        path = directory / str(step) / "state"
        # The step-level _CHECKPOINT_METADATA sits one folder up; orbax warns that the item folder
        # lacks one, which is expected here.
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            reader = ocp.PyTreeCheckpointer()
            metadata = reader.metadata(path).item_metadata
        finally:
            absl_logger.setLevel(level)
        with reader:
            restore_args = jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata.tree
            )
            state = reader.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    return step, state
