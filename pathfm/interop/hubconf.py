"""torch.hub entry point of a pathfm export folder (copied there by `pathfm.interop.timm_export`).

    model = torch.hub.load("path/to/export", "pathfm_vit", source="local")  # needs torch + timm
    cls = model.forward_features(x)[:, 0]  # x: [B, 3, H, W] normalised with the JSON's mean/std

Needs only torch and timm, not pathfm.
"""

import importlib
import json
from pathlib import Path

dependencies = ["torch", "timm"]
_HERE = Path(__file__).resolve().parent


def _description(name: str | None) -> dict:
    found = sorted(p for p in _HERE.glob("*.json") if "timm_name" in json.loads(p.read_text()))
    if name:
        found = [p for p in found if p.stem == name]
    if len(found) != 1:
        names = ", ".join(p.stem for p in found) or "none"
        raise ValueError(f"pass name= one of the exports in {_HERE}: {names}")
    return json.loads(found[0].read_text())


def pathfm_vit(pretrained: bool = True, name: str | None = None, **overrides):
    """The exported ViT as a timm model without classifier (`num_classes=0`): `model(x)` is the
    CLS embedding. `overrides` go to `timm.create_model` (e.g. `dynamic_img_size=False`)."""
    import timm

    meta = _description(name)
    kwargs = dict(meta["timm_kwargs"])
    for key, path in meta["timm_class_kwargs"].items():
        module, _, attr = path.rpartition(".")
        kwargs[key] = getattr(importlib.import_module(module), attr)
    kwargs.update(overrides)
    weights = _HERE / next(iter(meta["files"].values()))
    overlay = dict(meta["pretrained_cfg"], file=str(weights))
    return timm.create_model(
        meta["timm_name"],
        pretrained=pretrained,
        pretrained_cfg_overlay=overlay,
        num_classes=0,
        **kwargs,
    )
