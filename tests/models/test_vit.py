import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from pathfm.models.pos_interp import resample_pos_embed
from pathfm.models.vit import (
    Block,
    SwiGLUPacked,
    VisionTransformer,
    ffn_hidden_dim,
    swiglu_hidden_dim,
    vit_config,
)


def _init(cfg, size, batch=2, seed=0):
    model = VisionTransformer(cfg)
    x = jax.random.normal(jax.random.key(seed), (batch, size, size, 3))
    params = jax.jit(model.init)({"params": jax.random.key(1)}, x)["params"]
    return model, params, x


def _apply(model, params, x, **kw):
    rngs = kw.pop("rngs", None)
    return jax.jit(lambda p, x, r: model.apply({"params": p}, x, rngs=r, **kw))(params, x, rngs)


@pytest.mark.parametrize(
    "size,patch,img", [("T", 16, 32), ("S", 8, 16), ("S", 14, 28), ("B", 16, 32)]
)
def test_forward_shapes_at_several_sizes(size, patch, img):
    cfg = vit_config(size, patch, img_size=img, depth=2)
    model, params, x = _init(cfg, img)
    cls, aux = _apply(model, params, x)
    n = (img // patch) ** 2
    assert cls.shape == (2, cfg.embed_dim)
    assert aux["patch_tokens"].shape == (2, n, cfg.embed_dim)
    assert params["pos_embed"].shape == (1, 1 + n, cfg.embed_dim)
    assert np.all(np.isfinite(np.asarray(cls)))


def test_parameter_counts_match_published_sizes():
    # timm vit_small_patch16_224 without head: 21.67M; vit_base_patch16_224: 85.8M.
    for size, expected in (("S", 21_665_664), ("B", 85_798_656)):
        model = VisionTransformer(vit_config(size, 16))
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
        count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
        assert count == expected


def test_timm_layout_of_parameters():
    cfg = vit_config("T", 16, img_size=32, depth=1)
    _, params, _ = _init(cfg, 32)
    d = cfg.embed_dim
    assert params["patch_embed"]["proj"]["kernel"].shape == (16, 16, 3, d)
    assert params["cls_token"].shape == (1, 1, d)
    block = params["blocks_0"]
    assert block["attn"]["qkv"]["kernel"].shape == (d, 3 * d)
    assert block["attn"]["qkv"]["bias"].shape == (3 * d,)
    assert block["mlp"]["fc1"]["kernel"].shape == (d, 4 * d)
    assert set(block) == {"norm1", "attn", "norm2", "mlp"}
    assert set(params["norm"]) == {"scale", "bias"}


def test_attention_matches_a_plain_numpy_reference():
    cfg = vit_config("T", 16, img_size=32, depth=1, embed_dim=8, num_heads=2)
    model, params, x = _init(cfg, 32)
    cls, aux = _apply(model, params, x)

    # Re-derive block 0 in NumPy from the parameters: LN eps 1e-6, exact GELU, (3, H, hd) qkv.
    from scipy.special import erf

    p = jax.tree.map(np.asarray, params)
    xn = np.asarray(x, np.float64)
    patches = xn.reshape(2, 2, 16, 2, 16, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, -1)
    w = p["patch_embed"]["proj"]["kernel"].reshape(-1, 8)
    tok = patches @ w + p["patch_embed"]["proj"]["bias"]
    tok = np.concatenate([np.broadcast_to(p["cls_token"], (2, 1, 8)), tok], 1) + p["pos_embed"]

    def ln(v, q):
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-6) * q["scale"] + q["bias"]

    b = p["blocks_0"]
    qkv = ln(tok, b["norm1"]) @ b["attn"]["qkv"]["kernel"] + b["attn"]["qkv"]["bias"]
    q, k, v = qkv.reshape(2, 5, 3, 2, 4).transpose(2, 0, 3, 1, 4)
    a = q @ k.transpose(0, 1, 3, 2) / 2.0
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(2, 5, 8)
    tok = tok + o @ b["attn"]["proj"]["kernel"] + b["attn"]["proj"]["bias"]
    h = ln(tok, b["norm2"]) @ b["mlp"]["fc1"]["kernel"] + b["mlp"]["fc1"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    tok = tok + h @ b["mlp"]["fc2"]["kernel"] + b["mlp"]["fc2"]["bias"]
    out = ln(tok, p["norm"])
    np.testing.assert_allclose(np.asarray(cls), out[:, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["patch_tokens"]), out[:, 1:], rtol=1e-4, atol=1e-5)


def test_position_embedding_interpolation():
    pos = jax.random.normal(jax.random.key(0), (1, 1 + 16, 8))
    same = resample_pos_embed(pos, (4, 4))
    assert same is pos
    small = resample_pos_embed(pos, (2, 2))
    assert small.shape == (1, 5, 8)
    np.testing.assert_array_equal(small[:, 0], pos[:, 0])  # CLS row untouched
    const = jnp.ones((1, 17, 3))
    np.testing.assert_allclose(resample_pos_embed(const, (6, 6)), 1.0, atol=1e-5)
    # Other input sizes run through the model with the interpolated embedding.
    cfg = vit_config("T", 8, img_size=32, depth=1)
    model, params, _ = _init(cfg, 32)
    _, aux = _apply(model, params, jnp.zeros((1, 16, 24, 3)))
    assert aux["patch_tokens"].shape == (1, 6, cfg.embed_dim)


def test_drop_path_is_per_sample_and_off_at_eval():
    cfg = vit_config("T", 16, img_size=32, depth=4, drop_path_rate=0.5)
    model, params, x = _init(cfg, 32, batch=8)
    eval_a = _apply(model, params, x)[0]
    eval_b = _apply(model, params, x, train=False)[0]
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a = _apply(model, params, x, train=True, rngs={"dropout": jax.random.key(3)})[0]
    train_b = _apply(model, params, x, train=True, rngs={"dropout": jax.random.key(4)})[0]
    assert not np.allclose(train_a, eval_a)
    assert not np.allclose(train_a, train_b)


def test_bfloat16_matmuls_keep_float32_params():
    cfg = vit_config("T", 16, img_size=32, depth=1, dtype="bfloat16")
    model, params, x = _init(cfg, 32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    cls, _ = _apply(model, params, x)
    ref = _apply(VisionTransformer(vit_config("T", 16, img_size=32, depth=1)), params, x)[0]
    assert cls.dtype == jnp.float32
    np.testing.assert_allclose(cls, ref, atol=0.1)


# --- DINOv2 backbone options: LayerScale, registers, no_embed_class, SwiGLU, iBOT mask token ---
# These tests fill parameters from eval_shape with NumPy values: a jitted init compiles slowly here.


def _jit_apply(model):
    """One jitted eval-mode apply per model, reused for every call with the same shapes."""
    return jax.jit(lambda p, x, m=None: model.apply({"params": p}, x, masks=m))


def _shapes(cfg, size):
    images = jnp.zeros((1, size, size, 3))
    return jax.eval_shape(VisionTransformer(cfg).init, jax.random.key(0), images)["params"]


def _random_params(cfg, size, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    fill = lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), jnp.float32)
    return jax.tree.map(fill, _shapes(cfg, size))


def _count(params):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _vit_count(d, depth, hidden, fc1_out, tokens, pos_rows, ls=True, p=14):
    """Parameter count of a ViT (no head) from its architecture."""
    block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * fc1_out + fc1_out) + (hidden * d + d)
    block += 2 * d if ls else 0
    return p * p * 3 * d + d + tokens * d + pos_rows * d + depth * block + 2 * d


def test_dinov2_parameter_counts_and_names():
    # timm vit_large_patch14_reg4_dinov2 (img 518, 37x37 patches): 304.37M; no CLS pos row.
    dinov2 = dict(num_registers=4, no_embed_class=True, layer_scale_init=1e-5)
    params = _shapes(vit_config("L", 14, img_size=518, **dinov2), 518)
    assert _count(params) == _vit_count(1024, 24, 4096, 4096, 1 + 4, 37 * 37) == 304_370_688
    assert params["pos_embed"].shape == (1, 37 * 37, 1024)
    assert params["reg_token"].shape == (1, 4, 1024)
    assert set(params["blocks_0"]) == {"norm1", "attn", "ls1", "norm2", "mlp", "ls2"}
    assert params["blocks_0"]["ls1"]["gamma"].shape == (1024,)
    assert "mask_token" not in params
    # At 224 (16x16 patches), with the iBOT mask token: backbone 303.2M + 1024.
    params = _shapes(vit_config("L", 14, img_size=224, use_mask_token=True, **dinov2), 224)
    assert _count(params) == _vit_count(1024, 24, 4096, 4096, 1 + 4 + 1, 16 * 16) == 303_232_000
    assert params["mask_token"].shape == (1, 1024)
    # timm vit_giant_patch14_dinov2 (SwiGLUPacked, hidden 4096, CLS pos row): 1136.48M.
    params = _shapes(vit_config("g", 14, img_size=518, ffn="swiglu", layer_scale_init=1e-5), 518)
    assert _count(params) == _vit_count(1536, 40, 4096, 8192, 1, 1 + 37 * 37) == 1_136_479_232
    assert params["blocks_0"]["mlp"]["fc1"]["kernel"].shape == (1536, 2 * 4096)
    assert params["blocks_0"]["mlp"]["fc2"]["kernel"].shape == (4096, 1536)


def test_new_parameters_are_initialised_as_dinov2():
    cfg = vit_config(
        "T", 8, img_size=16, depth=1, embed_dim=16, num_heads=2, layer_scale_init=1e-5,
        num_registers=2, use_mask_token=True,
    )  # fmt: skip
    params = jax.jit(VisionTransformer(cfg).init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    params = params["params"]
    for name in ("ls1", "ls2"):
        np.testing.assert_array_equal(
            params["blocks_0"][name]["gamma"], np.full(16, 1e-5, np.float32)
        )
    np.testing.assert_array_equal(params["mask_token"], np.zeros((1, 16)))
    assert 0 < np.abs(params["reg_token"]).max() < 1e-4  # DINOv2/timm: normal(std=1e-6)


def test_layer_scale_with_unit_gamma_equals_the_plain_block():
    kw = dict(img_size=16, depth=2, embed_dim=16, num_heads=2)
    cfg = vit_config("T", 8, layer_scale_init=1e-5, **kw)
    params = _random_params(cfg, 16)
    ones = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.ones_like(v) if path[-1].key == "gamma" else v, params
    )
    plain = {k: v for k, v in ones.items() if not k.startswith("blocks_")}
    for i in range(2):
        plain[f"blocks_{i}"] = {k: v for k, v in ones[f"blocks_{i}"].items() if k[:2] != "ls"}
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    cls_ls, aux_ls = _jit_apply(VisionTransformer(cfg))(ones, x)
    cls, aux = _jit_apply(VisionTransformer(vit_config("T", 8, **kw)))(plain, x)
    np.testing.assert_allclose(cls_ls, cls, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(aux_ls["patch_tokens"], aux["patch_tokens"], rtol=1e-6, atol=1e-6)


def _ln(v):
    return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6)


def test_token_assembly_registers_pos_embed_and_mask_token():
    # depth 0 and an identity final norm: outputs are LN(input tokens), showing each token's input.
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    masks = np.array([[True, False, False, True], [False] * 4])
    for no_embed_class in (False, True):
        cfg = vit_config(
            "T", 8, img_size=16, depth=0, embed_dim=8, num_heads=2, num_registers=3,
            no_embed_class=no_embed_class, use_mask_token=True,
        )  # fmt: skip
        params = jax.tree.map(np.asarray, _random_params(cfg, 16, scale=1.0))
        params["norm"] = {"scale": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)}
        cls, aux = _jit_apply(VisionTransformer(cfg))(params, x, masks)
        assert params["pos_embed"].shape == (1, 4 + (not no_embed_class), 8)
        assert aux["register_tokens"].shape == (2, 3, 8) and aux["patch_tokens"].shape == (2, 4, 8)

        k = params["patch_embed"]["proj"]
        xn = np.asarray(x, np.float64).reshape(2, 2, 8, 2, 8, 3).transpose(0, 1, 3, 2, 4, 5)
        patches = xn.reshape(2, 4, -1) @ k["kernel"].reshape(-1, 8) + k["bias"]
        patches = np.where(masks[..., None], params["mask_token"], patches)  # before pos embed
        pos = params["pos_embed"][0]
        cls_pos, patch_pos = (0.0, pos) if no_embed_class else (pos[0], pos[1:])
        np.testing.assert_allclose(cls, _ln(params["cls_token"][0] + cls_pos)[[0, 0]], atol=1e-5)
        regs = _ln(params["reg_token"][0])  # no position embedding for registers
        np.testing.assert_allclose(
            aux["register_tokens"], np.broadcast_to(regs, (2, 3, 8)), atol=1e-5
        )
        np.testing.assert_allclose(aux["patch_tokens"], _ln(patches + patch_pos), atol=1e-5)


def test_registers_attend_and_dinov2_layout_converts_to_timm():
    kw = dict(img_size=16, depth=1, embed_dim=16, num_heads=2, num_registers=2, layer_scale_init=1)
    timm_cfg = vit_config("T", 8, no_embed_class=True, **kw)
    params = _random_params(timm_cfg, 16)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    apply = _jit_apply(VisionTransformer(timm_cfg))
    cls, aux = apply(params, x)
    changed = dict(params, reg_token=jax.random.normal(jax.random.key(6), (1, 2, 16)))
    assert not np.allclose(apply(changed, x)[0], cls, atol=1e-3)  # CLS attends to the registers
    # DINOv2's own layout (CLS pos row, registers without) -> timm by _convert_dinov2:
    # cls_token += pos_embed[:, :1]; pos_embed = pos_embed[:, 1:]. Both give the same outputs.
    cls_row = jax.random.normal(jax.random.key(5), (1, 1, 16))
    native_params = dict(
        params,
        cls_token=params["cls_token"] - cls_row,
        pos_embed=jnp.concatenate([cls_row, params["pos_embed"]], axis=1),
    )
    n_cls, n_aux = _jit_apply(VisionTransformer(vit_config("T", 8, **kw)))(native_params, x)
    np.testing.assert_allclose(n_cls, cls, atol=1e-5)
    for key in ("patch_tokens", "register_tokens"):
        np.testing.assert_allclose(n_aux[key], aux[key], atol=1e-5)


def test_swiglu_matches_numpy_and_hidden_size_rule():
    assert swiglu_hidden_dim(1536) == 4096 and swiglu_hidden_dim(1024) == 2736
    assert swiglu_hidden_dim(16) == 48 and ffn_hidden_dim(16, 4.0, "swiglu", mlp_hidden=24) == 24
    assert ffn_hidden_dim(16, 4.0) == 64
    cfg = vit_config("T", 8, img_size=16, depth=1, embed_dim=16, num_heads=2, ffn="swiglu")
    block = _shapes(cfg, 16)["blocks_0"]
    assert block["mlp"]["fc1"]["kernel"].shape == (16, 96)
    assert block["mlp"]["fc2"]["kernel"].shape == (48, 16)
    with pytest.raises(ValueError, match="ffn"):
        vit_config("T", 8, ffn="geglu")

    rng = np.random.default_rng(0)
    p = {
        "fc1": {"kernel": rng.normal(0, 0.3, (16, 48)), "bias": rng.normal(0, 0.3, 48)},
        "fc2": {"kernel": rng.normal(0, 0.3, (24, 16)), "bias": rng.normal(0, 0.3, 16)},
    }
    x = rng.normal(size=(2, 3, 16))
    to32 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)
    out = jax.jit(SwiGLUPacked(24, 16).apply)({"params": to32(p)}, to32(x))
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    x1, x2 = h[..., :24], h[..., 24:]  # timm SwiGLUPacked: x1, x2 = fc1(x).chunk(2); silu(x1) * x2
    ref = (x1 / (1 + np.exp(-x1)) * x2) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_masks_replace_patches_by_the_mask_token():
    cfg = vit_config("T", 8, img_size=16, depth=1, embed_dim=16, num_heads=2, use_mask_token=True)
    model = VisionTransformer(cfg)
    params = _random_params(cfg, 16)
    x = jax.random.normal(jax.random.key(8), (2, 16, 16, 3))
    apply = _jit_apply(model)
    cls_full, aux_full = apply(params, x, jnp.ones((2, 4), bool))
    np.testing.assert_allclose(cls_full[0], cls_full[1], atol=1e-5)  # only the mask token left
    np.testing.assert_allclose(aux_full["patch_tokens"][0], aux_full["patch_tokens"][1], atol=1e-5)
    masks = jnp.array([[True, False, True, False], [False] * 4])
    cls_part, aux_part = apply(params, x, masks)
    cls, aux = apply(params, x)
    np.testing.assert_allclose(cls_part[1], cls[1], atol=1e-6)  # unmasked image unchanged
    np.testing.assert_allclose(aux_part["patch_tokens"][1], aux["patch_tokens"][1], atol=1e-6)
    assert not np.allclose(cls_part[0], cls[0], atol=1e-4)

    plain = VisionTransformer(dataclasses.replace(cfg, use_mask_token=False))
    plain_params = {k: v for k, v in params.items() if k != "mask_token"}
    with pytest.raises(ValueError, match="use_mask_token"):
        jax.eval_shape(lambda p: plain.apply({"params": p}, x, masks=masks), plain_params)
    with pytest.raises(ValueError, match="masks must be"):
        jax.eval_shape(lambda p: model.apply({"params": p}, x, masks=masks[:, :3]), params)


def test_drop_path_uniform_gives_every_block_the_full_rate():
    def rates(**kw):
        cfg = vit_config("T", 8, img_size=16, depth=3, drop_path_rate=0.4, **kw)
        seen = []

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, Block) and context.method_name == "__call__":
                seen.append(context.module.drop_path)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            _shapes(cfg, 16)
        return seen

    np.testing.assert_allclose(rates(), [0.0, 0.2, 0.4])
    np.testing.assert_allclose(rates(drop_path_uniform=True), [0.4, 0.4, 0.4])


# --- Speed options: attention kernel and rematerialisation change speed, never the maths ---


def _dinov2_like(**kw):
    return vit_config(
        "T", 8, img_size=16, depth=2, embed_dim=16, num_heads=2, num_registers=2,
        no_embed_class=True, layer_scale_init=0.5, use_mask_token=True, drop_path_rate=0.3, **kw,
    )  # fmt: skip


def _loss_and_grads(cfg, params, x, masks):
    """Mean of CLS and patch tokens in training mode (drop-path on, fixed key) and its gradient."""

    def loss(p):
        cls, aux = VisionTransformer(cfg).apply(
            {"params": p}, x, train=True, masks=masks, rngs={"dropout": jax.random.key(2)}
        )
        return jnp.mean(cls**2) + jnp.mean(aux["patch_tokens"] * aux["register_tokens"][:, :1])

    return jax.jit(jax.value_and_grad(loss))(params)


def test_dot_product_attention_equals_the_explicit_one():
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    masks = jnp.array([[True, False, False, True], [False] * 4, [True] * 4])
    params = _random_params(_dinov2_like(), 16)
    cls, aux = _jit_apply(VisionTransformer(_dinov2_like()))(params, x, masks)
    fused = VisionTransformer(_dinov2_like(attention="dot_product"))
    assert jax.tree.structure(_shapes(fused.config, 16)) == jax.tree.structure(params)
    cls_f, aux_f = _jit_apply(fused)(params, x, masks)
    np.testing.assert_allclose(cls_f, cls, rtol=1e-5, atol=1e-5)
    for key in ("patch_tokens", "register_tokens"):
        np.testing.assert_allclose(aux_f[key], aux[key], rtol=1e-5, atol=1e-5)
    loss, grads = _loss_and_grads(_dinov2_like(), params, x, masks)
    loss_f, grads_f = _loss_and_grads(fused.config, params, x, masks)
    np.testing.assert_allclose(loss_f, loss, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads_f, grads
    )


def test_dot_product_attention_in_bfloat16():
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    params = _random_params(_dinov2_like(), 16, scale=0.1)
    ref, _ = _jit_apply(VisionTransformer(_dinov2_like()))(params, x)
    explicit, _ = _jit_apply(VisionTransformer(_dinov2_like(dtype="bfloat16")))(params, x)
    bf16 = VisionTransformer(_dinov2_like(dtype="bfloat16", attention="dot_product"))
    cls, aux = _jit_apply(bf16)(params, x)
    assert cls.dtype == aux["patch_tokens"].dtype == jnp.float32
    np.testing.assert_allclose(cls, explicit, atol=0.05)
    np.testing.assert_allclose(cls, ref, atol=0.05)
    with pytest.raises(ValueError, match="attention"):
        vit_config("T", 8, attention="flash")


def _grad_jaxpr(cfg, params, x) -> str:
    loss = lambda p: VisionTransformer(cfg).apply({"params": p}, x)[0].sum()
    return str(jax.make_jaxpr(jax.grad(loss))(params))


@pytest.mark.parametrize("remat", ["block", "block_dots"])
def test_remat_gives_the_same_loss_and_gradients(remat):
    x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    masks = jnp.array([[True, False, False, True], [False] * 4, [True] * 4])
    params = _random_params(_dinov2_like(), 16)
    remat_cfg = _dinov2_like(remat=remat)
    assert jax.tree.structure(_shapes(remat_cfg, 16)) == jax.tree.structure(params)
    loss, grads = _loss_and_grads(_dinov2_like(), params, x, masks)
    loss_r, grads_r = _loss_and_grads(remat_cfg, params, x, masks)
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_r, grads
    )
    assert "remat" in _grad_jaxpr(remat_cfg, params, x)  # the blocks really are recomputed
    assert "remat" not in _grad_jaxpr(_dinov2_like(), params, x)
    with pytest.raises(ValueError, match="remat"):
        vit_config("T", 8, remat="all")
