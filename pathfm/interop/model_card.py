"""The model card of an export: `README.md` beside the weights, in Markdown, saying what the
backbone is, what it was trained on, what it is for and how to load it (docs/interop.md).

`model_card` is pure (the export's JSON description in, text out); `write_model_card` hashes the
weights files and writes the card.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pathfm.atomic import write_atomic
from pathfm.interop.eva_configs import FOLDER, TASKS
from pathfm.models.vit import VIT_SIZES

FILE = "README.md"
# timm's "giant" is (1408, 40, 16) except in the DINOv2 names, which use pathfm's (1536, 40, 24).
TIMM_GIANT = (1408, 40, 16)
POS_INTERP = {
    "official": (
        "DINO's / DINOv2's `interpolate_pos_encoding` (bicubic, offset 0.1, no antialiasing); "
        "timm resamples with its own antialiased bicubic, so at sizes other than the trained "
        "one timm's features differ slightly from pathfm's"
    ),
    "timm": "timm's `resample_abs_pos_embed`, as timm does at every input size",
}


def name_defaults(name: str) -> dict[str, int]:
    """The dimensions timm's `name` builds without kwargs (`vit_small_patch16_224`: 224 px,
    patch 16, 384 wide, 12 blocks, 6 heads)."""
    family, patch, tail = re.fullmatch(r"vit_([a-z]+)_patch(\d+)_(.+)", name).groups()
    dinov2 = tail.endswith("dinov2")
    dims = TIMM_GIANT if family == "giant" and not dinov2 else VIT_SIZES[family]
    return dict(
        img_size=518 if dinov2 else 224,
        patch_size=int(patch),
        **dict(zip(("embed_dim", "depth", "num_heads"), dims, strict=True)),
    )


def _differences(name: str, kwargs: dict[str, Any]) -> str:
    diff = [
        f"`{k}={kwargs[k]}` (name: {v})" for k, v in name_defaults(name).items() if kwargs[k] != v
    ]
    return ", ".join(diff) if diff else "none in size, patch and width"


def _list(values: list) -> str:
    return ", ".join(f"{v:g}" for v in values)


def model_card(
    description: dict[str, Any], sha256: dict[str, str], batch_size: int | None = None
) -> str:
    """The card's Markdown for an export's JSON `description` (as `export_backbone` returns it,
    with `export_run`'s meta), the SHA-256 of each weights file name, and the run's global
    batch size (None: unknown)."""
    d = description
    name, kwargs, classes = d["timm_name"], d["timm_kwargs"], d["timm_class_kwargs"]
    weights = d["files"].get("safetensors") or next(iter(d["files"].values()))
    mpps = _list(d["mpps"])
    if d["mpp_weights"]:
        mpps += f" (sampled with weights {_list(d['mpp_weights'])})"
    seen = "unknown"
    if batch_size:
        seen = f"{d['step'] * batch_size:,} ({d['step']:,} steps x batch {batch_size:,})"
    args = "".join(f"    {k}={v!r},\n" for k, v in kwargs.items())
    args += "".join(f"    {k}={v},\n" for k, v in classes.items())  # timm.layers.SwiGLUPacked
    hashes = "\n".join(f"| `{file}` | `{digest}` |" for file, digest in sorted(sha256.items()))
    eva = ", ".join(f"`{FOLDER}/{task}.yaml`" for task in TASKS)
    return f"""# {name}: pathfm {d["method"]} {d["backbone"]}, step {d["step"]:,}

A ViT pre-trained by self-supervision on pathology slides with pathfm {d["pathfm_version"]}.

- **Method**: {d["method"]}; exported backbone: {d["backbone"]}
- **Training steps**: {d["step"]:,} (checkpoint `{d["checkpoint"]}`)
- **Architecture**: timm `{name}`, {d["embed_dim"]} wide, patch {d["patch_size"]}, \
{d["image_size"]} px, {d["num_registers"]} registers
- **Normalisation**: RGB / 255, then mean `{d["mean"]}`, std `{d["std"]}`

## Architecture

`{name}` is only timm's closest registered family: the kwargs below define the model, and
`timm.create_model` needs every one of them. Differs from the name's defaults: \
{_differences(name, kwargs)}.

```json
{json.dumps(kwargs, indent=2)}
```

Position embeddings were resampled at other input sizes with `pos_interp="{d["pos_interp"]}"`: \
{POS_INTERP.get(d["pos_interp"], d["pos_interp"])}.

## Data

- **Slides**: `{d["slides"]}`
- **Magnifications**: {mpps} um/px, {d["train_crop_size"]} px global crops
- **Patches seen**: {seen}

## Intended use and limits

For research: frozen features (CLS token or patch tokens) for linear probes, kNN, multiple
instance learning or fine-tuning. Feed tiles at the magnifications above, normalised as above.
Not a medical device and not for diagnosis; features carry the biases of the training slides
(sites, scanners, stains) and must be validated on the data they are used for.

## Load

timm (`pip install timm safetensors`):

```python
import timm

model = timm.create_model(
    "{name}",
    pretrained=True,
    pretrained_cfg_overlay=dict(file="path/to/this/folder/{weights}", num_classes=0),
    num_classes=0,
{args}).eval()
cls = model(x)  # x: [B, 3, H, W], normalised as above
patch_tokens = model.forward_features(x)[:, model.num_prefix_tokens :]
```

torch.hub (needs torch and timm, not pathfm):
`torch.hub.load("path/to/this/folder", "pathfm_vit", source="local")`.

eva (kaiko-eva): {eva}, e.g. `DATA_ROOT=/data/bach eva predict_fit --config eva/bach.yaml`.
They point at this folder; set `CHECKPOINT_PATH` (hub exports: `EXPORT_DIR`) when it moves.

`{name}.json` holds all of the above in machine-readable form.

## Files

| file | SHA-256 |
|---|---|
{hashes}
"""


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_model_card(
    description: dict[str, Any], output: str | Path, batch_size: int | None = None
) -> Path:
    """Writes `<output>/README.md` for the export in `output`; returns its path."""
    output = Path(output)
    sha256 = {f: sha256_of(output / f) for f in description["files"].values()}
    path = output / FILE
    write_atomic(path, model_card(description, sha256, batch_size))
    return path
