"""orbax checkpoints of the train state together with the grain iterator state.

Every process calls save and restore (orbax writes each process's shards and coordinates the
commit). A save is complete once orbax renames its temporary folder to the step; a kill during a
save leaves only the temporary folder, which orbax never lists. A committed step that still fails
to restore (a truncated or corrupted file) is moved to `<dir>_damaged/` with a warning and the
previous step is restored instead; a readable step that holds another model's weights is never
moved (it belongs to another config: ConfigError). A state holding NaN or inf is never saved.
Export and evaluation read only the weights (`load_weights`), newest readable step first.
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

from pathfm.errors import ConfigError, DataError, TrainingStopped
from pathfm.pytree import path_string

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
            self._check_model(step, target())
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

    def _check_model(self, step: int, target: Any) -> None:
        """ConfigError when checkpoint `step` holds another model's weights: such a checkpoint
        belongs to another config and is left where it is (only unreadable ones are damaged)."""
        try:
            differences = weight_shape_differences(self.directory / str(step) / "state", target)
        except Exception:  # unreadable metadata: restoring decides whether the step is damaged
            return
        if differences:
            shown = "; ".join(differences[:2])
            more = f" and {len(differences) - 2} more" if len(differences) > 2 else ""
            raise ConfigError(
                f"checkpoint {step} in {self.directory} holds another model ({shown}{more}): it "
                "was written with another config. Pass a new --workdir for this config, or "
                "resume with the config that wrote it; the checkpoint is left untouched"
            )

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


def load_state(
    directory: str | Path, step: int | None = None, keys: tuple[str, ...] | None = None
) -> tuple[int, dict]:
    """(step, state as NumPy arrays) of a checkpoint folder, on one host with any devices;
    the newest step by default, only the top-level `keys` of the state when given. For
    inspection and tests; export and evaluation use `load_weights`."""
    directory = Path(directory).absolute()
    if step is None:
        step = next(iter(complete_steps(directory)), None)
    if step is None:
        raise TrainingStopped(f"no complete checkpoint in {directory}")
    return step, _read_state(directory / str(step) / "state", keys)


def load_weights(directory: str | Path, step: int | None = None) -> tuple[int, dict]:
    """(step, {'params', 'extra'}) as NumPy arrays: what export and evaluation need, without
    the optimiser state. By default the newest checkpoint that reads; each unreadable newer one
    is skipped with a one-line warning. An explicit `step` is read or fails (DataError)."""
    directory = Path(directory).absolute()
    steps = complete_steps(directory)
    if not steps:
        raise DataError(
            f"{directory} holds no complete checkpoint; train first, or pass the "
            "--workdir of a run that saved one"
        )
    if step is not None and step not in steps:
        raise DataError(f"{directory} has no checkpoint {step}; it has {steps}")
    for candidate in [step] if step is not None else steps:
        try:
            return candidate, _read_state(directory / str(candidate) / "state", WEIGHT_KEYS)
        except Exception as e:  # orbax/tensorstore raise many types for unreadable files
            reason = _first_line(e)
            if step is not None:
                raise DataError(
                    f"checkpoint {step} in {directory} cannot be read ({reason}); choose another "
                    f"with --config.step (it has {steps})"
                ) from e
            log.warning(
                "checkpoint %d in %s cannot be read (%s); trying the previous one (choose one "
                "with --config.step)", candidate, directory, reason,
            )  # fmt: skip
            log.debug("reading checkpoint %d failed", candidate, exc_info=True)
    raise DataError(f"none of the checkpoints {steps} in {directory} can be read; they are damaged")


WEIGHT_KEYS = ("params", "extra")  # the model's weights and its non-trained state (EMA, centre)


def complete_steps(directory: str | Path) -> list[int]:
    """Committed steps of an orbax checkpoint folder, newest first (unfinished saves are named
    `N.orbax-checkpoint-tmp...`)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__


def _metadata_tree(path: Path) -> dict:
    """The saved tree of a step's `state` item, with each leaf's shape and dtype."""
    # The step-level _CHECKPOINT_METADATA sits one folder up; orbax warns that the item folder
    # lacks one, which is expected here.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
    finally:
        absl_logger.setLevel(level)


def _read_state(path: Path, keys: tuple[str, ...] | None) -> dict:
    """The saved state at `path` (a step's `state` item) as NumPy arrays; only `keys` if given."""
    tree = _metadata_tree(path)
    if keys is not None:
        tree = {k: tree[k] for k in keys if k in tree}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    with ocp.PyTreeCheckpointer() as reader:
        return reader.restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=tree if keys is not None else None,
                restore_args=restore_args,
                partial_restore=keys is not None,
            ),
        )


def weight_shape_differences(path: Path, target: Any) -> list[str]:
    """'key: saved shape != model shape' for each weight (`params`, `extra`) where the saved
    state at `path` and `target` (arrays or ShapeDtypeStructs) differ; [] when they match."""

    def shapes(tree: Any) -> dict[str, tuple]:
        leaves = jax.tree_util.tree_leaves_with_path({k: tree.get(k, {}) for k in WEIGHT_KEYS})
        return {path_string(p, "."): tuple(leaf.shape) for p, leaf in leaves}

    saved, model = shapes(_metadata_tree(path)), shapes(target)
    return [
        f"{key}: saved {saved.get(key, 'nothing')} != model {model.get(key, 'nothing')}"
        for key in sorted(saved.keys() | model.keys())
        if saved.get(key) != model.get(key)
    ]
