"""Helpers of the timm interop tests: the architectures, a method with random weights (so
LayerScale, registers and the CLS position row all matter), and timm's view of an export."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util
from testutil import tiny_dino_config

from pathfm.config import dinov2_defaults
from pathfm.ssl.registry import build_method

# (config.model overrides, method): real timm shapes at depth 2 so the tests take seconds.
ARCHITECTURES = {
    "vits16": (dict(size="S", patch_size=16, img_size=224), "dino"),
    "vits8": (dict(size="S", patch_size=8, img_size=224), "dino"),
    "reg4_ls_swiglu": (  # kaiko's ViT-L/14 layout (timm vit_*_patch14_reg4_dinov2) with SwiGLU
        dict(size="S", patch_size=14, img_size=224, num_registers=4, no_embed_class=True),
        "dinov2",
    ),
    "reg4_dinov2_layout": (  # DINOv2's own layout: CLS position row, registers without one
        dict(size="S", patch_size=14, img_size=224, num_registers=4, no_embed_class=False),
        "dinov2",
    ),
}


def arch_config(name: str, **model):
    """A tiny-depth run config of one of ARCHITECTURES (DINOv2 ones with LayerScale + SwiGLU)."""
    overrides, method = ARCHITECTURES[name]
    c = tiny_dino_config()
    if method == "dinov2":
        c = dinov2_defaults(c)
        c.dino.warmup_teacher_temp_epochs = 1
        c.model.ffn = "swiglu"
    c.model.update(embed_dim=0, depth=2, num_heads=0, drop_path_rate=0.0, **overrides)
    c.model.update(model)
    c.crops.update(global_size=c.model.img_size, local_size=c.model.patch_size * 2)
    return c


def random_weights(tree, seed: int):
    """Random values of every leaf's shape (no init to compile): N(0, 0.05), but 1 + N(0, 0.1)
    for LayerNorm scales and LayerScale gammas so every block and register matters."""
    flat = traverse_util.flatten_dict(tree)
    out = {}
    for i, (path, value) in enumerate(sorted(flat.items())):
        noise = np.random.default_rng([seed, i]).normal(size=value.shape).astype(np.float32)
        out[path] = 1.0 + 0.1 * noise if path[-1] in ("gamma", "scale") else 0.05 * noise
    return traverse_util.unflatten_dict(out)


@dataclasses.dataclass
class Run:
    """A method with random student and teacher weights (unlike at init, they differ)."""

    config: object
    method: object
    params: dict
    extra: dict

    def tokens(self, images: np.ndarray, which: str = ""):
        """pathfm's (CLS [B, D], patch tokens [B, N, D]) of uint8 images."""
        fn = jax.jit(self.method.tokens, static_argnums=3)
        cls, patches = fn(self.params, self.extra, images, which or self.method.backbones[0])
        return np.asarray(cls), np.asarray(patches)


def make_run(config, seed: int = 0) -> Run:
    method = build_method(config)
    params, extra = jax.eval_shape(method.init, jax.random.key(seed))
    return Run(config, method, random_weights(params, seed), random_weights(extra, seed + 1))


def timm_model(description: dict, folder: Path, fmt: str = "safetensors", **overrides):
    """The export loaded as the docs say: timm.create_model with the JSON's name and kwargs."""
    import importlib

    import timm

    kwargs = dict(description["timm_kwargs"])
    for key, path in description["timm_class_kwargs"].items():
        module, _, attr = path.rpartition(".")
        kwargs[key] = getattr(importlib.import_module(module), attr)
    kwargs.update(overrides)
    overlay = dict(description["pretrained_cfg"], file=str(folder / description["files"][fmt]))
    model = timm.create_model(
        description["timm_name"],
        pretrained=True,
        pretrained_cfg_overlay=overlay,
        num_classes=0,
        **kwargs,
    )
    return model.eval()


def timm_tokens(model, images: np.ndarray, mean, std):
    """timm's (CLS, patch tokens) of uint8 images normalised as pathfm does (float32)."""
    import torch

    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    return tokens[:, 0], tokens[:, model.num_prefix_tokens :]


def read_json(folder: Path, description: dict) -> dict:
    return json.loads((folder / f"{description['timm_name']}.json").read_text())
