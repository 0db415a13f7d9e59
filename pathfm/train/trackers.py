"""Weights & Biases and MLflow runs beside TensorBoard: the same scalars under the same tags.

Optional (`dashboard.wandb`, `dashboard.mlflow`; `pip install -e ".[wandb]"` / `".[mlflow]"`) and
written by process 0 only, like the TensorBoard events. A tracker run is named after the workdir
and holds the run's config. Its id is kept in `<workdir>/wandb_run_id` or `<workdir>/mlflow_run_id`,
so that a resumed run continues the same tracker run; a run from step 0 starts a new one. A
tracker that fails to log is warned about and skipped: metrics.jsonl stays the record of truth.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

import ml_collections

from pathfm.atomic import write_atomic
from pathfm.errors import ConfigError
from pathfm.pytree import dotted
from pathfm.train.dashboard import tagged_scalars

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"
MLFLOW_ID_FILE = "mlflow_run_id"
MLFLOW_BATCH = 100  # MLflow's limit of params per log_batch call


class Tracker(Protocol):
    """An experiment tracker run: scalars by tag at a training step, then close."""

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def _stored_id(path: Path, resume: bool) -> str | None:
    """The tracker run id a resumed run continues (None: start a new run)."""
    if not (resume and path.is_file()):
        return None
    return path.read_text().strip() or None


class WandbTracker:
    """A W&B run; "offline" writes `<workdir>/wandb/offline-run-*` and contacts no server."""

    def __init__(
        self, workdir: Path, config: dict[str, Any], project: str, mode: str, resume: bool
    ):
        if mode == "offline":  # W&B's error reports: the only network use of an offline run
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        import wandb

        id_file = workdir / WANDB_ID_FILE
        try:
            self.run = wandb.init(
                project=project,
                dir=str(workdir),
                id=_stored_id(id_file, resume),
                name=workdir.resolve().name,
                config=config,
                allow_val_change=True,  # a resumed run may change e.g. epochs or optim.lr
                resume="allow",
                settings=wandb.Settings(mode=mode, console="off", silent=True),
            )
        except Exception as e:
            raise ConfigError(
                f"config.dashboard.wandb: W&B could not start a run ({e}); 'online' mode needs "
                "`wandb login` (or WANDB_API_KEY), dashboard.wandb_mode=offline needs neither"
            ) from e
        write_atomic(id_file, self.run.id)
        where = self.run.url if mode == "online" else f"`wandb sync {workdir}/wandb/offline-run-*`"
        log.info("W&B run %s (project %s): %s", self.run.id, project, where)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowTracker:
    """An MLflow run: the config as params (and `config.json`), the scalars as metrics."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        tracking_uri: str,
        experiment: str,
        resume: bool,
    ):
        uri = tracking_uri or (workdir.resolve() / "mlruns").as_uri()
        scheme = urllib.parse.urlparse(uri).scheme
        if scheme in ("", "file"):  # MLflow 3 keeps the file store behind an opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if scheme in ("", "file", "sqlite"):  # a local store: no usage reports either
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        id_file = workdir / MLFLOW_ID_FILE
        self.run_id, logged = _stored_id(id_file, resume), {}
        try:
            self.client = MlflowClient(uri)
            if self.run_id:
                try:
                    logged = self.client.get_run(self.run_id).data.params
                    self.client.update_run(self.run_id, status="RUNNING")
                except MlflowException as e:
                    log.warning("MLflow run %s not found in %s (%s): starting a new one",
                                self.run_id, uri, e)  # fmt: skip
                    self.run_id = None
            if not self.run_id:
                found = self.client.get_experiment_by_name(experiment)
                exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
                run = self.client.create_run(exp_id, run_name=workdir.resolve().name)
                self.run_id = run.info.run_id
        except Exception as e:
            raise ConfigError(
                f"config.dashboard.mlflow_tracking_uri: MLflow could not start a run in {uri} "
                f"({e}); check the URI and that its server is up, or use '' (a local store)"
            ) from e
        write_atomic(id_file, self.run_id)
        # Params cannot change once logged: a resumed run adds new keys, config.json is replaced.
        params = [
            Param(key, str(value)[:MAX_PARAM_VAL_LENGTH])
            for key, value in dotted(config).items()
            if key not in logged
        ]
        for start in range(0, len(params), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + MLFLOW_BATCH])
        self.client.log_dict(self.run_id, config, "config.json")
        log.info("MLflow run %s (experiment %s) in %s", self.run_id, experiment, uri)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class Trackers:
    """The enabled trackers of a run (none on processes other than 0): each logged record's
    scalars go to all of them, under their TensorBoard tags."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    @classmethod
    def from_config(
        cls, config: ml_collections.ConfigDict, workdir: str | Path, resume_step: int, enabled: bool
    ) -> Trackers:
        d, workdir = config.dashboard, Path(workdir)
        if not enabled or not (d.wandb or d.mlflow):
            return cls([])
        values = json.loads(config.to_json_best_effort())  # as in <workdir>/config.json
        resume = resume_step > 0
        opened = cls([])
        try:
            if d.wandb:
                opened.trackers.append(
                    WandbTracker(workdir, values, d.wandb_project, d.wandb_mode, resume)
                )
            if d.mlflow:
                opened.trackers.append(
                    MlflowTracker(
                        workdir, values, d.mlflow_tracking_uri, d.mlflow_experiment, resume
                    )
                )
        except BaseException:
            opened.close(failed=True)  # the ones already started
            raise
        return opened

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Logs the record's plotted scalars (as TensorBoard gets them) to every tracker."""
        scalars = tagged_scalars(record)
        if not scalars:
            return
        for tracker in self.trackers:
            try:
                tracker.log(step, scalars)
            except Exception as e:  # a tracker's outage must not stop training
                log.warning("%s could not log step %d: %s", type(tracker).__name__, step, e)

    def close(self, failed: bool = False) -> None:
        """Ends every tracker run, marked failed when training raised."""
        for tracker in self.trackers:
            try:
                tracker.close(failed)
            except Exception as e:
                log.warning("%s could not close its run: %s", type(tracker).__name__, e)
        self.trackers = []
