"""Frozen features of a pathfm backbone (`pathfm.runs.extractor.load_extractor` reads one from a
run's checkpoint): CLS and mean patch-token embeddings, jitted and split
over the device mesh, written to disk as plain NumPy arrays.

On disk (`save_features`): a folder with `cls.npy` [N, D] float32, `mean_patch.npy` [N, D]
float32, `labels.npy` [N] int64 when labels are known, and `meta.json` (checkpoint, step, method,
backbone, image size, count). `np.load(folder / "cls.npy", mmap_mode="r")` reads them lazily.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from pathfm import parallel
from pathfm.errors import DataError
from pathfm.ssl.registry import build_method


def default_backbone(config: ml_collections.ConfigDict) -> str:
    """The backbone evaluated unless one is named: the teacher (DINO, DINOv2), the encoder (MAE)."""
    return build_method(config).backbones[0]


@dataclasses.dataclass
class FeatureExtractor:
    """uint8 images [B, H, W, 3] -> {'cls': [B, D], 'mean_patch': [B, D]} float32 NumPy."""

    config: ml_collections.ConfigDict
    which: str  # 'teacher' / 'student' (DINO, DINOv2) or 'encoder' (MAE)
    params: Any
    extra: Any
    step: int
    mesh: Mesh
    _fn: Callable = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        method = build_method(self.config)

        def features(params, extra, images):
            cls, patches = method.tokens(params, extra, images, self.which)
            return {"cls": cls, "mean_patch": jnp.mean(patches, axis=1)}

        self._fn = jax.jit(features, out_shardings=parallel.replicated(self.mesh))
        self.params, self.extra = jax.device_put(
            (self.params, self.extra), parallel.replicated(self.mesh)
        )

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        n_dev = self.mesh.devices.size
        pad = (-len(images)) % n_dev
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        batch = parallel.batch_from_global(np.asarray(images, np.uint8), self.mesh)
        out = jax.device_get(self._fn(self.params, self.extra, batch))
        return {k: np.asarray(v[: len(images) - pad], np.float32) for k, v in out.items()}


def extract_features(
    extractor: FeatureExtractor,
    batches: Iterable[tuple[np.ndarray, np.ndarray | None]],
    total: int | None = None,
) -> dict[str, np.ndarray]:
    """Features of every (images [B, H, W, 3], labels [B] or None) batch, concatenated."""
    parts: dict[str, list[np.ndarray]] = {"cls": [], "mean_patch": [], "labels": []}
    quiet = not sys.stderr.isatty()  # a redirected log gets the callers' phase lines instead
    with tqdm(total=total, unit="img", desc="features", leave=False, disable=quiet) as bar:
        for images, labels in batches:
            for key, value in extractor(images).items():
                parts[key].append(value)
            if labels is not None:
                parts["labels"].append(np.asarray(labels, np.int64))
            bar.update(len(images))
    if not parts["cls"]:
        raise DataError("no images to extract features from")
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def save_features(folder: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Writes the arrays as <name>.npy and meta.json (written last: its presence marks a
    complete folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", value)
    count = len(arrays["cls"])
    (folder / "meta.json").write_text(json.dumps({**meta, "count": count}, indent=2))
    return folder


def load_features(folder: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a complete feature folder written by `save_features`."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        raise DataError(f"{folder} holds no complete feature set (meta.json is missing)")
    return {p.stem: np.load(p) for p in sorted(folder.glob("*.npy"))}
