"""Every paper config exports under a registered timm name whose model, built with the JSON's
kwargs, has exactly the backbone's parameters (shapes compared on the meta device: no memory)."""

import importlib.util
import math

import jax
import pytest
from testutil import REPO

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

from pathfm.interop import key_map  # noqa: E402
from pathfm.interop.timm_names import TIMM_VIT_NAMES, timm_kwargs, timm_name  # noqa: E402
from pathfm.models.vit import VisionTransformer, vit_config  # noqa: E402
from pathfm.ssl.registry import build_method  # noqa: E402

PAPER_NAMES = {
    "dino_vits16": "vit_small_patch16_224",
    "campanella_dino_vits16": "vit_small_patch16_224",
    "campanella_mae_vitl16": "vit_large_patch16_224",
    "kaiko_dino_vits16": "vit_small_patch16_224",
    "kaiko_dino_vits8": "vit_small_patch8_224",
    "kaiko_dino_vitb16": "vit_base_patch16_224",
    "kaiko_dino_vitb8": "vit_base_patch8_224",
    "dinov2_vitl16": "vit_large_patch16_224",
    "kaiko_dinov2_vitl14_reg4": "vit_large_patch14_reg4_dinov2",
}


def _config(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(None)


def _timm_shapes(cfg):
    kwargs, classes = timm_kwargs(cfg)
    if classes:
        from timm.layers import SwiGLUPacked

        assert classes == {"mlp_layer": "timm.layers.SwiGLUPacked"}
        kwargs["mlp_layer"] = SwiGLUPacked
    with torch.device("meta"):
        model = timm.create_model(timm_name(cfg), pretrained=False, num_classes=0, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_name_pathfm_may_choose_is_registered_in_timm():
    assert sorted(n for n in TIMM_VIT_NAMES if not timm.is_model(n)) == []


@pytest.mark.parametrize("name", sorted(PAPER_NAMES))
def test_paper_configs_export_under_their_timm_architecture(name):
    config = _config(name)
    method = build_method(config)
    params, extra = jax.eval_shape(method.init, jax.random.key(0))
    backbone = method.backbone(params, extra, method.backbones[0])
    assert timm_name(backbone.config) == PAPER_NAMES[name]
    ours = key_map.expected_shapes(backbone.config, backbone.params)
    assert _timm_shapes(backbone.config) == ours  # same keys in the same order, same shapes


@pytest.mark.parametrize(
    "size,patch,overrides",
    [
        ("g", 14, dict(num_registers=4, no_embed_class=True, layer_scale_init=1e-5, ffn="swiglu")),
        ("L", 14, dict(ffn="swiglu", layer_scale_init=1e-5)),
        ("T", 8, dict(img_size=32, embed_dim=32, depth=2, num_heads=2)),
        ("B", 16, dict(num_registers=2, img_size=96)),
    ],
)
def test_other_variants_build_the_same_shapes(size, patch, overrides):
    cfg = vit_config(size, patch, **overrides)
    image = jax.ShapeDtypeStruct((1, cfg.img_size, cfg.img_size, 3), "float32")
    params = jax.eval_shape(VisionTransformer(cfg).init, jax.random.key(0), image)["params"]
    assert _timm_shapes(cfg) == key_map.expected_shapes(cfg, params)
    count = sum(math.prod(s) for s in key_map.expected_shapes(cfg, params).values())
    folded = cfg.embed_dim if cfg.num_registers and not cfg.no_embed_class else 0  # CLS pos row
    assert count == sum(math.prod(x.shape) for x in jax.tree.leaves(params)) - folded
