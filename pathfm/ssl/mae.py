"""MAE: masked autoencoding of 75% of the patches with a light decoder (He et al. 2022, section 3).

Follows facebookresearch/mae main_pretrain.py / models_mae.py. Batches hold uint8 `images`
[B, S, S, 3] (one random-resized crop + flip each); normalisation, masking and the norm-pix loss
run on the accelerator. There is no teacher: `extra` is empty.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from pathfm.models.mae import MAE, MAEEncoder, init_mae_params
from pathfm.models.sincos import sincos_2d_pos_embed
from pathfm.ssl.base import (
    Backbone,
    Batch,
    Params,
    backbone_config,
    check_backbone,
    normalize_images,
)
from pathfm.ssl.mae_loss import mae_loss


class Mae:
    """MAE as a `pathfm.ssl.base.Method`."""

    name = "mae"
    batch_keys = ("images",)
    backbones = ("encoder", "student")  # "student" names the encoder too (MAE has no teacher)
    lr_warmup = "mae"  # base * i / W (util/lr_sched.py), not DINO's endpoint-inclusive linspace
    # MAE does not clip (engine_pretrain.py train_one_epoch: loss_scaler(...) with util/misc.py
    # NativeScalerWithGradNormCount's clip_grad=None); its config sets optim.clip_grad = 0.
    clip_rule = "per_tensor"
    freeze_rule = "drop"  # nothing is frozen (`frozen_rule`)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        m = config.mae
        self.vit = backbone_config(config.model, config.model.drop_path_rate)
        self.model = MAE(self.vit, m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads)
        self.encoder = MAEEncoder(backbone_config(config.model, 0.0))
        self.mean, self.std = tuple(config.data.mean), tuple(config.data.std)

    def init(self, rng: jax.Array) -> tuple[Params, Params]:
        size = self.config.crops.global_size
        images = jnp.zeros((1, size, size, 3), jnp.float32)
        return init_mae_params(self.model, rng, images, self.config.mae.mask_ratio), {}

    def loss(self, params: Params, extra: Params, batch: Batch, rng, step):
        images = normalize_images(batch["images"], self.mean, self.std)  # float32 targets
        mask_key, drop_key = jax.random.split(rng)
        pred, mask = self.model.apply(
            {"params": params},
            images.astype(jnp.dtype(self.vit.dtype)),
            mask_key,
            self.config.mae.mask_ratio,
            train=True,
            rngs={"dropout": drop_key},
        )
        loss = mae_loss(images, pred, mask, self.vit.patch_size, self.config.mae.norm_pix_loss)
        return loss, {"metrics": {"masked_fraction": jnp.mean(mask)}}

    def update_extra(self, extra: Params, params: Params, aux: dict, step) -> Params:
        return extra

    def embed(self, params: Params, extra: Params, images: jax.Array) -> jax.Array:
        """Encoder CLS [B, D] on all patches (mask ratio 0: nothing removed, order irrelevant)."""
        return self.tokens(params, extra, images)[0]

    def tokens(self, params: Params, extra: Params, images: jax.Array, which: str = "encoder"):
        """(CLS, patch tokens in a shuffled order: only order-free pooling is meaningful)."""
        check_backbone(self, which)
        x = normalize_images(images, self.mean, self.std, jnp.dtype(self.vit.dtype))
        latent, _, _ = self.encoder.apply({"params": params["encoder"]}, x, jax.random.key(0), 0.0)
        return latent[:, 0], latent[:, 1:]

    def frozen_rule(self) -> tuple[str | None, int]:
        return None, 0

    def backbone(self, params: Params, extra: Params, which: str = "encoder") -> Backbone:
        """The encoder plus its fixed 2D sin-cos table (zero CLS row) for `model.img_size` as
        `pos_embed`: exactly what `forward_encoder` adds, so a `VisionTransformer` (and timm's
        `vit_*_patch16_224`, which keeps MAE's table as a parameter) computes the same tokens."""
        check_backbone(self, which)
        # MAEEncoder has neither registers nor a choice of position-embedding layout.
        cfg = dataclasses.replace(self.encoder.config, num_registers=0, no_embed_class=False)
        table = sincos_2d_pos_embed(cfg.embed_dim, cfg.grid_size, cls_token=True)
        pos_embed = jnp.asarray(table, jnp.float32)[None]  # [1, 1 + N, D]
        return Backbone({**params["encoder"], "pos_embed": pos_embed}, cfg)

    def with_backbone(self, params: Params, extra: Params, backbone: Params):
        """The encoder from `backbone`; its `pos_embed` is dropped: MAE's stays the fixed table."""
        encoder = {k: v for k, v in backbone.items() if k != "pos_embed"}
        return {**params, "encoder": encoder}, extra
