import jax
import jax.numpy as jnp
import numpy as np
from testutil import golden

from pathfm.ssl.dino_loss import dino_loss, update_center


def test_loss_and_center_match_official_dino():
    g = golden("dino_loss.npz")
    loss = dino_loss(
        jnp.asarray(g["student_output"], jnp.float32),
        jnp.asarray(g["teacher_output"], jnp.float32),
        jnp.asarray(g["center"], jnp.float32),
        float(g["teacher_temp"]),
        float(g["student_temp"]),
    )
    np.testing.assert_allclose(float(loss), float(g["loss"]), rtol=1e-5)
    center = update_center(
        jnp.asarray(g["center"], jnp.float32),
        jnp.asarray(g["teacher_output"], jnp.float32),
        float(g["center_momentum"]),
    )
    np.testing.assert_allclose(np.asarray(center), g["new_center"], rtol=1e-5, atol=1e-7)


def test_uniform_student_and_teacher_give_log_k():
    k, b, n_crops = 64, 3, 6
    loss = dino_loss(jnp.zeros((n_crops * b, k)), jnp.zeros((2 * b, k)), jnp.zeros((1, k)), 0.04)
    np.testing.assert_allclose(float(loss), np.log(k), rtol=1e-5)


def test_hand_computed_two_global_crops():
    # Two global crops only, batch 1, K = 2: the loss is the mean of the two cross terms.
    s = jnp.array([[0.1, 0.3], [0.2, -0.1]])
    t = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    c = jnp.array([[0.5, 0.5]])
    q = jax.nn.softmax((t - c) / 0.5, axis=-1)
    logp = jax.nn.log_softmax(s / 0.1, axis=-1)
    expected = (-(q[0] * logp[1]).sum() - (q[1] * logp[0]).sum()) / 2
    np.testing.assert_allclose(float(dino_loss(s, t, c, 0.5)), float(expected), rtol=1e-6)


def test_center_update_changes_the_loss_by_a_clear_margin():
    # A teacher with a strong bias on one prototype: centering with the old (zero) center and
    # with the updated center give clearly different targets, so using the wrong one shows.
    t = jax.random.normal(jax.random.key(0), (4, 8)) * 0.1 + jnp.eye(8)[0] * 2.0
    s = jax.random.normal(jax.random.key(1), (12, 8))
    old = jnp.zeros((1, 8))
    new = update_center(old, t)
    np.testing.assert_allclose(
        np.asarray(new), 0.1 * np.asarray(t).mean(0, keepdims=True), rtol=1e-5
    )
    assert abs(float(dino_loss(s, t, old, 0.5)) - float(dino_loss(s, t, new, 0.5))) > 5e-3


def test_no_gradient_flows_into_the_teacher():
    s = jax.random.normal(jax.random.key(0), (8, 16))
    t = jax.random.normal(jax.random.key(1), (4, 16))
    grad_t = jax.grad(lambda t: dino_loss(s, t, jnp.zeros((1, 16)), 0.04))(t)
    np.testing.assert_array_equal(np.asarray(grad_t), 0.0)


def test_view_major_inputs_give_the_same_loss_and_center():
    # [V, B, K] (how the method passes batch-sharded logits) equals the crop-major [V*B, K].
    g = golden("dino_loss.npz")
    s, t = (jnp.asarray(g[k], jnp.float32) for k in ("student_output", "teacher_output"))
    c, temps = jnp.asarray(g["center"], jnp.float32), (float(g["teacher_temp"]), 0.1)
    b = t.shape[0] // 2
    flat = dino_loss(s, t, c, *temps)
    views = dino_loss(s.reshape(-1, b, s.shape[-1]), t.reshape(2, b, -1), c, *temps)
    np.testing.assert_allclose(float(views), float(flat), rtol=1e-6)
    np.testing.assert_allclose(
        update_center(c, t.reshape(2, b, -1)), update_center(c, t), rtol=1e-6, atol=1e-8
    )
