"""Initialise a pathfm ViT from a timm / PyTorch ViT state dict on disk (`config.model.init_from`).

Reads `.safetensors` (NumPy, no torch) and `.pth`/`.pt`/`.bin` (torch, imported here only, with
`weights_only=True` and memory-mapped). Nested checkpoints (`{'teacher': {...}}`, `{'model':
...}`) are flattened with dots; `config.model.init_prefix` selects one backbone inside (e.g.
`teacher.backbone.` of a DINO training checkpoint) and may be left empty when only one is there.
facebookresearch/dinov2's own names (`register_tokens`, `mlp.w12`/`w3`, chunked blocks) are read
too. Position embeddings of another grid are resampled as timm does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pathfm.errors import ConfigError
from pathfm.interop import key_map
from pathfm.models.vit import ViTConfig

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES
IGNORED = ("head.", "fc_norm.", "decoder", "mask_token")  # heads / decoders a backbone skips
EXTRA_HINT = 'pip install -e ".[export]"'


@dataclasses.dataclass(frozen=True)
class Stored:
    """A tensor in a file: its shape now, its values (float32 NumPy) when asked."""

    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]


def require_package(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{what} needs the '{module}' package: {EXTRA_HINT}")


def _torch_entries(path: Path) -> dict[str, Any]:
    require_package("torch", f"reading {path.name}")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # pickles of other objects, truncated files: all mean "unreadable"
        first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise ConfigError(
            f"{path} cannot be read as a PyTorch state dict ({first}); only tensors and plain "
            "containers load (weights_only=True): save the state dict alone, e.g. "
            "torch.save(model.state_dict(), path), or convert it to .safetensors"
        ) from None


def _flatten_torch(tree: Any, prefix: str = "") -> dict[str, Stored]:
    import torch

    out: dict[str, Stored] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_torch(value, f"{name}."))
        elif isinstance(value, torch.Tensor):
            out[name] = Stored(tuple(value.shape), lambda v=value: v.float().numpy())
    return out


def _safetensors_entries(path: Path) -> dict[str, Stored]:
    require_package("safetensors", f"reading {path.name}")
    from safetensors import safe_open

    handle = safe_open(str(path), framework="numpy")

    def load(key: str) -> np.ndarray:
        try:
            return np.asarray(handle.get_tensor(key), np.float32)
        except TypeError:  # bfloat16 has no NumPy dtype: read it through torch
            require_package("torch", f"bfloat16 tensors in {path.name}")
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(key).float().numpy()

    return {
        k: Stored(tuple(handle.get_slice(k).get_shape()), lambda k=k: load(k))
        for k in handle.keys()
    }


def read_entries(path: str | Path) -> dict[str, Stored]:
    """Every tensor of a state-dict file by its dotted key, shapes read, values not yet."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist")
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _safetensors_entries(path)
    if path.suffix in TORCH_SUFFIXES:
        return _flatten_torch(_torch_entries(path))
    raise ConfigError(f"{path}: unknown weights format; use one of {', '.join(SUFFIXES)}")


def _dinov2_names(key: str) -> str:
    """facebookresearch/dinov2 names -> timm names (as timm's `_convert_dinov2`)."""
    key = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key)  # block_chunks > 0
    key = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", key)
    key = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", key)
    return "reg_token" if key == "register_tokens" else key


def select_backbone(entries: dict[str, Stored], prefix: str, path: Path) -> dict[str, Stored]:
    """The tensors under `prefix` with it stripped, in timm names. An empty prefix takes the
    only backbone in the file (the prefix of its one `patch_embed.proj.weight`)."""
    if not prefix:
        anchor = "patch_embed.proj.weight"
        roots = sorted(k[: -len(anchor)] for k in entries if k.endswith(anchor))
        if len(roots) > 1:
            raise ConfigError(
                f"{path} holds {len(roots)} backbones; set config.model.init_prefix to one of "
                + ", ".join(repr(r) for r in roots)
            )
        prefix = roots[0] if roots else ""
    chosen = {
        _dinov2_names(k[len(prefix) :]): v for k, v in entries.items() if k.startswith(prefix)
    }
    if not chosen:
        raise ConfigError(f"{path} has no key starting with config.model.init_prefix={prefix!r}")
    return chosen


def check_fits(entries: dict[str, Stored], cfg: ViTConfig, template: Any, path: str | Path) -> None:
    """ConfigError naming the first key where the file's ViT differs from `cfg`'s."""
    shapes = {k: v.shape for k, v in entries.items()}
    reason = key_map.first_difference(shapes, cfg, template, ignored=IGNORED)
    if reason:
        raise ConfigError(
            f"config.model.init_from: {path} does not fit the model: {reason}. Set config.model "
            "(size, patch_size, embed_dim/depth/num_heads, num_registers, layer_scale_init, ffn) "
            "to the weights' architecture, or config.model.init_prefix to the backbone's keys"
        )


def load_backbone(path: str | Path, prefix: str, cfg: ViTConfig, template: Any) -> Any:
    """The `VisionTransformer` parameters of the backbone in a state-dict file, for a model of
    architecture `cfg` (`template`: its parameters, giving dtypes and leaves timm lacks)."""
    path = Path(path)
    entries = select_backbone(read_entries(path), prefix, path)
    check_fits(entries, cfg, template, path)
    needed = {e.key for e in key_map.entries(cfg)} | {"mask_token"}
    state = {k: v.load() for k, v in entries.items() if k in needed}
    try:
        params = key_map.from_timm(state, cfg, template)
    except ValueError as e:
        raise ConfigError(f"config.model.init_from: {path}: {e}") from None
    log.info("backbone initialised from %s (%d tensors)", path, len(state))
    return params


def check_init_from(path: str | Path, prefix: str, cfg: ViTConfig, template: Any) -> None:
    """`load_backbone`'s checks without reading the values (shapes only): before any work."""
    path = Path(path)
    check_fits(select_backbone(read_entries(path), prefix, path), cfg, template, path)
