"""Resume only what is the same run: the config of a rerun against the one its workdir holds.

A workdir with a complete checkpoint belongs to the run that wrote its `config.json`. A rerun may
change how the run goes on (epochs, logging, checkpoint interval, learning rate, ...): those
changes are logged and appended to `<workdir>/config_changes.jsonl`. It may not change what the
checkpoint or the data stream is: the model architecture, the method and its heads, the seed, the
data source, the global batch or the crop geometry. Such a rerun stops with exit code 2 before it
writes anything, listing every differing key with its old and new value.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

import ml_collections

from pathfm.errors import ConfigError
from pathfm.pytree import dotted
from pathfm.train.checkpoint import complete_steps

log = logging.getLogger(__name__)

CHANGES_FILE = "config_changes.jsonl"

# Keys a resumed run must share with the run that wrote the checkpoint: a prefix ending in "."
# covers a whole section.
FROZEN = (
    "method",
    "seed",
    "batch_size",
    "model.",
    "dino.out_dim",
    "dino.hidden_dim",
    "dino.bottleneck_dim",
    "dino.nlayers",
    "dino.norm_last_layer",
    "dinov2.ibot_separate_head",
    "mae.decoder_embed_dim",
    "mae.decoder_depth",
    "mae.decoder_num_heads",
    "crops.global_size",
    "crops.local_size",
    "crops.n_local",
    "crops.global_scale",
    "crops.local_scale",
    "data.slides",
    "data.synthetic_slides",
    "data.synthetic_size",
    "data.synthetic_mpp",
    "data.patch_size",
    "data.mpps",
    "data.dedupe",
)
# Model keys that change how the same parameters are computed or where they start, not what
# they are: free to change on resume (init_from only matters at step 0).
MODEL_FREE = ("model.attention", "model.remat", "model.init_from", "model.init_prefix")


def is_frozen(key: str) -> bool:
    """Whether the dotted config `key` must stay the same on resume."""
    if key in MODEL_FREE:
        return False
    return any(key == f or (f.endswith(".") and key.startswith(f)) for f in FROZEN)


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': value} of a nested dict, lists as tuples (JSON holds tuples as lists)."""
    return {key: _as_tuple(value) for key, value in dotted(values).items()}


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, new)} for every flattened key of both whose value differs. A key only `new`
    has was added by a later pathfm version: the run had its default."""
    old_flat, new_flat = flatten(old), flatten(new)
    return {
        key: (old_flat[key], new_flat[key])
        for key in sorted(old_flat.keys() & new_flat.keys())
        if old_flat[key] != new_flat[key]
    }


def check_same_run(
    config: ml_collections.ConfigDict, workdir: str | Path
) -> dict[str, tuple[Any, Any]]:
    """The allowed config changes of a rerun on `workdir` ({} for a new run or one with no
    checkpoint yet); ConfigError listing every frozen key that differs."""
    workdir = Path(workdir)
    step = next(iter(complete_steps(workdir / "checkpoints")), None)
    saved = workdir / "config.json"
    if step is None or not saved.is_file():
        return {}
    try:
        old = json.loads(saved.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{saved} cannot be read ({e}); it describes the checkpoints in {workdir}: restore "
            "it, or pass a new --workdir"
        ) from None
    new = json.loads(config.to_json_best_effort())
    changes = config_differences(old, new)
    refused = {k: v for k, v in changes.items() if is_frozen(k)}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ConfigError(
            f"workdir {workdir} holds checkpoint {step} of another run: {len(refused)} key(s) "
            f"that cannot change on resume differ from its config.json ({listed}). Pass a new "
            "--workdir to start this run, or drop these overrides to resume that one; nothing "
            "was changed"
        )
    return changes


def record_changes(workdir: str | Path, changes: dict[str, tuple[Any, Any]]) -> None:
    """Logs the allowed changes of a resumed run and appends them to config_changes.jsonl."""
    if not changes:
        return
    workdir = Path(workdir)
    step = next(iter(complete_steps(workdir / "checkpoints")), None)
    listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    log.warning("resuming from checkpoint %s with config changes: %s", step, listed)
    entry = {
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "from_step": step,
        "changes": {k: [old, new] for k, (old, new) in changes.items()},
    }
    with (workdir / CHANGES_FILE).open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
