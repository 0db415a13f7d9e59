"""Checkpoints on disk: damaged or half-written steps fall back to the previous complete one."""

import logging

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from pathfm.errors import TrainingStopped
from pathfm.train.checkpoint import Checkpointer, load_state


def _state(step):
    w = np.random.default_rng(step).normal(size=(64, 64)).astype(np.float32)
    return {"step": jnp.int32(step), "params": {"w": jnp.asarray(w)}}


def _target():
    return {"step": jnp.int32(0), "params": {"w": jnp.zeros((64, 64), jnp.float32)}}


def _saved(directory, steps=(2, 4)):
    """A checkpoint folder holding `steps`, each with a data iterator moved on by `step` items."""
    checkpointer = Checkpointer(directory)
    data = iter(grain.MapDataset.range(100).to_iter_dataset())
    done = 0
    for step in steps:
        while done < step:
            next(data)
            done += 1
        checkpointer.save(step, _state(step), data)
    checkpointer.close()
    return directory


def _restore(directory):
    checkpointer = Checkpointer(directory)
    data = iter(grain.MapDataset.range(100).to_iter_dataset())
    restored = checkpointer.restore_latest(_target, data)
    return checkpointer, restored, next(data)


def _largest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_restore_latest_gives_state_and_data_position(tmp_path):
    _, (step, state), next_item = _restore(_saved(tmp_path / "ckpt"))
    assert step == 4 and next_item == 4
    np.testing.assert_array_equal(state["params"]["w"], _state(4)["params"]["w"])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax coroutine
def test_truncated_newest_checkpoint_is_set_aside_for_the_previous_one(tmp_path, caplog):
    directory = _saved(tmp_path / "ckpt")
    data_file = _largest_file(directory / "4" / "state")
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        checkpointer, (step, state), next_item = _restore(directory)
    assert step == 2 and next_item == 2
    np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])
    assert any(
        "checkpoint 4" in r.getMessage() and "cannot be restored" in r.getMessage()
        for r in caplog.records
    )
    assert [p.name.split("-")[0] for p in (tmp_path / "ckpt_damaged").iterdir()] == ["4"]
    assert checkpointer.latest_step() == 2
    data = iter(grain.MapDataset.range(100).to_iter_dataset())
    checkpointer.save(4, _state(4), data)  # the run saves step 4 again on its way
    checkpointer.close()
    assert Checkpointer(directory).latest_step() == 4


def test_a_save_killed_midway_is_never_listed(tmp_path):
    directory = _saved(tmp_path / "ckpt")
    (directory / "4").rename(directory / "4.orbax-checkpoint-tmp")  # what a kill leaves behind
    _, (step, _), next_item = _restore(directory)
    assert step == 2 and next_item == 2
    assert not (directory / "4.orbax-checkpoint-tmp").exists()  # removed at start, not kept forever


def test_no_restorable_checkpoint_means_a_fresh_start(tmp_path):
    directory = _saved(tmp_path / "ckpt", steps=(2,))
    manifest = directory / "2" / "state" / "manifest.ocdbt"
    manifest.unlink()
    _, restored, next_item = _restore(directory)
    assert restored is None and next_item == 0


def test_load_state_gives_numpy_arrays_without_a_target(tmp_path):
    step, state = load_state(_saved(tmp_path / "ckpt"))
    assert step == 4 and isinstance(state["params"]["w"], np.ndarray)
    np.testing.assert_array_equal(state["params"]["w"], _state(4)["params"]["w"])
    assert load_state(tmp_path / "ckpt", step=2)[1]["step"] == 2
    with pytest.raises(TrainingStopped, match="no complete checkpoint"):
        load_state(tmp_path / "empty")
