"""W&B and MLflow: a short training run logs to both what metrics.jsonl (and TensorBoard) holds,
under the TensorBoard tags, read back through each tracker's own storage; a resumed run
continues the same tracker runs; bad keys and a missing package stop before any work."""

import json
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest
from testutil import tiny_dino_config

from pathfm.config import validate
from pathfm.errors import ConfigError
from pathfm.train.dashboard import scalar_tag
from pathfm.train.loop import train
from pathfm.train.metrics_log import read_metrics
from pathfm.train.preemption import PreemptionWatch
from pathfm.train.trackers import (
    MLFLOW_ID_FILE,
    WANDB_ID_FILE,
    MlflowTracker,
    Trackers,
    WandbTracker,
)

pytest.importorskip("wandb")
pytest.importorskip("mlflow")


# ---- Reading the trackers' storage back ------------------------------------------------------


def wandb_records(path):
    """The Record protos of a `.wandb` transaction log: LevelDB-log framing (32 KiB blocks of
    crc32/length/type chunks after a 7-byte `:W&B` header), as wandb-core writes it. wandb 0.31
    ships no Python reader of its own, so this one checks every chunk's CRC32 as well."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:7] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0), path
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is zero padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        chunk = data[pos + 7 : pos + 7 + length]
        if kind == 0:  # preallocated, unwritten space
            break
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad CRC at byte {pos}"
        pending, pos = pending + chunk, pos + 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_offline_logs(workdir):
    """[(run id, display name, config, {step: {key: value}}, finished)] of <workdir>/wandb,
    oldest first; finished: the log ends with W&B's exit record."""
    runs = []
    for path in workdir.glob("wandb/offline-run-*/run-*.wandb"):
        run_id = name = None
        start, config, history, finished = 0, {}, {}, False
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_id, name = record.run.run_id, record.run.display_name
                start = record.run.start_time.ToNanoseconds()
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                items = record.history.item
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                history[row["_step"]] = row
            finished |= kind == "exit"
        runs.append((start, run_id, name, config, history, finished))
    return [run[1:] for run in sorted(runs)]


def wandb_offline_runs(workdir, count, timeout=60.0):
    """[(run id, display name, config, {step: {key: value}})] of <workdir>/wandb, oldest first,
    once `count` run logs are complete: `finish` can return while W&B's service process is still
    writing the newest log (CI read one without its run record)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            runs = _wandb_offline_logs(workdir)
        except AssertionError:  # a chunk being written: its CRC does not match yet
            if time.monotonic() > deadline:
                raise
            runs = []
        if (len(runs) == count and all(r[-1] for r in runs)) or time.monotonic() > deadline:
            return [r[:-1] for r in runs]
        time.sleep(0.2)


def mlflow_client(workdir):
    from mlflow.tracking import MlflowClient

    return MlflowClient((workdir.resolve() / "mlruns").as_uri())


def mlflow_points(workdir, tag):
    run_id = (workdir / MLFLOW_ID_FILE).read_text()
    return [(m.step, m.value) for m in mlflow_client(workdir).get_metric_history(run_id, tag)]


def _same(a, b):
    """Equal as float32 or float64 values (NaN included), as metrics.jsonl writes them."""
    a, b = float(a), float(b)
    return a == pytest.approx(b, rel=1e-6, abs=1e-30, nan_ok=True)


# ---- A short training run with both trackers -------------------------------------------------


@pytest.fixture(scope="module")
def run(synthetic_slide_dir, tmp_path_factory):
    """6 steps of tiny DINO logged every step: preempted after step 3, then resumed."""
    workdir = tmp_path_factory.mktemp("trackers")
    config = tiny_dino_config(
        **{
            "data.slides": str(synthetic_slide_dir),
            "monitor.every_steps": 0,
            "checkpoint.every_steps": 6,  # and at the preemption
            "dashboard.tensorboard": False,
            "dashboard.wandb": True,
            "dashboard.mlflow": True,
        }
    )
    validate(config)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PreemptionWatch, "reached", lambda self, step: step == 3)
        assert train(config, workdir)["preempted"]
    first = {name: (workdir / name).read_text() for name in (WANDB_ID_FILE, MLFLOW_ID_FILE)}
    train(config, workdir)
    return workdir, first


def test_both_trackers_log_what_metrics_jsonl_holds(run):
    workdir, _ = run
    records = read_metrics(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    runs = wandb_offline_runs(workdir, count=2)
    assert len(runs) == 2  # the first run and its resumption, synced as one W&B run
    history = {**runs[0][3], **runs[1][3]}
    assert sorted(runs[0][3]) == [1, 2, 3] and sorted(runs[1][3]) == [4, 5, 6]
    tags = {scalar_tag(name) for r in records for name in r} - {"train/step", "train/batch_id"}
    assert {"loss/total", "schedule/lr", "schedule/teacher_temp", "throughput/images_per_s",
            "train/grad_norm"} <= tags  # fmt: skip
    mlflow = {tag: dict(mlflow_points(workdir, tag)) for tag in tags}
    checked = 0
    for record in records:
        step = record["step"]
        wandb_row = history[step]
        for name, value in record.items():
            if name in ("step", "batch_id"):
                continue
            tag = scalar_tag(name)
            assert _same(wandb_row[tag], value), (step, tag)
            assert _same(mlflow[tag][step], value), (step, tag)
            checked += 1
        assert set(wandb_row) - {"_step", "_runtime", "_timestamp"} == {
            scalar_tag(n) for n in record if n not in ("step", "batch_id")
        }
    assert checked > 6 * 10
    assert not any("batch_id" in tag for tag in history[1])


def test_the_resumed_run_continues_the_same_tracker_runs(run, tmp_path):
    workdir, first = run
    assert {name: (workdir / name).read_text() for name in first} == first
    runs = wandb_offline_runs(workdir, count=2)
    assert {r[0] for r in runs} == {first[WANDB_ID_FILE]}
    assert {r[1] for r in runs} == {workdir.name}
    assert runs[0][2]["batch_size"] == 8 and runs[1][2]["dashboard"]["wandb_mode"] == "offline"
    client = mlflow_client(workdir)
    mlflow_run = client.get_run(first[MLFLOW_ID_FILE])
    assert mlflow_run.info.run_name == workdir.name
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["batch_size"] == "8"
    assert mlflow_run.data.params["dashboard.wandb_mode"] == "offline"
    experiment = client.get_experiment(mlflow_run.info.experiment_id)
    assert experiment.name == "pathfm"
    assert [s for s, _ in mlflow_points(workdir, "loss/total")] == [1, 2, 3, 4, 5, 6]
    assert len(client.search_runs([experiment.experiment_id])) == 1
    config = Path(client.download_artifacts(first[MLFLOW_ID_FILE], "config.json", str(tmp_path)))
    assert json.loads(config.read_text()) == json.loads((workdir / "config.json").read_text())


# ---- The trackers on their own ---------------------------------------------------------------


def _next_wall_clock_second():
    """W&B names an offline run's folder `offline-run-<YYYYmmdd_HHMMSS>-<run id>`: a resumed run
    started in the same second as the run it resumes would write into that run's folder."""
    time.sleep(1 - time.time() % 1 + 0.01)


def test_a_run_from_step_0_starts_new_tracker_runs_and_a_resumed_one_reopens(tmp_path):
    config = {"a": 1, "b": {"c": [1, 2]}, "long": "x" * 10_000}
    wandb = WandbTracker(tmp_path, config, "pathfm", "offline", resume=False)
    wandb.log(1, {"loss/total": 2.0})
    wandb.close()
    _next_wall_clock_second()
    again = WandbTracker(tmp_path, config, "pathfm", "offline", resume=True)
    again.log(2, {"loss/total": 1.0})
    again.close(failed=True)
    fresh = WandbTracker(tmp_path, config, "pathfm", "offline", resume=False)
    fresh.close()
    ids = [r[0] for r in wandb_offline_runs(tmp_path, count=3)]
    assert ids[0] == ids[1] != ids[2] == (tmp_path / WANDB_ID_FILE).read_text()

    mlflow = MlflowTracker(tmp_path, config, "", "exp", resume=False)
    mlflow.log(1, {"loss/total": 2.0, "monitor/rankme": float("nan")})
    mlflow.close()
    config["b"]["c"], config["new"] = [3], True  # params are immutable: kept, new keys added
    reopened = MlflowTracker(tmp_path, config, "", "exp", resume=True)
    assert reopened.run_id == mlflow.run_id
    reopened.log(2, {"loss/total": 1.0})
    reopened.close(failed=True)
    client = mlflow_client(tmp_path)
    result = client.get_run(mlflow.run_id)
    assert result.info.status == "FAILED"
    assert result.data.params["b.c"] == "[1, 2]" and result.data.params["new"] == "True"
    assert 500 <= len(result.data.params["long"]) < 10_000  # truncated to MLflow's limit
    assert mlflow_points(tmp_path, "loss/total") == [(1, 2.0), (2, 1.0)]
    assert str(mlflow_points(tmp_path, "monitor/rankme")) == "[(1, nan)]"
    other = MlflowTracker(tmp_path, config, "", "exp", resume=False)
    other.close()
    assert other.run_id != mlflow.run_id == reopened.run_id


def test_trackers_off_or_off_process_0_write_nothing(tmp_path):
    config = tiny_dino_config(**{"dashboard.wandb": True, "dashboard.mlflow": True})
    for enabled, c in ((False, config), (True, tiny_dino_config())):
        trackers = Trackers.from_config(c, tmp_path, resume_step=0, enabled=enabled)
        trackers.log(1, {"loss": 1.0})
        trackers.close()
    assert not list(tmp_path.iterdir())


def test_a_failing_tracker_warns_and_training_goes_on(caplog):
    class Broken:
        def log(self, step, scalars):
            raise OSError("disk full")

        def close(self, failed=False):
            raise OSError("disk full")

    logged = []

    class Recorder:
        def log(self, step, scalars):
            logged.append((step, scalars))

        def close(self, failed=False):
            logged.append(failed)

    trackers = Trackers([Broken(), Recorder()])
    trackers.log(3, {"loss": 0.5, "batch_id": 7, "lr": 0.1, "note": "text"})
    trackers.log(4, {"batch_id": 8})  # nothing plotted: nothing logged
    trackers.close(failed=True)
    assert logged == [(3, {"loss/total": 0.5, "schedule/lr": 0.1}), True]
    assert "Broken could not log step 3: disk full" in caplog.text


# ---- Config errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [
        ("wandb_mode", "disabled"),
        ("wandb_project", "a/b"),
        ("wandb_project", " "),
        ("mlflow_experiment", ""),
    ],
)
def test_bad_tracker_keys_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"config\.dashboard\.{key}: "):
        validate(tiny_dino_config(**{f"dashboard.{key}": value}))


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_a_missing_tracker_package_stops_before_training(package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # `import` and find_spec: not installed
    validate(tiny_dino_config())  # off: not needed
    with pytest.raises(ConfigError) as error:
        validate(tiny_dino_config(**{f"dashboard.{package}": True}))
    assert str(error.value).startswith(f"config.dashboard.{package}: ")
    assert f'pip install -e ".[{package}]"' in str(error.value)


def test_an_unusable_mlflow_store_stops_with_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.dashboard\.mlflow_tracking_uri: .*nope://x"):
        MlflowTracker(tmp_path, {}, "nope://x", "pathfm", resume=False)
    assert not (tmp_path / MLFLOW_ID_FILE).exists()
