import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pathfm.models.mae import MAE, MAEDecoder, init_mae_params
from pathfm.models.sincos import sincos_2d_pos_embed
from pathfm.models.vit import ViTConfig
from pathfm.ssl.mae_loss import mae_loss

P, IMG = 4, 16  # a 4 x 4 grid: L = 16, 4 visible tokens at ratio 0.75
CFG = ViTConfig(patch_size=P, img_size=IMG, embed_dim=16, depth=1, num_heads=2)


def _model(dec_dim=16):
    return MAE(CFG, decoder_embed_dim=dec_dim, decoder_depth=1, decoder_num_heads=2)


def _images(batch=2, seed=0):
    return jax.random.uniform(jax.random.key(seed), (batch, IMG, IMG, 3))


@pytest.fixture(scope="module")
def params():
    return init_mae_params(_model(), jax.random.key(0), _images())


def test_shapes_names_and_visible_token_count(params):
    model, x = _model(), _images()
    run = jax.jit(
        lambda p, x, k: model.apply({"params": p}, x, k, 0.75, capture_intermediates=True)
    )
    (pred, mask), state = run(params, x, jax.random.key(1))
    assert pred.shape == (2, 16, P * P * 3) and mask.shape == (2, 16)
    np.testing.assert_array_equal(np.asarray(mask.sum(1)), 12)
    inter = state["intermediates"]
    # The encoder blocks see CLS + int(16 * 0.25) = 5 tokens; the decoder sees all 1 + 16.
    assert inter["encoder"]["blocks_0"]["__call__"][0].shape == (2, 5, 16)
    assert inter["encoder"]["__call__"][0][0].shape == (2, 5, 16)
    assert inter["decoder"]["decoder_blocks_0"]["__call__"][0].shape == (2, 17, 16)
    enc, dec = params["encoder"], params["decoder"]
    assert set(enc) == {"patch_embed", "cls_token", "blocks_0", "norm"}  # no pos_embed param
    assert enc["patch_embed"]["proj"]["kernel"].shape == (P, P, 3, 16)
    assert set(dec) == {
        "decoder_embed", "mask_token", "decoder_blocks_0", "decoder_norm", "decoder_pred"
    }  # fmt: skip
    assert dec["mask_token"].shape == (1, 1, 16)
    assert dec["decoder_pred"]["kernel"].shape == (16, P * P * 3)
    # xavier_uniform block weights: bound sqrt(6 / (16 + 48)) for qkv, not trunc_normal(0.02).
    qkv = np.asarray(enc["blocks_0"]["attn"]["qkv"]["kernel"])
    assert np.abs(qkv).max() <= np.sqrt(6 / 64) and qkv.std() > 0.1


def test_reference_decoder_defaults():
    dec = MAEDecoder(P)
    assert (dec.embed_dim, dec.depth, dec.num_heads) == (512, 8, 16)
    m = MAE(CFG)
    assert (m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads) == (512, 8, 16)


def test_fixed_pos_embeds_are_the_sincos_values():
    # Zero every weight (blocks become identities) and keep only the final LayerNorm scales:
    # the encoder output is LN(sincos row of each KEPT token), added before masking, and the
    # decoder output (identity decoder_pred, width 48 = p*p*3) is LN(decoder sincos rows).
    model, x = _model(dec_dim=48), _images()
    shapes = jax.eval_shape(lambda k: model.init(k, x, k)["params"], jax.random.key(0))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    params["encoder"]["norm"]["scale"] = jnp.ones(16)
    params["decoder"]["decoder_norm"]["scale"] = jnp.ones(48)
    params["decoder"]["decoder_pred"]["kernel"] = jnp.eye(48)
    run = jax.jit(
        lambda p, x, k: model.apply({"params": p}, x, k, 0.75, capture_intermediates=True)
    )
    (pred, mask), state = run(params, x, jax.random.key(3))
    latent = np.asarray(state["intermediates"]["encoder"]["__call__"][0][0])
    ids_restore = np.asarray(state["intermediates"]["encoder"]["__call__"][0][2])

    def ln(v):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6)

    enc_pos = sincos_2d_pos_embed(16, 4, cls_token=True)
    ids_keep = np.argsort(ids_restore, axis=1)[:, :4]
    np.testing.assert_allclose(latent[:, 0], 0.0, atol=1e-6)  # CLS: zero token + zero pos row
    np.testing.assert_allclose(latent[:, 1:], ln(enc_pos[1:][ids_keep]), rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(mask)[np.arange(2)[:, None], ids_keep] == 0)
    dec_pos = sincos_2d_pos_embed(48, 4)
    np.testing.assert_allclose(np.asarray(pred), ln(dec_pos)[None].repeat(2, 0), atol=1e-5)


def test_one_sgd_step_lowers_the_loss(params):
    model, x = _model(), _images(batch=4)
    key = jax.random.key(7)  # same mask before and after the step

    def loss_fn(p):
        pred, mask = model.apply({"params": p}, x, key, 0.75)
        return mae_loss(x, pred, mask, P, norm_pix_loss=True)

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))  # compiled once, evaluated twice
    before, grads = grad_fn(params)
    after, _ = grad_fn(jax.tree.map(lambda a, g: a - 0.05 * g, params, grads))
    assert np.isfinite(float(before)) and float(after) < float(before)
    # Gradients reach the encoder through the decoder (the whole MAE trains end to end).
    assert float(jnp.abs(grads["encoder"]["patch_embed"]["proj"]["kernel"]).sum()) > 0


def test_parameter_count_of_mae_vit_base():
    # mae_vit_base_patch16 (dec 512 x 8): 111,907,840 tensors in the reference's state_dict,
    # of which pos_embed (197 x 768) and decoder_pos_embed (197 x 512) are frozen buffers.
    model = MAE(ViTConfig(patch_size=16, embed_dim=768, depth=12, num_heads=12))
    x = jnp.zeros((1, 224, 224, 3))
    shapes = jax.eval_shape(lambda k: model.init(k, x, k, 0.75), jax.random.key(0))
    count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    assert count == 111_907_840 - 197 * 768 - 197 * 512


@pytest.mark.parametrize("speed", [dict(attention="dot_product"), dict(remat="block")])
def test_speed_options_keep_loss_and_gradients(params, speed):
    # Encoder on the visible tokens only, decoder on all of them: both honour the options.
    x, key = _images(batch=3), jax.random.key(5)

    def grad_fn(cfg):
        model = MAE(cfg, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)

        def loss_fn(p):
            pred, mask = model.apply({"params": p}, x, key, 0.75)
            return mae_loss(x, pred, mask, P, norm_pix_loss=True)

        return jax.jit(jax.value_and_grad(loss_fn))(params)

    loss, grads = grad_fn(CFG)
    loss_s, grads_s = grad_fn(dataclasses.replace(CFG, **speed))
    np.testing.assert_allclose(loss_s, loss, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads_s, grads
    )
