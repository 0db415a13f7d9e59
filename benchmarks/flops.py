"""FLOPs of a train step (XLA's count and an analytic matmul count) and device peak rates, for
model FLOPs utilisation (MFU = model FLOPs per step / step time / peak)."""

from __future__ import annotations

import itertools
from typing import Any

import ml_collections

from pathfm.models.vit import ViTConfig, ffn_hidden_dim
from pathfm.ssl.base import backbone_config
from pathfm.ssl.ibot_buffer import buffer_size

# Dense bf16 matrix peak per device, TFLOP/s (vendor data sheets, without sparsity), matched as
# substrings of `jax.Device.device_kind` in this order (the first match wins).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM; also "H100 80GB HBM3"
    ("H200", 989.0),  # and GH200: the same tensor cores as the H100 SXM
    ("H800", 989.0),
    ("A100", 312.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),  # v5p reports itself as "TPU v5"
    ("TPU v6 lite", 918.0),  # v6e (Trillium)
    ("TPU v6e", 918.0),
)


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device of this kind; None when unknown (CPUs)."""
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device_kind.lower():
            return tflops * 1e12
    return None


def xla_flops(compiled: Any) -> float:
    """FLOPs XLA counts in a compiled executable: its per-device program after partitioning.

    `cost_analysis()` returns a dict, a list with one dict per program (older JAX) or None; a
    custom call (cuDNN attention) counts zero, rematerialised work counts again."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _block(dim: int, hidden: int, fc1_out: int, tokens: int) -> float:
    """Forward matmul FLOPs of one transformer block on `tokens` tokens of one image."""
    dense = 2 * tokens * (3 * dim * dim + dim * dim + dim * fc1_out + hidden * dim)
    attention = 2 * 2 * tokens * tokens * dim  # q k^T and weights v
    return dense + attention


def _backbone(cfg: ViTConfig, side: int) -> float:
    """Forward matmul FLOPs of the ViT on one `side` x `side` image."""
    patches = (side // cfg.patch_size) ** 2
    hidden = ffn_hidden_dim(cfg.embed_dim, cfg.mlp_ratio, cfg.ffn, cfg.mlp_hidden)
    fc1_out = 2 * hidden if cfg.ffn == "swiglu" else hidden
    tokens = patches + cfg.num_prefix_tokens
    embed = 2 * patches * cfg.patch_size**2 * 3 * cfg.embed_dim
    return embed + cfg.depth * _block(cfg.embed_dim, hidden, fc1_out, tokens)


def _head(config: ml_collections.ConfigDict, dim: int) -> float:
    """Forward matmul FLOPs of the DINO head on one vector."""
    d = config.dino
    dims = [dim] + [d.hidden_dim] * (d.nlayers - 1) + [d.bottleneck_dim, d.out_dim]
    return 2 * sum(a * b for a, b in itertools.pairwise(dims))


def _mae_forward(config: ml_collections.ConfigDict, cfg: ViTConfig) -> float:
    """Forward matmul FLOPs of MAE on one image: encoder on the visible patches, decoder on all."""
    m, side, p = config.mae, config.crops.global_size, cfg.patch_size
    patches = (side // p) ** 2
    keep = int(patches * (1 - m.mask_ratio))
    embed = 2 * patches * p * p * 3 * cfg.embed_dim
    hidden = ffn_hidden_dim(cfg.embed_dim, cfg.mlp_ratio, cfg.ffn, cfg.mlp_hidden)
    fc1_out = 2 * hidden if cfg.ffn == "swiglu" else hidden
    encoder = embed + cfg.depth * _block(cfg.embed_dim, hidden, fc1_out, 1 + keep)
    e = m.decoder_embed_dim
    dec_hidden = int(e * cfg.mlp_ratio)
    decoder = 2 * (1 + keep) * cfg.embed_dim * e + 2 * (1 + patches) * e * p * p * 3
    decoder += m.decoder_depth * _block(e, dec_hidden, dec_hidden, 1 + patches)
    return encoder + decoder


def ibot_buffer_rows(config: ml_collections.ConfigDict, devices: int) -> int:
    """Rows of one device's DINOv2 iBOT buffer: the collate `upperbound` of its 2B / devices
    global crops (`pathfm.ssl.ibot_buffer.buffer_size`, what `DinoV2.loss` gathers)."""
    cfg, v = backbone_config(config.model, 0.0), config.dinov2
    rows = 2 * config.batch_size // devices
    n_tokens = (config.crops.global_size // cfg.patch_size) ** 2
    return buffer_size(rows, n_tokens, v.mask_probability, tuple(v.mask_ratio))


def analytic_step_flops(config: ml_collections.ConfigDict, devices: int) -> float:
    """Matmul FLOPs of one train step per device, counted from the architecture: the trained
    forward passes three times (forward, and two matmuls per matmul backward), the teacher's
    once. What the step computes, so the DINOv2 iBOT head (student and teacher) counts on the
    rows of each device's masked-token buffer, padding included, not on every patch token."""
    cfg = backbone_config(config.model, 0.0)
    batch, cr = config.batch_size, config.crops
    if config.method == "mae":
        return 3 * batch * _mae_forward(config, cfg) / devices
    head = _head(config, cfg.embed_dim)
    crops = 2 * _backbone(cfg, cr.global_size) + cr.n_local * _backbone(cfg, cr.local_size)
    student = crops + (2 + cr.n_local) * head  # the DINO head on the CLS of every crop
    teacher = 2 * _backbone(cfg, cr.global_size) + 2 * head
    per_device = batch * (3 * student + teacher) / devices
    if config.method == "dinov2":  # the iBOT head on the buffer: student (x3) and teacher
        per_device += (3 + 1) * ibot_buffer_rows(config, devices) * head
    return per_device
