"""orbax checkpoints of the train state together with the grain iterator state.

Every process calls save and restore (orbax coordinates multi-host writes). A checkpoint is
complete only once orbax has committed it; `latest_step` only ever returns committed steps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grain
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves {'state': train state, 'data': grain iterator} when the loop asks."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any) -> None:
        """Saves the state after `step` steps and the iterator positioned at the next batch."""
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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
