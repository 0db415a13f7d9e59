"""Importing timm / PyTorch state dicts: export then import gives the same parameters bit for bit,
a different architecture is refused naming the first differing key, position embeddings of
another grid are resampled as timm resamples them, and checkpoints holding several backbones or
DINOv2's own names are read."""

import dataclasses

import jax
import numpy as np
import pytest

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

from interop.timm_util import (  # noqa: E402
    ARCHITECTURES,
    arch_config,
    make_run,
    random_weights,
    timm_model,
    timm_tokens,
)

from pathfm.errors import ConfigError  # noqa: E402
from pathfm.interop import key_map  # noqa: E402
from pathfm.interop.timm_export import export_backbone  # noqa: E402
from pathfm.interop.timm_import import load_backbone  # noqa: E402
from pathfm.models.vit import VisionTransformer  # noqa: E402

MEAN_STD = {"mean": [0.5] * 3, "std": [0.5] * 3}


def _exported(name, folder, **model):
    run = make_run(arch_config(name, **model))
    backbone = run.method.backbone(run.params, run.extra, run.method.backbones[0])
    return backbone, export_backbone(backbone, folder, MEAN_STD)


def _same(a, b) -> bool:
    flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(t) for t in (a, b))
    return flat_a[1] == flat_b[1] and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for (_, x), (_, y) in zip(flat_a[0], flat_b[0], strict=True)
    )


@pytest.mark.parametrize("name", sorted(set(ARCHITECTURES) - {"reg4_dinov2_layout"}))
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_export_then_import_is_bit_identical(name, fmt, tmp_path):
    backbone, description = _exported(name, tmp_path)
    path = tmp_path / description["files"][fmt]
    imported = load_backbone(path, "", backbone.config, backbone.params)
    assert _same(imported, backbone.params)


def test_dinov2_layout_imports_to_the_same_function(tmp_path, random_images):
    """DINOv2's own layout folds the CLS position row into cls_token on export (timm has no
    place for it): the import computes the same features and exports to the same file."""
    backbone, description = _exported("reg4_dinov2_layout", tmp_path)
    path = tmp_path / description["files"]["safetensors"]
    imported = load_backbone(path, "", backbone.config, backbone.params)
    np.testing.assert_array_equal(imported["pos_embed"][:, 0], 0.0)
    assert not _same(imported, backbone.params)
    model = VisionTransformer(backbone.config)
    x = random_images.astype(np.float32) / 255.0
    outputs = [jax.jit(model.apply)({"params": p}, x) for p in (backbone.params, imported)]
    for a, b in zip(*(jax.tree.leaves(o) for o in outputs), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    again = key_map.to_timm(imported, backbone.config)
    for key, value in key_map.to_timm(backbone.params, backbone.config).items():
        np.testing.assert_array_equal(again[key], value)


@pytest.mark.parametrize(
    "model,first_key",
    [
        (dict(depth=3), "'blocks.2.norm1.weight' is missing"),
        (dict(depth=1), "'blocks.1.attn.proj.bias' is not part of the model (12 keys"),
        (dict(patch_size=8), "'patch_embed.proj.weight' has shape (384, 3, 16, 16)"),
        (dict(size="B"), "'cls_token' has shape (1, 1, 384), the model needs (1, 1, 768)"),
        (dict(num_registers=4, no_embed_class=True), "'reg_token' is missing"),
    ],
)
def test_a_different_architecture_names_the_first_differing_key(model, first_key, tmp_path):
    _, description = _exported("vits16", tmp_path)
    config = arch_config("vits16", **model)
    run = make_run(config)
    target = run.method.backbone(run.params, run.extra, "student")
    path = tmp_path / description["files"]["safetensors"]
    with pytest.raises(ConfigError, match=r"config\.model\.init_from") as error:
        load_backbone(path, "", target.config, target.params)
    assert first_key in str(error.value)


@pytest.mark.parametrize(
    "name,img_size",
    [("vits16", 160), ("reg4_ls_swiglu", 280)],  # down- and upsampling
)
def test_import_resamples_the_position_embedding_as_configured(
    name, img_size, tmp_path, random_images
):
    from timm.layers import resample_abs_pos_embed

    backbone, description = _exported(name, tmp_path)
    path = tmp_path / description["files"]["safetensors"]
    config = dataclasses.replace(backbone.config, img_size=img_size, pos_interp="timm")
    images = np.zeros((1, img_size, img_size, 3), np.float32)
    template = jax.eval_shape(VisionTransformer(config).init, jax.random.key(0), images)["params"]
    imported = load_backbone(path, "", config, template)
    grid = img_size // config.patch_size
    prefix = key_map.timm_prefix_rows(config)
    stored = torch.from_numpy(key_map.to_timm(backbone.params, backbone.config)["pos_embed"].copy())
    expected = resample_abs_pos_embed(stored, (grid, grid), num_prefix_tokens=prefix).numpy()
    np.testing.assert_allclose(imported["pos_embed"], expected, atol=1e-5)
    # pos_interp="official" resamples as DINO's interpolate_pos_encoding (the patch rows)
    official = dataclasses.replace(config, pos_interp="official")
    rows = load_backbone(path, "", official, template)["pos_embed"][0, -grid * grid :]
    patch = stored[:, prefix:].reshape(1, *backbone.config.grid_size * np.ones(2, int), -1)
    scale = (grid + 0.1) / backbone.config.grid_size
    torch_rows = torch.nn.functional.interpolate(
        patch.permute(0, 3, 1, 2), scale_factor=(scale, scale), mode="bicubic"
    )
    np.testing.assert_allclose(
        rows, torch_rows.permute(0, 2, 3, 1).reshape(-1, rows.shape[-1]), atol=1e-5
    )
    assert np.abs(rows - expected[0, -grid * grid :]).max() > 1e-3
    # timm's own loading of the export at that size computes the same features
    model = timm_model(description, tmp_path, img_size=img_size)
    images = np.resize(random_images, (2, img_size, img_size, 3))
    theirs = timm_tokens(model, images, **MEAN_STD)
    x = (images.astype(np.float32) / 255.0 - 0.5) / 0.5
    cls, aux = jax.jit(VisionTransformer(config).apply)({"params": imported}, x)
    assert np.max(np.abs(cls - theirs[0])) <= 1e-4
    assert np.max(np.abs(aux["patch_tokens"] - theirs[1])) <= 1e-4


def test_nested_checkpoints_need_a_prefix_when_ambiguous(tmp_path):
    """A DINO training checkpoint ({'student': {'module.backbone.*'}, 'teacher': {...}})."""
    backbone, _ = _exported("vits16", tmp_path)
    state = {
        k: torch.from_numpy(np.array(v))
        for k, v in key_map.to_timm(backbone.params, backbone.config).items()
    }
    other = {k: v + 1.0 for k, v in state.items()}
    checkpoint = {
        "student": {f"module.backbone.{k}": v for k, v in other.items()},
        "teacher": {**{f"backbone.{k}": v for k, v in state.items()}, "head.w": torch.ones(2)},
        "epoch": 3,
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    with pytest.raises(ConfigError, match=r"'student\.module\.backbone\.', 'teacher\.backbone\.'"):
        load_backbone(path, "", backbone.config, backbone.params)
    imported = load_backbone(path, "teacher.backbone.", backbone.config, backbone.params)
    assert _same(imported, backbone.params)
    single = tmp_path / "model.pth"
    torch.save({"model": state}, single)  # one backbone: found without a prefix
    assert _same(load_backbone(single, "", backbone.config, backbone.params), backbone.params)


def test_dinov2_checkpoint_names_and_mask_token_are_read(tmp_path):
    """facebookresearch/dinov2's own state dict: register_tokens, w12/w3, a CLS position row
    (its layout is pathfm's DINOv2 layout), and the mask token."""
    config = arch_config("reg4_dinov2_layout")
    run = make_run(config)
    backbone = run.method.backbone(run.params, run.extra, "student")
    state = {}
    for entry in key_map.entries(backbone.config):
        value = entry.to_timm(np.asarray(_get(backbone.params, entry.path)))
        key = entry.key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        state["register_tokens" if key == "reg_token" else key] = value
    mask_token = np.random.default_rng(0).normal(size=(1, 384)).astype(np.float32)
    state["mask_token"] = mask_token
    path = tmp_path / "dinov2.pth"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)
    template = random_weights(backbone.params, 7)
    imported = load_backbone(path, "", backbone.config, template)
    np.testing.assert_array_equal(imported["mask_token"], mask_token)
    assert _same(
        {k: v for k, v in imported.items() if k != "mask_token"},
        {k: v for k, v in backbone.params.items() if k != "mask_token"},
    )


def _get(tree, path):
    for part in path:
        tree = tree[part]
    return tree
