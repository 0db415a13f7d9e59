"""What a backbone sees, as pictures: the last block's CLS attention, patch tokens coloured by
their first three principal components, tissue-mask overlays and image grids (the tour notebook,
`notebooks/pathfm_tour.ipynb`, and anyone inspecting a checkpoint).

The attention is not a model output: the ViT is run as is (`pathfm.models.vit`, any layout:
registers, either position-embedding layout, MAE's encoder as its `Backbone`), the last block's
normalised input is captured with Flax's `capture_intermediates`, and the softmax of that block's
queries and keys is recomputed from its `attn/qkv` parameters with the model's own math.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import partial

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from pathfm.evaluation.features import FeatureExtractor
from pathfm.models.vit import VisionTransformer, ViTConfig
from pathfm.ssl.base import Backbone, normalize_images
from pathfm.ssl.registry import build_method


def _last_norm1(cfg: ViTConfig):
    """capture_intermediates filter: only the last block's `norm1` (the attention's input)."""
    path = (f"blocks_{cfg.depth - 1}", "norm1")
    return lambda module, method: method == "__call__" and tuple(module.path) == path


@partial(jax.jit, static_argnums=0)
def _outputs(cfg: ViTConfig, params, x: jax.Array) -> dict[str, jax.Array]:
    """`backbone_outputs`, jitted per architecture."""
    (cls, aux), state = VisionTransformer(cfg).apply(
        {"params": params}, x, capture_intermediates=_last_norm1(cfg), mutable=["intermediates"]
    )
    last = f"blocks_{cfg.depth - 1}"
    h = state["intermediates"][last]["norm1"]["__call__"][0]  # [B, T, D] float32
    qkv_params = params[last]["attn"]["qkv"]
    qkv = h @ qkv_params["kernel"].astype(jnp.float32)
    if "bias" in qkv_params:
        qkv = qkv + qkv_params["bias"].astype(jnp.float32)
    batch, tokens, dim = h.shape
    head_dim = dim // cfg.num_heads
    qkv = qkv.reshape(batch, tokens, 3, cfg.num_heads, head_dim)  # timm's (3, heads, head_dim)
    logits = jnp.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], qkv[:, :, 1]) * head_dim**-0.5
    return {
        "cls": cls,
        "patch_tokens": aux["patch_tokens"],
        "attention": jax.nn.softmax(logits, axis=-1),
    }


def backbone_outputs(backbone: Backbone, x: jax.Array) -> dict[str, jax.Array]:
    """One float32 forward of normalised images x [B, H, W, 3] (H, W multiples of the patch).

    -> 'cls' [B, D] and 'patch_tokens' [B, h*w, D] (row-major grid, after the final norm) and
    'attention' [B, heads, T, T], the last block's softmax over keys, tokens ordered CLS,
    registers, patches (T = 1 + registers + h*w). Runs in float32 with the explicit attention
    kernel and no rematerialisation, whatever the backbone trains with."""
    plain = {"dtype": "float32", "drop_path_rate": 0.0, "remat": "none", "attention": "explicit"}
    names = {f.name for f in dataclasses.fields(backbone.config)}
    cfg = dataclasses.replace(backbone.config, **{k: v for k, v in plain.items() if k in names})
    return _outputs(cfg, backbone.params, jnp.asarray(x, jnp.float32))


def backbone_maps(extractor: FeatureExtractor, images: np.ndarray) -> dict[str, np.ndarray]:
    """`backbone_outputs` of a checkpoint's backbone on uint8 images [B, H, W, 3], as NumPy, plus
    'cls_attention' [B, heads, h, w]: the CLS query's weights on the patch keys (not renormalised:
    the weights on CLS and registers are left out) and 'grid' (h, w).

    `extractor` is `pathfm.runs.extractor.load_extractor(workdir)`: its run config, backbone
    ('teacher', 'student' or MAE's 'encoder') and normalisation are used. MAE's patch tokens come
    out in grid order here, unlike `method.tokens`, which shuffles them."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got {images.dtype} {images.shape}")
    config = extractor.config
    backbone = build_method(config).backbone(extractor.params, extractor.extra, extractor.which)
    p = backbone.config.patch_size
    if images.shape[1] % p or images.shape[2] % p:
        raise ValueError(f"image size {images.shape[1:3]} is not a multiple of the patch {p}")
    x = normalize_images(jnp.asarray(images), config.data.mean, config.data.std)
    out = {k: np.asarray(v) for k, v in backbone_outputs(backbone, x).items()}
    grid = (images.shape[1] // p, images.shape[2] // p)
    prefix = backbone.config.num_prefix_tokens
    cls_row = out["attention"][:, :, 0, prefix:]  # [B, heads, h*w]
    out["cls_attention"] = cls_row.reshape(*cls_row.shape[:2], *grid)
    out["grid"] = np.asarray(grid)
    return out


def cls_attention(extractor: FeatureExtractor, images: np.ndarray) -> np.ndarray:
    """[B, heads, h, w] last-block attention of the CLS token on each patch (DINO's Figure 1)."""
    return backbone_maps(extractor, images)["cls_attention"]


def _principal_axes(x: np.ndarray, k: int) -> np.ndarray:
    """[k, D] top principal directions of centred rows x [M, D] (zero rows beyond the rank), each
    signed so that its largest-magnitude entry is positive (deterministic colours)."""
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    axes = np.zeros((k, x.shape[1]))
    rank = int(np.sum(s > s[0] * 1e-9)) if s.size else 0  # drop rounding-noise directions
    keep = min(k, rank)
    axes[:keep] = vt[:keep]
    signs = np.sign(axes[np.arange(k), np.argmax(np.abs(axes), axis=1)])
    return axes * np.where(signs == 0, 1.0, signs)[:, None]


def pca_rgb(tokens: np.ndarray, grid: Sequence[int], mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 [B, h, w, 3]: patch tokens [B, h*w, D] projected on their first 3 principal
    components (fitted jointly over the batch, so colours compare across images), each min-max
    scaled to 0..255 (DINOv2's feature visualisation). `mask` bool [B, h*w] (or [B, h, w]) limits
    the fit and the scaling to those patches, e.g. tissue; the others are black. A component the
    features do not vary along stays 0."""
    tokens = np.asarray(tokens, np.float64)
    if tokens.ndim == 2:
        tokens = tokens[None]
    h, w = (int(g) for g in grid)
    batch, n, dim = tokens.shape
    if n != h * w:
        raise ValueError(f"{n} tokens per image do not fill a {h}x{w} grid")
    flat = tokens.reshape(-1, dim)
    keep = np.ones(len(flat), bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if keep.shape != (len(flat),):
        raise ValueError(f"mask must hold one flag per token ({batch}x{n}), got {np.shape(mask)}")
    if not keep.any():
        return np.zeros((batch, h, w, 3), np.uint8)
    mean = flat[keep].mean(axis=0)
    proj = (flat - mean) @ _principal_axes(flat[keep] - mean, 3).T  # [B*N, 3]
    lo, hi = proj[keep].min(axis=0), proj[keep].max(axis=0)
    span = hi - lo
    scaled = np.where(span > 0, (proj - lo) / np.where(span > 0, span, 1.0), 0.0)
    rgb = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    rgb[~keep] = 0
    return rgb.reshape(batch, h, w, 3)


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    color: Sequence[int] = (0, 170, 255),
    alpha: float = 0.45,
) -> np.ndarray:
    """uint8 [H, W, 3]: `image` blended with `color` by `alpha` where the bool mask [h, w] is
    True (resized to the image by nearest neighbour: a tissue mask at 8 um/px over a finer
    thumbnail), unchanged elsewhere."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    mask = np.asarray(mask, bool)
    if mask.shape != image.shape[:2]:
        size = (image.shape[1], image.shape[0])
        mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    blend = (1.0 - alpha) * image + alpha * np.asarray(color, np.float64)
    out = image.copy()
    out[mask] = np.round(blend[mask]).astype(np.uint8)
    return out


def tile_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    cols: int | None = None,
    pad: int = 2,
    fill: int = 255,
) -> np.ndarray:
    """uint8 [rows*(h+pad)+pad, cols*(w+pad)+pad, 3]: images (any sizes, uint8 [h, w, 3] or
    grey [h, w]) row by row in cells of the largest size, each centred, `pad` px of `fill`
    around and between them; `cols` defaults to ceil(sqrt(n))."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("tile_grid needs at least one image")
    images = [np.repeat(im[..., None], 3, axis=-1) if im.ndim == 2 else im for im in images]
    if any(im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8 for im in images):
        raise ValueError("tile_grid takes uint8 images [h, w, 3] or [h, w]")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    ch, cw = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    out = np.full((rows * (ch + pad) + pad, cols * (cw + pad) + pad, 3), fill, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y = pad + r * (ch + pad) + (ch - im.shape[0]) // 2
        x = pad + c * (cw + pad) + (cw - im.shape[1]) // 2
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
    return out
