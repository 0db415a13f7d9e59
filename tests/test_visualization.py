"""The tour's pictures: recomputed attention is the model's own (its weights rebuild the block's
attention output), PCA colours follow the directions the features vary along, overlays and grids
put every pixel where it belongs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testutil import tiny_dino_config

from pathfm import parallel
from pathfm.evaluation.features import FeatureExtractor
from pathfm.models.vit import VisionTransformer, ViTConfig
from pathfm.ssl.base import Backbone
from pathfm.ssl.registry import build_method
from pathfm.visualization import (
    backbone_maps,
    backbone_outputs,
    cls_attention,
    overlay_mask,
    pca_rgb,
    tile_grid,
)

LAYOUTS = {
    "plain": dict(),
    "registers": dict(num_registers=2),
    "registers_no_embed_class_layerscale": dict(
        num_registers=2, no_embed_class=True, layer_scale_init=0.5
    ),
}


def _captured(model, params, x, last):
    """The last block's norm1 output and attention output, as the model computes them."""
    wanted = {(last, "norm1"), (last, "attn")}
    keep = lambda module, method: method == "__call__" and tuple(module.path) in wanted
    apply = lambda p, x: model.apply(
        {"params": p}, x, capture_intermediates=keep, mutable=["intermediates"]
    )
    (cls, aux), state = jax.jit(apply)(params, x)
    inter = state["intermediates"][last]
    return cls, aux, inter["norm1"]["__call__"][0], inter["attn"]["__call__"][0]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_attention_weights_rebuild_the_last_blocks_attention_output(layout):
    cfg = ViTConfig(
        patch_size=8, embed_dim=32, depth=3, num_heads=4, img_size=32, **LAYOUTS[layout]
    )
    model = VisionTransformer(cfg)
    x = jax.random.normal(jax.random.key(1), (2, 40, 48, 3))  # a 5x6 grid: resampled positions
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    # Non-zero biases everywhere, so a dropped bias or a wrong qkv layout would show.
    params = jax.tree.map(lambda p: p + 0.05 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
    out = backbone_outputs(Backbone(params, cfg), x)

    cls, aux, normed, attn_out = _captured(model, params, x, "blocks_2")
    tokens = 1 + cfg.num_registers + 30
    weights = out["attention"]
    assert weights.shape == (2, 4, tokens, tokens)
    assert float(weights.min()) >= 0
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    # The weights times the values, through the output projection, are the block's own output.
    attn = params["blocks_2"]["attn"]
    v = (normed @ attn["qkv"]["kernel"] + attn["qkv"]["bias"]).reshape(2, tokens, 3, 4, 8)[:, :, 2]
    mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, tokens, 32)
    rebuilt = mixed @ attn["proj"]["kernel"] + attn["proj"]["bias"]
    np.testing.assert_allclose(rebuilt, attn_out, atol=1e-5)
    # Shuffling the heads' rows breaks it: the check is sensitive to the layout.
    wrong = jnp.einsum("bhqk,bkhd->bqhd", weights[:, ::-1], v).reshape(2, tokens, 32)
    assert not np.allclose(wrong @ attn["proj"]["kernel"] + attn["proj"]["bias"], attn_out)
    np.testing.assert_allclose(out["cls"], cls, atol=1e-6)
    np.testing.assert_allclose(out["patch_tokens"], aux["patch_tokens"], atol=1e-6)


def _extractor(config, which):
    method = build_method(config)
    params, extra = jax.jit(method.init)(jax.random.key(0))
    mesh = parallel.single_device_mesh()
    return FeatureExtractor(config, which, params, extra, 0, mesh)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), np.uint8)


def test_backbone_maps_of_a_dino_teacher_with_registers():
    config = tiny_dino_config()
    config.model.num_registers = 2
    extractor = _extractor(config, "teacher")
    images = _images(3, 40)  # 5x5 patches, trained at 4x4
    maps = backbone_maps(extractor, images)
    features = extractor(images)
    np.testing.assert_allclose(maps["cls"], features["cls"], atol=1e-5)
    np.testing.assert_allclose(maps["patch_tokens"].mean(1), features["mean_patch"], atol=1e-5)
    assert tuple(maps["grid"]) == (5, 5)
    heat = maps["cls_attention"]
    assert heat.shape == (3, 2, 5, 5)
    # The CLS row's weights on the 25 patches, in grid order, registers and CLS left out.
    np.testing.assert_array_equal(heat.reshape(3, 2, 25), maps["attention"][:, :, 0, 3:])
    prefix_weight = maps["attention"][:, :, 0, :3].sum(-1)
    np.testing.assert_allclose(heat.sum((2, 3)) + prefix_weight, 1.0, atol=1e-5)
    np.testing.assert_array_equal(cls_attention(extractor, images), heat)


def test_backbone_maps_of_a_student_differ_from_the_teacher_only_by_its_parameters():
    config = tiny_dino_config()
    teacher, student = _extractor(config, "teacher"), _extractor(config, "student")
    student.params = jax.tree.map(lambda p: p * 1.1, student.params)
    images = _images(2, 32)
    np.testing.assert_allclose(
        backbone_maps(student, images)["cls"], student(images)["cls"], atol=1e-5
    )
    assert not np.allclose(backbone_maps(teacher, images)["cls"], student(images)["cls"])


def test_backbone_maps_of_an_mae_encoder_keep_the_grid_order():
    config = tiny_dino_config(method="mae")
    config.mae.update(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    extractor = _extractor(config, "encoder")
    images = _images(2, 32)
    maps = backbone_maps(extractor, images)
    features = extractor(images)  # MAE's tokens come shuffled: compare order-free statistics
    np.testing.assert_allclose(maps["cls"], features["cls"], atol=1e-5)
    np.testing.assert_allclose(maps["patch_tokens"].mean(1), features["mean_patch"], atol=1e-5)
    # Grid order: change one patch; attention mixes every token, but that patch's own token
    # (residual stream) moves the most.
    changed = images.copy()
    changed[:, :8, 24:] = 0  # patch (row 0, column 3) only
    delta = np.abs(backbone_maps(extractor, changed)["patch_tokens"] - maps["patch_tokens"])
    assert np.all(delta.sum(-1).argmax(1) == 3)


def test_backbone_maps_reject_images_off_the_patch_grid():
    extractor = _extractor(tiny_dino_config(), "teacher")
    with pytest.raises(ValueError, match="multiple of the patch"):
        backbone_maps(extractor, _images(1, 36))
    with pytest.raises(ValueError, match="uint8"):
        backbone_maps(extractor, _images(1, 32).astype(np.float32))


def test_pca_rgb_of_features_varying_along_two_axes_colours_columns_red_and_rows_green():
    h, w, dim = 4, 6, 16
    rows, cols = np.mgrid[0:h, 0:w]
    e = np.eye(dim)
    # Over the full grid, row and column are uncorrelated; the column varies more.
    tokens = 3.0 * cols.reshape(-1, 1) * e[5] + 1.0 * rows.reshape(-1, 1) * e[2] + 7.0
    rgb = pca_rgb(np.stack([tokens, tokens]), (h, w))
    assert rgb.shape == (2, h, w, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, ..., 0], np.round(255 * cols / (w - 1)))
    np.testing.assert_array_equal(rgb[0, ..., 1], np.round(255 * rows / (h - 1)))
    np.testing.assert_array_equal(rgb[..., 2], 0)  # no third direction of variation
    np.testing.assert_array_equal(rgb[0], rgb[1])


def test_pca_rgb_sign_is_fixed_by_the_largest_loading():
    t = np.arange(8.0)
    v = np.zeros(4)
    v[:2] = (0.6, -0.8)  # the largest loading is negative: the axis is flipped to -v
    rgb = pca_rgb((t[:, None] * v)[None], (2, 4))
    np.testing.assert_array_equal(rgb[0, ..., 0].ravel(), np.round(255 * (7 - t) / 7))
    # Features growing along -v grow along the chosen axis: red rises with t.
    flipped = pca_rgb((t[:, None] * -v)[None], (2, 4))
    np.testing.assert_array_equal(flipped[0, ..., 0].ravel(), np.round(255 * t / 7))


def test_pca_rgb_mask_fits_and_scales_on_the_masked_tokens_only():
    t = np.arange(6.0)
    tokens = np.zeros((1, 6, 3))
    tokens[0, :, 0] = t
    tokens[0, 5] = (0.0, 1e3, -1e3)  # background: would dominate every component
    mask = np.array([[True] * 5 + [False]])
    rgb = pca_rgb(tokens, (2, 3), mask)
    np.testing.assert_array_equal(rgb[0].reshape(6, 3)[:5, 0], np.round(255 * t[:5] / 4))
    np.testing.assert_array_equal(rgb[0].reshape(6, 3)[5], 0)
    np.testing.assert_array_equal(pca_rgb(tokens, (2, 3), np.zeros((1, 6), bool)), 0)
    with pytest.raises(ValueError, match="grid"):
        pca_rgb(tokens, (2, 2))


def test_overlay_mask_blends_inside_a_resized_mask_only():
    image = np.full((4, 6, 3), 100, np.uint8)
    mask = np.array([[True, False, False], [False, False, True]])  # 2x3 -> 2x2 px cells
    out = overlay_mask(image, mask, color=(200, 0, 50), alpha=0.25)
    inside = np.zeros((4, 6), bool)
    inside[:2, :2] = inside[2:, 4:] = True
    np.testing.assert_array_equal(out[inside], [[125, 75, 88]] * 8)  # 0.75 * 100 + 0.25 * c
    np.testing.assert_array_equal(out[~inside], 100)
    np.testing.assert_array_equal(overlay_mask(image, mask, alpha=0.0), image)


def test_tile_grid_places_centred_images_in_padded_cells():
    a = np.full((2, 2, 3), 10, np.uint8)
    b = np.full((4, 4), 20, np.uint8)  # grey: repeated to RGB
    c = np.full((2, 4, 3), 30, np.uint8)
    grid = tile_grid([a, b, c], cols=2, pad=1, fill=255)
    assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3)
    expected = np.full((11, 11, 3), 255, np.uint8)
    expected[2:4, 2:4] = 10  # a centred in the 4x4 cell at (1, 1)
    expected[1:5, 6:10] = 20
    expected[7:9, 1:5] = 30  # second row, first column
    np.testing.assert_array_equal(grid, expected)
    assert tile_grid(np.zeros((5, 3, 3, 3), np.uint8), pad=0).shape == (6, 9, 3)  # 2 rows x 3
    with pytest.raises(ValueError):
        tile_grid([])


def test_backbone_outputs_run_a_bfloat16_backbone_in_float32():
    cfg = ViTConfig(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=16, dtype="bfloat16")
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
    params = jax.jit(VisionTransformer(cfg).init)(jax.random.key(0), x)["params"]
    out = backbone_outputs(Backbone(params, cfg), x)
    f32 = VisionTransformer(dataclasses.replace(cfg, dtype="float32"))
    cls, _ = jax.jit(f32.apply)({"params": params}, x)
    assert out["attention"].dtype == jnp.float32
    np.testing.assert_allclose(out["cls"], cls, atol=1e-6)
