"""Exported backbones in real timm models compute pathfm's features: CLS and patch tokens within
1e-4 (float32) on random images and on real slide patches, for ViT-S/16, a patch-8 ViT, ViTs with
4 registers + LayerScale + SwiGLU (timm's layout and DINOv2's own), and the MAE encoder; the
state dicts load with strict=True under the name and kwargs the JSON gives."""

import cv2
import numpy as np
import pytest

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

from interop.timm_util import (  # noqa: E402
    ARCHITECTURES,
    arch_config,
    make_run,
    read_json,
    timm_model,
    timm_tokens,
)

from pathfm.interop.timm_export import export_backbone  # noqa: E402

TOLERANCE = 1e-4
EXPECTED_NAMES = {
    "vits16": "vit_small_patch16_224",
    "vits8": "vit_small_patch8_224",
    "reg4_ls_swiglu": "vit_small_patch14_reg4_dinov2",
    "reg4_dinov2_layout": "vit_small_patch14_reg4_dinov2",
}


def _export(run, folder, which=""):
    backbone = run.method.backbone(run.params, run.extra, which or run.method.backbones[0])
    d = run.config.data
    return export_backbone(backbone, folder, {"mean": list(d.mean), "std": list(d.std)})


def _max_diff(pathfm_tokens, timm_out):
    return [float(np.max(np.abs(a - b))) for a, b in zip(pathfm_tokens, timm_out, strict=True)]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_exported_backbone_matches_timm(name, tmp_path, random_images, slide_patches):
    run = make_run(arch_config(name))
    description = _export(run, tmp_path)
    assert description["timm_name"] == EXPECTED_NAMES[name]
    assert read_json(tmp_path, description) == description
    model = timm_model(description, tmp_path)
    state = torch.load(tmp_path / description["files"]["pth"], weights_only=True)
    assert model.load_state_dict(state, strict=True)  # every key, nothing extra
    assert model.num_prefix_tokens == 1 + run.config.model.num_registers
    for images in (random_images, slide_patches):
        ours = run.tokens(images)
        theirs = timm_tokens(model, images, description["mean"], description["std"])
        cls_diff, patch_diff = _max_diff(ours, theirs)
        print(f"{name}: max |diff| CLS {cls_diff:.2e} patches {patch_diff:.2e}")
        assert cls_diff <= TOLERANCE and patch_diff <= TOLERANCE


def test_student_export_is_the_student(tmp_path, random_images):
    run = make_run(arch_config("vits16"))
    description = _export(run, tmp_path, "student")
    theirs = timm_tokens(timm_model(description, tmp_path), random_images, *_norm(description))
    assert max(_max_diff(run.tokens(random_images, "student"), theirs)) <= TOLERANCE
    assert max(_max_diff(run.tokens(random_images, "teacher"), theirs)) > 1e-2


def _norm(description):
    return description["mean"], description["std"]


@pytest.mark.parametrize("size", [224, 160, 288])
def test_mae_encoder_export_matches_at_every_size(size, tmp_path, slide_patches):
    """MAE exports its img_size sin-cos table; at other sizes pathfm's encoder resamples that table
    as timm's dynamic_img_size does (pos_interp="timm"), so both give the same tokens."""
    import jax
    import jax.numpy as jnp

    config = arch_config("vits16", size="S", patch_size=16)
    config.method = "mae"
    config.model.pos_interp = "timm"
    config.mae.update(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    run = make_run(config)
    description = _export(run, tmp_path)
    assert description["timm_name"] == "vit_small_patch16_224"
    assert description["pos_interp"] == "timm"
    model = timm_model(description, tmp_path)
    # MAE's encoder with nothing masked and patches in their own order (noise = position).
    n = (size // 16) ** 2

    def encode(params, images):
        x = (images.astype(jnp.float32) / 255.0 - jnp.asarray(run.config.data.mean)) / jnp.asarray(
            run.config.data.std
        )
        noise = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32), (x.shape[0], n))
        latent, _, _ = run.method.encoder.apply({"params": params}, x, None, 0.0, noise=noise)
        return latent[:, 0], latent[:, 1:]

    random_images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), np.uint8)
    tissue = np.stack(
        [cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in slide_patches]
    )
    for images in (random_images, tissue):
        ours = [np.asarray(t) for t in jax.jit(encode)(run.params["encoder"], images)]
        diffs = _max_diff(ours, timm_tokens(model, images, *_norm(description)))
        print(f"mae {size} px: max |diff| CLS {diffs[0]:.2e} patches {diffs[1]:.2e}")
        assert max(diffs) <= TOLERANCE
        cls, _ = run.tokens(images)  # the method's own (shuffled-order) tokens agree on CLS
        assert np.max(np.abs(cls - ours[0])) <= TOLERANCE
