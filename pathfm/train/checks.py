"""Checks of the training keys: run length and batch, the mesh, the optimiser, checkpoints,
dashboards (TensorBoard, W&B, MLflow), and `model.init_from` (the weights file fits the
backbone)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import ml_collections

from pathfm.errors import ConfigError, require
from pathfm.interop.timm_import import SUFFIXES, check_init_from
from pathfm.parallel import mesh_shape
from pathfm.parallel.partitioning import check_rules
from pathfm.ssl.registry import build_method


def check_training_config(c: ml_collections.ConfigDict, num_devices: int) -> None:
    """ConfigError naming the first invalid training value."""
    for key in ("epochs", "steps_per_epoch", "batch_size", "log_every_steps"):
        require(c[key] > 0, key, f"must be > 0, got {c[key]}")
    require(
        c.batch_size % num_devices == 0,
        "batch_size",
        f"{c.batch_size} must be divisible by the {num_devices} devices (the batch is split "
        "over all of them)",
    )
    require(c.on_nonfinite in ("stop", "skip"), "on_nonfinite", "use 'stop' or 'skip'")
    check_mesh_config(c.mesh, num_devices)
    o = c.optim
    require(o.lr > 0 and o.min_lr >= 0, "optim.lr", "lr must be > 0 and min_lr >= 0")
    require(0 <= o.warmup_epochs <= c.epochs, "optim.warmup_epochs", "must be in [0, epochs]")
    require(
        o.lr_scaling in ("linear256", "sqrt1024"),
        "optim.lr_scaling",
        "use 'linear256' or 'sqrt1024'",
    )
    require(c.checkpoint.every_steps > 0, "checkpoint.every_steps", "must be > 0")
    check_dashboard_config(c.dashboard)


def check_dashboard_config(d: ml_collections.ConfigDict) -> None:
    """TensorBoard's image cadence, and the W&B / MLflow keys (their package is installed)."""
    for key in ("image_every_steps", "image_samples"):
        require(d[key] >= 0, f"dashboard.{key}", "must be >= 0")
    require(
        d.wandb_mode in ("offline", "online"),
        "dashboard.wandb_mode",
        f"{d.wandb_mode!r}: use 'offline' (sync later with `wandb sync`) or 'online' (after "
        "`wandb login`)",
    )
    require(
        bool(d.wandb_project.strip()) and not set(d.wandb_project) & set("/\\#?%:"),
        "dashboard.wandb_project",
        f"{d.wandb_project!r}: give a non-empty W&B project name without / \\ # ? % :",
    )
    require(
        bool(d.mlflow_experiment.strip()),
        "dashboard.mlflow_experiment",
        "give a non-empty MLflow experiment name",
    )
    for key in ("wandb", "mlflow"):
        require(
            not d[key] or importlib.util.find_spec(key) is not None,
            f"dashboard.{key}",
            f'the {key} package is not installed: pip install -e ".[{key}]" (or set '
            f"dashboard.{key}=False)",
        )


def check_mesh_config(mesh: ml_collections.ConfigDict, num_devices: int) -> None:
    """The mesh fits the devices and its partition rules parse."""
    try:
        mesh_shape(mesh.data, mesh.fsdp, num_devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from None
    check_rules(mesh.rules)
    require(mesh.fsdp_min_size >= 0, "mesh.fsdp_min_size", "must be >= 0")


def check_init_from_config(config: ml_collections.ConfigDict) -> None:
    """The weights file exists, has a known format and fits the backbone (shapes only)."""
    path = Path(config.model.init_from)
    require(path.is_file(), "model.init_from", f"{path} does not exist")
    require(path.suffix in SUFFIXES, "model.init_from", f"{path.name}: use one of {SUFFIXES}")
    method = build_method(config)
    params, extra = jax.eval_shape(method.init, jax.random.key(0))
    backbone = method.backbone(params, extra, "student")
    check_init_from(path, config.model.init_prefix, backbone.config, backbone.params)
