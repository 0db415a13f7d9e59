"""Dashboards: TensorBoard event files read back by TensorBoard's own reader match metrics.jsonl,
crop grids hold the batch's crops, resume drops stale steps, and the PNG report renders."""

import importlib.util
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from testutil import REPO, tiny_dino_config

from pathfm.config import validate
from pathfm.data import pipeline
from pathfm.errors import ConfigError
from pathfm.report import main as report_main
from pathfm.report import select_panels, series
from pathfm.train.dashboard import Dashboard, crop_grid, scalar_tag
from pathfm.train.loop import train
from pathfm.train.metrics_log import read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TAGS = (
    "loss/total",
    "schedule/lr",
    "schedule/teacher_temp",
    "schedule/momentum",
    "monitor/rankme",
    "monitor/odcorr",
    "monitor/online_knn_balanced_accuracy",
    "throughput/images_per_s",
    "throughput/input_wait_frac",
    "train/grad_norm",
)


def _config(slides):
    return tiny_dino_config(
        **{
            "data.slides": str(slides),
            "checkpoint.every_steps": 6,  # one save: orbax on 8 emulated devices is slow
            "dashboard.image_every_steps": 3,
            "dashboard.image_samples": 4,
            "monitor.online_task": "synthetic",
            "monitor.online_per_class": 4,
        }
    )


@pytest.fixture(scope="module")
def run(synthetic_slide_dir, tmp_path_factory):
    """6 steps of tiny DINO, logged every step, monitors (and online kNN) at steps 3 and 6."""
    config = _config(synthetic_slide_dir)
    workdir = tmp_path_factory.mktemp("dashboards")
    train(config, workdir)
    return config, workdir


def _events(directory):
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_every_logged_scalar_reads_back_from_tensorboard(run):
    _, workdir = run
    events = _events(workdir / "tensorboard")
    tags = set(events.Tags()["scalars"])
    for tag in TAGS:
        assert tag in tags, tag
    records = read_metrics(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    checked = 0
    for record in records:
        for name, value in record.items():
            if name in ("step", "batch_id"):
                continue
            points = {e.step: e.value for e in events.Scalars(scalar_tag(name))}
            assert points[record["step"]] == pytest.approx(float(value), rel=1e-6, abs=1e-30)
            checked += 1
    assert checked > 6 * 10
    assert "batch_id" not in str(tags)
    rankme = [e.step for e in events.Scalars("monitor/rankme")]
    assert rankme == [3, 6]  # only the monitored steps


def test_crop_grids_hold_the_batch_crops(run):
    config, workdir = run
    events = _events(workdir / "tensorboard")
    assert set(events.Tags()["images"]) == {"images/global_crops", "images/local_crops"}
    pad, g, loc = 2, config.crops.global_size, config.crops.local_size
    globals_ = events.Images("images/global_crops")
    assert [e.step for e in globals_] == [1, 3, 6]  # the first step, then every 3
    first = globals_[0]
    assert (first.height, first.width) == (pad + 4 * (g + pad), pad + 2 * (g + pad))
    local = events.Images("images/local_crops")[0]
    assert (local.height, local.width) == (pad + 4 * (loc + pad), pad + 2 * (loc + pad))

    # The step-1 grid is, pixel for pixel, the first batch of the same input pipeline.
    source = pipeline.resolve_slide_source(config, workdir)
    index = pipeline.build_slide_index(config, source, workdir)
    batch = next(pipeline.build_train_iterator(config, pipeline.build_sampler(config, index)))
    png = np.frombuffer(first.encoded_image_string, np.uint8)
    decoded = cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, crop_grid(batch["global_crops"], 4))
    np.testing.assert_array_equal(
        decoded[pad : pad + g, pad : pad + g], batch["global_crops"][0, 0]
    )


def test_mae_single_crops_give_one_grid(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), np.uint8)
    grid = crop_grid(images, 3, pad=1)
    assert grid.shape == (1 + 3 * 9, 1 + 9, 3)
    np.testing.assert_array_equal(grid[10:18, 1:9], images[1])
    dashboard = Dashboard(tmp_path, image_samples=3)
    dashboard.log(1, {"loss": 0.5, "masked_fraction": 0.75}, {"images": images})
    dashboard.close()
    events = _events(tmp_path)
    assert events.Tags()["images"] == ["images/crops"]
    assert {"loss/total", "train/masked_fraction"} == set(events.Tags()["scalars"])
    image = events.Images("images/crops")[0]
    assert (image.step, image.height, image.width) == (1, 3 * 10 + 2, 12)


def test_resume_drops_events_past_the_restored_step(tmp_path):
    directory = tmp_path / "tensorboard"
    first = Dashboard(directory)
    for step in range(1, 7):
        first.log(step, {"loss": float(step)}, {})
    first.close()
    path = next(directory.glob("*tfevents*"))
    with path.open("ab") as f:  # a record torn by a kill mid-write
        f.write(struct.pack("<Q", 1000) + b"\0\0\0\0partial")
    resumed = Dashboard(directory, resume_step=4)  # the checkpoint restored at step 4
    for step in (5, 6):
        resumed.log(step, {"loss": 10.0 * step}, {})
    resumed.close()
    points = [(e.step, e.value) for e in _events(directory).Scalars("loss/total")]
    assert points == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0), (6, 60.0)]


def test_dashboard_off_writes_nothing(tmp_path):
    config = tiny_dino_config(**{"dashboard.tensorboard": False})
    dashboard = Dashboard.from_config(config, tmp_path, resume_step=0, enabled=True)
    dashboard.log(1, {"loss": 1.0}, {})
    dashboard.close()
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(ConfigError, match=r"config\.dashboard\.image_samples"):
        validate(tiny_dino_config(**{"dashboard.image_samples": -1}))


def test_report_renders_every_logged_panel(run, tmp_path):
    _, workdir = run
    titles = [t for t, _, _ in select_panels(series(read_metrics(workdir / "metrics.jsonl")))]
    for title in ("Loss", "Learning rate", "Teacher temperature", "RankMe (probe set)",
                  "ODCorr (probe set)", "Online probe balanced accuracy",
                  "Throughput (images/s)", "Input wait fraction"):  # fmt: skip
        assert title in titles, title
    out = tmp_path / "report.png"
    assert report_main(["--workdir", str(workdir), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 1000 and height >= 600 and len(data) > 30_000
    assert not list(tmp_path.glob(".*tmp*"))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.std() > 10  # drawn, not blank


def test_panels_of_unlogged_metrics_are_skipped():
    records = [{"step": s, "loss": 1.0 / s, "lr": 0.1, "images_per_s": "nan"} for s in (1, 2)]
    titles = [t for t, _, _ in select_panels(series(records))]
    assert titles == ["Loss", "Learning rate", "Throughput (images/s)"]


def test_report_on_a_missing_run_stops_with_one_clear_error(tmp_path):
    missing = tmp_path / "no-such-run"
    cmd = [sys.executable, "-m", "pathfm.report", "--workdir", str(missing)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert str(missing / "metrics.jsonl") in out.stderr
    assert out.stderr.count("error") == 1 and "Traceback" not in out.stderr
    assert not missing.exists()


def test_quick_start_writes_dashboards():
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "configs/quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    steps = config.epochs * config.steps_per_epoch
    assert config.dashboard.tensorboard and config.dashboard.image_samples > 0
    assert 0 < config.dashboard.image_every_steps < steps  # grids during the run, not only at 1
    assert config.monitor.every_steps and config.monitor.online_task  # RankMe/ODCorr/kNN panels
