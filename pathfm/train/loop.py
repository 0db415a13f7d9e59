"""The method-agnostic pre-training loop: input, state, jitted step, monitors, checkpoints, logs.

It knows a method only through `pathfm.ssl.base.Method`. Re-running with the same workdir resumes
from the latest complete checkpoint, with the same data order as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from pathfm import parallel
from pathfm.data import pipeline
from pathfm.evaluation.monitors import monitor_metrics
from pathfm.ssl.registry import build_method
from pathfm.train.checkpoint import Checkpointer
from pathfm.train.metrics_log import MetricsLog
from pathfm.train.optimizer import build_optimizer
from pathfm.train.state import abstract_state, create_state, jit_train_step, make_train_step

log = logging.getLogger("pathfm")


def embed_probe_set(embed, state, images: np.ndarray, batch_size: int, mesh) -> np.ndarray:
    """Frozen-feature embeddings [N, D] of the probe images, batch by batch on the mesh.

    `embed` is the method's jitted `embed(params, extra, images)`."""
    n_dev = mesh.devices.size
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pad = (-len(chunk)) % n_dev
        padded = np.concatenate([chunk, chunk[:pad]]) if pad else chunk
        sharded = jax.device_put(padded, parallel.batch_sharding(mesh))
        z = np.asarray(embed(state["params"], state["extra"], sharded))
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


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Pre-trains `config.method` until epochs * steps_per_epoch steps; returns the last metrics."""
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    mesh = parallel.make_mesh()
    method = build_method(config)
    total_steps = config.epochs * config.steps_per_epoch
    rng = jax.random.key(config.seed)
    init_rng, step_rng = jax.random.split(rng)

    # ---- Input -------------------------------------------------------------------------------
    source = pipeline.resolve_slide_source(config, workdir)
    index = pipeline.build_slide_index(config, source, workdir)
    log.info(
        "%d usable slides from %s (%d rejected)", len(index.slides), source, len(index.rejected)
    )
    sampler = pipeline.build_sampler(config, index)
    data_iter = pipeline.build_train_iterator(
        config, sampler, jax.process_index(), jax.process_count()
    )
    probe = None
    if config.monitor.every_steps:
        probe = pipeline.probe_images(config, pipeline.build_sampler(config, index, False))

    # ---- Model, optimiser and state ------------------------------------------------------------
    abstract_params = jax.eval_shape(method.init, init_rng)[0]
    optimizer, schedules = build_optimizer(config, method, abstract_params)
    checkpointer = Checkpointer(workdir / "checkpoints", config.checkpoint.max_to_keep)
    start = checkpointer.latest_step()
    if start is None:
        state = create_state(method, optimizer, init_rng, mesh)
        start = 0
    else:
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=parallel.replicated(mesh)),
            abstract_state(method, optimizer, init_rng),
        )
        state = checkpointer.restore(start, target, data_iter)
        log.info("resumed from step %d", start)
    train_step = jit_train_step(
        make_train_step(method, optimizer, schedules), state, mesh, method.batch_keys
    )
    embed = jax.jit(method.embed)  # jitted once: a bound method is a new object on every access
    metrics_log = MetricsLog(workdir / "metrics.jsonl", resume_step=start, enabled=is_main)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        (workdir / "slides.json").write_text(
            json.dumps(
                {"usable": [s.path for s in index.slides], "rejected": index.rejected}, indent=2
            )
        )

    # ---- Loop ----------------------------------------------------------------------------------
    last: dict[str, float] = {}
    bar = tqdm(total=total_steps, initial=start, disable=not sys.stderr.isatty(), unit="step")
    window_start, window_images, input_wait = time.perf_counter(), 0, 0.0
    read_errors_total = 0  # unreadable tiles met this run (each warned about by slide name)
    for step in range(start, total_steps):
        t0 = time.perf_counter()
        host_batch = next(data_iter)
        input_wait += time.perf_counter() - t0
        read_errors_total += int(np.sum(host_batch.get("read_errors", 0)))
        batch = parallel.shard_batch({k: host_batch[k] for k in method.batch_keys}, mesh)
        state, metrics = train_step(state, batch, step_rng)
        window_images += config.batch_size
        done = step + 1
        bar.update(1)

        record = {}
        if done % config.log_every_steps == 0 or done == total_steps or done == start + 1:
            record.update(jax.device_get(metrics))
            record.update(_host_stats(host_batch), read_errors_total=read_errors_total)
            elapsed = time.perf_counter() - window_start
            record["images_per_s"] = window_images / elapsed
            record["input_wait_frac"] = input_wait / elapsed
            window_start, window_images, input_wait = time.perf_counter(), 0, 0.0
            bar.set_postfix(loss=f"{float(record['loss']):.4f}")
        if probe is not None and (done % config.monitor.every_steps == 0 or done == total_steps):
            z = embed_probe_set(embed, state, probe, config.monitor.batch_size, mesh)
            record.update(monitor_metrics(jnp.asarray(z)))
        if record:
            metrics_log.write(done, record)
            last = {**last, **record}
        if done % config.checkpoint.every_steps == 0 or done == total_steps:
            checkpointer.save(done, state, data_iter)
    bar.close()
    checkpointer.close()
    return last
