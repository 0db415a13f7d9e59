"""Non-finite values: a NaN batch leaves the state untouched; the loop skips or stops as asked,
and no checkpoint ever holds NaN."""

import jax
import numpy as np
import pytest
from testutil import random_dino_batch, tiny_dino_config

from pathfm import parallel
from pathfm.errors import TrainingStopped
from pathfm.train.build import build_setup
from pathfm.train.checkpoint import Checkpointer, load_state
from pathfm.train.loop import train
from pathfm.train.metrics_log import read_metrics

BAD_STEP = 3  # the step (1-based) whose batch gets NaN pixels


def _float_batch(batch, poison=False):
    """uint8 crops as float32 (same values after normalisation), NaN in one pixel if poison."""
    out = {k: np.asarray(v, np.float32) for k, v in batch.items()}
    if poison:
        out["global_crops"][0, 0, 0, 0, 0] = np.nan
    return out


def test_nan_batch_leaves_params_teacher_center_and_adam_untouched():
    config = tiny_dino_config()
    setup = build_setup(config, parallel.single_device_mesh())
    state = setup.fresh_state()
    good = lambda i: parallel.shard_batch(_float_batch(random_dino_batch(config, i)), setup.mesh)
    state, _ = setup.step(state, good(0), setup.step_rng)
    before = jax.device_get(state)
    poisoned = _float_batch(random_dino_batch(config, 1), poison=True)
    state, metrics = setup.step(state, parallel.shard_batch(poisoned, setup.mesh), setup.step_rng)
    after = jax.device_get(state)
    assert int(metrics["nonfinite"]) == 1 and not np.isfinite(float(metrics["loss"]))
    assert int(after["step"]) == 2 and int(after["skipped"]) == 1
    jax.tree.map(
        np.testing.assert_array_equal,
        (before["params"], before["extra"], before["opt_state"]),
        (after["params"], after["extra"], after["opt_state"]),
    )
    state, metrics = setup.step(state, good(2), setup.step_rng)  # training goes on
    assert int(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["loss"]))
    assert int(metrics["skipped_steps"]) == 1


@pytest.fixture
def poisoned_input(monkeypatch):
    """Feeds the loop float32 crops, with NaN in the batch of step BAD_STEP."""
    calls = {"n": 0}
    original = parallel.shard_batch

    def shard_batch(local_batch, mesh):
        calls["n"] += 1
        return original(_float_batch(local_batch, poison=calls["n"] == BAD_STEP), mesh)

    monkeypatch.setattr(parallel, "shard_batch", shard_batch)


def _config(policy, slides):
    config = tiny_dino_config(on_nonfinite=policy, epochs=2, steps_per_epoch=3)
    config.data.slides = str(slides)
    config.monitor.every_steps = 0
    return config


def test_skip_policy_counts_the_step_and_trains_on(
    poisoned_input, synthetic_slide_dir, tmp_path, caplog
):
    train(_config("skip", synthetic_slide_dir), tmp_path)
    records = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}
    assert records[BAD_STEP]["nonfinite"] == 1
    assert records[6]["skipped_steps"] == 1 and np.isfinite(records[6]["loss"])
    assert any(f"step {BAD_STEP}: non-finite" in r.getMessage() for r in caplog.records)
    step, state = load_state(tmp_path / "checkpoints")
    assert step == 6 and int(state["skipped"]) == 1
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state) if x.dtype.kind == "f")


def test_stop_policy_names_the_step_and_slides_and_keeps_the_last_good_checkpoint(
    poisoned_input, synthetic_slide_dir, tmp_path
):
    with pytest.raises(TrainingStopped) as stopped:
        train(_config("stop", synthetic_slide_dir), tmp_path)
    message = str(stopped.value)
    assert f"step {BAD_STEP}: non-finite" in message and "loss" in message
    assert "synthetic_00" in message  # the slides of the batch
    assert "checkpoint step 2" in message and "on_nonfinite=skip" in message
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 2  # nothing saved past it


def test_a_state_with_nan_is_never_saved(tmp_path):
    import grain

    state = {"w": jax.numpy.array([1.0, np.nan])}
    data = grain.MapDataset.range(10).to_iter_dataset()
    checkpointer = Checkpointer(tmp_path / "ckpt")
    with pytest.raises(TrainingStopped, match="NaN or inf"):
        checkpointer.save(1, state, data)
    checkpointer.close()
    assert checkpointer.latest_step() is None
