import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pathfm.models.vit import VisionTransformer, resample_pos_embed, vit_config


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
