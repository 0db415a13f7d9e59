import jax
import jax.numpy as jnp
import numpy as np
from testutil import golden

from pathfm.ssl.dino_loss import dino_loss
from pathfm.ssl.dinov2_loss import (
    dino_cross_entropy_sum,
    ibot_loss,
    ibot_loss_dense,
    ibot_mask_weights,
)
from pathfm.ssl.sinkhorn import softmax_center_teacher


def test_cross_entropy_sum_matches_official_dinov2():
    g = golden("dinov2_dino_ce.npz")
    loss = dino_cross_entropy_sum(
        jnp.asarray(g["student_crops"], jnp.float32),
        jnp.asarray(g["teacher_probs"], jnp.float32),
        float(g["student_temp"]),
    )
    np.testing.assert_allclose(float(loss), float(g["loss_sum_over_pairs"]), rtol=1e-5)


def test_dinov2_pairing_with_centering_equals_dino_v1():
    # DINOv2's recipe (module docstring): swapped global term x 2 + local term, / n_terms. With
    # centered-softmax targets it is the DINO v1 loss over the pairs teacher view != student view.
    b, k, n_local = 3, 16, 4
    s = jax.random.normal(jax.random.key(0), ((2 + n_local) * b, k))
    t = jax.random.normal(jax.random.key(1), (2 * b, k))
    center = jax.random.normal(jax.random.key(2), (1, k)) * 0.1

    @jax.jit
    def dinov2_cls_loss(s, t, center):
        probs = softmax_center_teacher(t, center, 0.04).reshape(2, b, k)
        swapped = jnp.concatenate([probs[1], probs[0]])  # [2B, K]: g1 meets t(g2), g2 meets t(g1)
        global_term = dino_cross_entropy_sum(s[None, : 2 * b], swapped[None]) * 2
        local_term = dino_cross_entropy_sum(s[2 * b :].reshape(n_local, b, k), probs)
        return (global_term + local_term) / (2 * (2 - 1) + 2 * n_local)

    expected = jax.jit(dino_loss)(s, t, center, 0.04)
    np.testing.assert_allclose(float(dinov2_cls_loss(s, t, center)), float(expected), 1e-5)


def _ibot_inputs():
    g = golden("dinov2_ibot.npz")
    s = jnp.asarray(g["student_masked"], jnp.float32)
    t = jnp.asarray(g["teacher_probs_masked"], jnp.float32)
    return g, s, t, g["masks"]


def test_ibot_loss_matches_official_dinov2():
    g, s, t, masks = _ibot_inputs()
    assert not masks[0].any() and masks[1].all()
    loss = ibot_loss(s, t, jnp.asarray(masks), float(g["student_temp"]))
    np.testing.assert_allclose(float(loss), float(g["loss"]), rtol=1e-5)


def test_ibot_dense_equals_gathered_under_jit():
    g, s, t, masks = _ibot_inputs()
    n_img, n_tok = masks.shape
    k = s.shape[1]
    # Scatter the masked tokens into dense [2B, N, K] arrays; unmasked slots hold junk (even NaN).
    rows, cols = np.nonzero(masks)  # row-major order, as the gathered arrays
    s_dense = jnp.full((n_img, n_tok, k), 7.0).at[rows, cols].set(s)
    t_dense = jnp.full((n_img, n_tok, k), jnp.nan).at[rows, cols].set(t)
    dense = jax.jit(ibot_loss_dense)(s_dense, t_dense, jnp.asarray(masks))
    np.testing.assert_allclose(float(dense), float(g["loss"]), rtol=1e-5)
    grad = jax.jit(jax.grad(ibot_loss_dense))(s_dense, t_dense, jnp.asarray(masks))
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_array_equal(np.asarray(grad)[~masks], 0.0)


def test_ibot_gathered_with_padded_buffer_and_collate_weights_under_jit():
    # DINOv2 gathers into a static `upperbound` buffer; padded rows carry weight 0.
    g, s, t, masks = _ibot_inputs()
    weights = np.asarray(ibot_mask_weights(jnp.asarray(masks)))[masks]
    pad = 5
    s_pad = jnp.concatenate([s, jnp.zeros((pad, s.shape[1]))])
    t_pad = jnp.concatenate([t, jnp.full((pad, t.shape[1]), 1.0 / t.shape[1])])
    w_pad = jnp.concatenate([jnp.asarray(weights), jnp.zeros(pad)])
    loss = jax.jit(ibot_loss)(s_pad, t_pad, jnp.asarray(masks), masks_weight=w_pad)
    np.testing.assert_allclose(float(loss), float(g["loss"]), rtol=1e-5)


def test_ibot_image_average_then_mean_over_all_images():
    # Uniform student and teacher: every masked image contributes log K, unmasked ones 0.
    k = 8
    masks = np.zeros((4, 6), bool)
    masks[1, :2] = True
    masks[3, :5] = True
    m = int(masks.sum())
    loss = ibot_loss(jnp.zeros((m, k)), jnp.full((m, k), 1.0 / k), jnp.asarray(masks))
    np.testing.assert_allclose(float(loss), 2 / 4 * np.log(k), rtol=1e-6)
