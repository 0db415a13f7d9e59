"""Write a pathfm backbone as a timm `VisionTransformer` state dict: `<name>.safetensors`
(through `safetensors.numpy`, no torch), `<name>.pth` (torch, imported only here), `<name>.json`
(what a user needs to load and feed it) and a `hubconf.py` for `torch.hub.load(folder, ...,
source="local")`.

Files are written under a temporary name and renamed when complete; the JSON comes last.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pathfm.atomic import atomic_path, write_atomic
from pathfm.errors import ConfigError
from pathfm.interop import key_map
from pathfm.interop.timm_import import EXTRA_HINT, require_package
from pathfm.interop.timm_names import timm_kwargs, timm_name
from pathfm.ssl.base import Backbone

FORMATS = ("safetensors", "pth")
HUBCONF = Path(__file__).with_name("hubconf.py")


def check_formats(formats: Iterable[str]) -> None:
    """ConfigError for an unknown format or one whose package is not installed."""
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"config.formats: use one or more of {FORMATS}, got {formats}")
    for fmt, module in (("safetensors", "safetensors"), ("pth", "torch")):
        if fmt in formats:
            require_package(module, f"config.formats={fmt!r}")


def write_safetensors(state: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file of NumPy arrays (no torch)."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=metadata)


def write_pth(state: dict[str, np.ndarray], path: Path) -> None:
    """A plain `torch.save` state dict (what `model.load_state_dict` takes)."""
    try:
        import torch
    except ImportError:
        raise ConfigError(f"writing {path.name} needs PyTorch: {EXTRA_HINT}") from None
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}  # own, writable copies
    with atomic_path(path) as tmp:
        torch.save(tensors, tmp)


def export_backbone(
    backbone: Backbone,
    output: str | Path,
    meta: dict[str, Any],
    formats: Iterable[str] = FORMATS,
) -> dict[str, Any]:
    """Writes the backbone's timm files into `output`; returns the JSON description.

    `meta` adds what the caller knows (mean, std, mpps, method, step, ...); it must hold
    `mean`, `std` and may override `image_size`."""
    formats = tuple(formats)
    check_formats(formats)
    cfg = backbone.config
    name = timm_name(cfg)
    kwargs, classes = timm_kwargs(cfg)
    state = key_map.to_timm(backbone.params, cfg)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    files = {fmt: f"{name}.{fmt}" for fmt in formats}
    meta = {"image_size": cfg.img_size, **meta}
    size = meta["image_size"]
    description = {
        "timm_name": name,
        "timm_kwargs": kwargs,
        "timm_class_kwargs": classes,  # import paths of class-valued kwargs
        "files": files,
        "pretrained_cfg": {  # timm.create_model(..., pretrained_cfg_overlay=dict(this, file=...))
            "num_classes": 0,
            "input_size": [3, size, size],
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
            "crop_pct": 1.0,
            "interpolation": "bicubic",
        },
        "features": {
            "cls": "model.forward_features(x)[:, 0]",
            "patch_tokens": "model.forward_features(x)[:, model.num_prefix_tokens:]",
        },
        "patch_size": cfg.patch_size,
        "embed_dim": cfg.embed_dim,
        # How pathfm resampled pos_embed at other sizes; timm always uses its own ("timm").
        "pos_interp": cfg.pos_interp,
        "num_registers": cfg.num_registers,
        **meta,
    }
    if "safetensors" in formats:
        metadata = {"format": "pt", "timm_name": name, "pathfm": json.dumps(kwargs)}
        write_safetensors(state, output / files["safetensors"], metadata)
    if "pth" in formats:
        write_pth(state, output / files["pth"])
    write_atomic(output / "hubconf.py", HUBCONF.read_text())
    text = json.dumps(description, indent=2) + "\n"
    write_atomic(output / f"{name}.json", text)
    return description
