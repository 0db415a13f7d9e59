"""The method-agnostic pre-training loop: input, state, jitted step, monitors, checkpoints, logs.

It knows a method only through `pathfm.ssl.base.Method`. Re-running with the same workdir resumes
from the latest complete checkpoint, with the same data order as an uninterrupted run.
"""

from __future__ import annotations

import logging
import pickle
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pathfm import parallel
from pathfm.data import pipeline
from pathfm.errors import TrainingStopped
from pathfm.evaluation.monitors import monitor_metrics
from pathfm.evaluation.online import OnlineProbe, online_task
from pathfm.parallel import distributed
from pathfm.train.build import build_setup
from pathfm.train.checkpoint import Checkpointer
from pathfm.train.dashboard import Dashboard
from pathfm.train.metrics_log import MetricsLog, archive_records
from pathfm.train.preemption import PreemptionWatch, signals_deferred
from pathfm.train.progress import headline, progress_line
from pathfm.train.trackers import Trackers

log = logging.getLogger(__name__)
# What a run writes about itself; a restart from step 0 moves the old ones aside (dated).
RECORDS = (
    "metrics.jsonl", "tensorboard", "config.json", "config_changes.jsonl", "slides.json",
    "store.json",
)  # fmt: skip


def embed_probe_set(embed, state, images: np.ndarray, batch_size: int, mesh) -> np.ndarray:
    """Frozen-feature embeddings [N, D] of the probe images, batch by batch on the mesh.

    `embed` is the method's `embed(params, extra, images)` jitted with a replicated output. Every
    process holds the same probe images, so this runs unchanged on any number of hosts."""
    n_dev = mesh.devices.size
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pad = (-len(chunk)) % n_dev
        padded = np.concatenate([chunk, chunk[:pad]]) if pad else chunk
        z = np.asarray(
            embed(state["params"], state["extra"], parallel.batch_from_global(padded, mesh))
        )
        out.append(z[: len(chunk)])
    return np.concatenate(out)


def _host_stats(batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Input-side numbers worth logging: read failures, the mix of magnifications, and a
    `batch_id` (CRC32 of the patches' slide and coordinates) that identifies the data order."""
    stats = {"read_errors": int(np.sum(batch.get("read_errors", 0)))}
    for key in ("mpp", "tissue"):
        if key in batch:
            stats[f"mean_{key}"] = float(np.mean(batch[key]))
    if "slide" in batch:
        where = np.stack([batch["slide"], batch["x"], batch["y"]]).astype(np.int64)
        stats["batch_id"] = zlib.crc32(where.tobytes())
    return stats


class NonFiniteCheck:
    """Reads each step's `nonfinite` flag one step late (so the device always has the next step
    queued) and applies `config.on_nonfinite`: warn and go on ("skip"), or raise ("stop")."""

    def __init__(self, policy: str, slide_name: Callable[[int], str], checkpoint_dir: Path):
        self.policy, self.slide_name, self.checkpoint_dir = policy, slide_name, checkpoint_dir
        self.pending = None  # (step, metrics, slide indices) of the last dispatched step
        self.last_good_checkpoint: int | None = None

    def push(self, step: int, metrics: dict, host_batch: dict) -> None:
        """Checks the previous step, then remembers this one."""
        self.flush()
        self.pending = (step, metrics, host_batch.get("slide"))

    def flush(self) -> None:
        """Checks the remembered step now (waits for it)."""
        if self.pending is None:
            return
        step, metrics, slides = self.pending
        self.pending = None
        if not int(metrics["nonfinite"]):
            return
        values = jax.device_get(metrics)
        bad = [k for k, v in values.items() if np.ndim(v) == 0 and not np.isfinite(v)]
        indices = np.unique(slides) if slides is not None else []
        names = sorted({self.slide_name(int(i)) for i in indices})
        where = (
            f"checkpoint step {self.last_good_checkpoint} in {self.checkpoint_dir}"
            if self.last_good_checkpoint is not None
            else f"no checkpoint yet in {self.checkpoint_dir}"
        )
        message = (
            f"step {step}: non-finite {', '.join(bad) or 'update'} (loss={values['loss']}, "
            f"grad_norm={values['grad_norm']}); the update was not applied. Slides in this "
            f"process's batch: {', '.join(names) or 'unknown'}."
        )
        if self.policy == "skip":
            log.warning("%s Skipped (on_nonfinite=skip).", message)
            return
        raise TrainingStopped(
            f"{message} Stopped (on_nonfinite=stop); the last good state is {where}. "
            "Lower optim.lr, raise optim.warmup_epochs or check those slides, then rerun to "
            "resume; --config.on_nonfinite=skip skips such steps instead."
        )


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Pre-trains `config.method` until epochs * steps_per_epoch steps; returns the last metrics.

    Resumes from the latest complete checkpoint in `workdir`; SIGTERM (or a TPU preemption
    notice) saves a checkpoint after the current step and returns with `last['preempted'] = 1`."""
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    mesh = parallel.mesh_from_config(config.mesh)
    setup = build_setup(config, mesh)
    method = setup.method
    total_steps = config.epochs * config.steps_per_epoch
    log.info(
        "mesh %s over %d devices on %d processes",
        dict(mesh.shape),
        mesh.devices.size,
        jax.process_count(),
    )

    # ---- Input -------------------------------------------------------------------------------
    inputs = pipeline.training_input(  # slides or a tile store: the loop's only difference
        config, workdir, jax.process_index(), jax.process_count(), distributed.barrier
    )
    sampler = inputs.sampler
    log.info("the sampler pickles to %d bytes for each input worker", len(pickle.dumps(sampler)))
    data_iter = pipeline.build_train_iterator(
        config, sampler, jax.process_index(), jax.process_count()
    )
    probe = online = None
    if config.monitor.every_steps:
        probe = pipeline.probe_images(config, inputs.probe_sampler(config))
        task, why_off = online_task(config, inputs.source)
        if task:
            online = OnlineProbe(config, inputs.source)
        elif why_off:
            log.warning(why_off)

    # ---- State: the latest complete checkpoint, or a fresh one ---------------------------------
    checkpointer = Checkpointer(workdir / "checkpoints", config.checkpoint.max_to_keep)
    restored = checkpointer.restore_latest(setup.restore_target, data_iter)
    if restored is None:
        state, start = setup.fresh_state(), 0
    else:
        start, state = restored
        log.info("resumed from step %d", start)
    embed = jax.jit(method.embed, out_shardings=parallel.replicated(mesh))
    if start == 0 and is_main:  # a restart from scratch: the old records are kept aside
        archive_records(workdir / name for name in RECORDS)
    metrics_log = MetricsLog(workdir / "metrics.jsonl", resume_step=start, enabled=is_main)
    trackers = Trackers.from_config(config, workdir, resume_step=start, enabled=is_main)
    dashboard = Dashboard.from_config(config, workdir, resume_step=start, enabled=is_main)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        log.info("input:\n  %s", "\n  ".join(inputs.report(config, workdir)))
    nonfinite = NonFiniteCheck(config.on_nonfinite, inputs.slide_name, checkpointer.directory)
    nonfinite.last_good_checkpoint = restored[0] if restored else None

    # ---- Loop ----------------------------------------------------------------------------------
    last: dict[str, float] = {}
    if start < total_steps:
        log.info("compiling the train step (the first step waits for it) ...")
    loop_start = first_done = time.perf_counter()  # first_done: when the compiled step returned
    window_start, window_images, input_wait = time.perf_counter(), 0, 0.0
    read_errors_total = read_errors_reported = 0  # unreadable tiles met this run
    finished = False  # the tracker runs of a loop that raised are marked failed
    try:
        with PreemptionWatch() as preemption:
            for step in range(start, total_steps):
                t0 = time.perf_counter()
                host_batch = next(data_iter)
                input_wait += time.perf_counter() - t0
                read_errors_total += int(np.sum(host_batch.get("read_errors", 0)))
                batch = parallel.shard_batch({k: host_batch[k] for k in method.batch_keys}, mesh)
                t_step = time.perf_counter()
                state, metrics = setup.step(state, batch, setup.step_rng)
                if step == start:
                    first_done = time.perf_counter()
                    log.info("compiled in %.0f s", first_done - t_step)
                nonfinite.push(step + 1, metrics, host_batch)
                window_images += config.batch_size
                done = step + 1

                record = {}
                if done % config.log_every_steps == 0 or done == total_steps or done == start + 1:
                    record.update(jax.device_get(metrics))
                    record.update(_host_stats(host_batch), read_errors_total=read_errors_total)
                    elapsed = time.perf_counter() - window_start
                    record["images_per_s"] = window_images / elapsed
                    record["input_wait_frac"] = input_wait / elapsed
                    window_start, window_images, input_wait = time.perf_counter(), 0, 0.0
                    if read_errors_total > read_errors_reported:
                        log.warning(
                            "%d tile reads failed so far (%d since the last report); each "
                            "slide's first failure was printed, the rest are only counted",
                            read_errors_total, read_errors_total - read_errors_reported,
                        )  # fmt: skip
                        read_errors_reported = read_errors_total
                if probe is not None and (
                    done % config.monitor.every_steps == 0 or done == total_steps
                ):
                    embed_set = lambda images, s=state: embed_probe_set(
                        embed, s, images, config.monitor.batch_size, mesh
                    )
                    record.update(monitor_metrics(jnp.asarray(embed_set(probe))))
                    if online is not None:
                        record.update(online(embed_set))
                if record:
                    metrics_log.write(done, record)
                    last = {**last, **record}
                if record and is_main:
                    now = time.perf_counter()
                    rate = (now - first_done) / (done - start - 1) if done > start + 1 else None
                    line = progress_line(
                        done, total_steps, headline(record), now - loop_start, rate,
                        config.batch_size,
                    )  # fmt: skip
                    log.info(line)
                dashboard.log(done, record, host_batch)
                trackers.log(done, record)
                preempted = preemption.reached(done)
                if done % config.checkpoint.every_steps == 0 or done == total_steps or preempted:
                    nonfinite.flush()  # "stop" must stop before this step is saved
                    checkpointer.save(done, state, data_iter)
                    nonfinite.last_good_checkpoint = done
                if preempted:
                    with signals_deferred():
                        checkpointer.wait()  # committed before anyone is told it is saved
                    log.warning(
                        "preempted: saved checkpoint %d; rerun the same command to resume", done
                    )
                    last["preempted"] = 1
                    break
            nonfinite.flush()
        finished = True
    finally:
        dashboard.close()
        trackers.close(failed=not finished)
        with signals_deferred():  # a second TERM must not cut the commit short
            checkpointer.close()  # commits saves in flight: the last good one before a stop
    return last
