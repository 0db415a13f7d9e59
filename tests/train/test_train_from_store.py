"""Training from a tile store (data.source='tfds'): a tiny DINO run, preempted and resumed
bit-exactly, and a run on an image-and-label TFDS set."""

import json

import jax
import numpy as np
import pytest
from storeutil import label_features, png, write_store
from testutil import tiny_dino_config

from pathfm.build_tile_store import build
from pathfm.config import validate
from pathfm.data.synthetic import generate_synthetic_slides
from pathfm.data.tile_store import config_from_training
from pathfm.train.checkpoint import load_state
from pathfm.train.loop import train
from pathfm.train.metrics_log import read_metrics
from pathfm.train.preemption import PreemptionWatch

tfds = pytest.importorskip("tensorflow_datasets")


def _config(data_dir, name, **overrides):
    keys = {
        "data.source": "tfds",
        "data.tfds_name": name,
        "data.tfds_dir": str(data_dir),
        "checkpoint.every_steps": 6,  # and at the preemption
        "dashboard.tensorboard": False,
    }
    config = tiny_dino_config(**{**keys, **overrides})
    validate(config)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A store built by pathfm's own builder from two synthetic slides (2 x 7 tiles of 48 px at
    0.5 um/px), then 6 steps over it (3.4 epochs), straight and preempted after step 3."""
    slides = tmp_path_factory.mktemp("slides")
    generate_synthetic_slides(slides, n_slides=2, seed=0, width=1024, height=1024, mpp=0.25)
    data_dir = tmp_path_factory.mktemp("tfds")
    config = _config(data_dir, "pathfm_tiles/tiny", **{"monitor.num_patches": 8})
    stats = build(config_from_training(config, str(slides), "tiny", tiles_per_slide=7), data_dir)
    assert stats["tiles"] == 14 and stats["slides_skipped"] == 0
    straight = tmp_path_factory.mktemp("straight")
    train(config, straight)
    resumed = tmp_path_factory.mktemp("resumed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PreemptionWatch, "reached", lambda self, step: step == 3)
        assert train(config, resumed)["preempted"]
    train(config, resumed)
    return straight, resumed


def test_a_store_run_trains_and_writes_its_store_report(runs):
    straight, _ = runs
    records = {r["step"]: r for r in read_metrics(straight / "metrics.jsonl")}
    assert sorted(records) == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in records.values())
    assert np.isfinite(records[6]["rankme"])  # the probe set comes from the store
    assert records[1]["mean_mpp"] == pytest.approx(0.5)
    report = json.loads((straight / "store.json").read_text())
    assert report["records"] == 14 and report["tfds_name"] == "pathfm_tiles/tiny"
    assert not (straight / "slides.json").exists()


def test_a_resumed_store_run_equals_the_uninterrupted_one(runs):
    straight, resumed = runs
    want = {r["step"]: r for r in read_metrics(straight / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(resumed / "metrics.jsonl")}
    assert sorted(got) == sorted(want)
    for step in range(4, 7):
        assert got[step]["batch_id"] == want[step]["batch_id"], f"data differs at {step}"
        assert got[step]["loss"] == want[step]["loss"], f"loss differs at {step}"
    (step, state), (ref_step, ref) = (
        load_state(resumed / "checkpoints"),
        load_state(straight / "checkpoints"),
    )
    assert step == ref_step == 6
    jax.tree.map(np.testing.assert_array_equal, state, ref)


def test_any_tfds_image_set_trains(tmp_path):
    rng = np.random.default_rng(2)
    examples = [
        {"image": png(rng.integers(0, 256, (40, 40, 3), np.uint8)), "label": i % 2}
        for i in range(6)
    ]
    write_store(tmp_path / "tfds", "my_patches", "default", label_features(tfds), examples)
    overrides = {"epochs": 1, "steps_per_epoch": 2, "monitor.every_steps": 0}
    config = _config(tmp_path / "tfds", "my_patches", **overrides)
    last = train(config, tmp_path / "run")
    assert np.isfinite(last["loss"])
    assert np.isnan(last["mean_mpp"])  # a set without mpp: unknown
