import jax
import jax.numpy as jnp
import numpy as np
from testutil import golden

from pathfm.ssl.koleo import koleo_loss as koleo_eager

koleo_loss = jax.jit(koleo_eager)


def test_matches_official_dinov2_also_with_a_duplicate_row():
    g = golden("dinov2_koleo.npz")
    assert np.array_equal(g["x_dup"][3], g["x_dup"][5])
    for f in (koleo_eager, koleo_loss):  # under jit, XLA's FMA contraction must not break dups
        np.testing.assert_allclose(float(f(jnp.asarray(g["x"], jnp.float32))), g["loss"], 1e-5)
        dup = f(jnp.asarray(g["x_dup"], jnp.float32))
        np.testing.assert_allclose(float(dup), g["loss_dup"], rtol=1e-5)


def test_hand_computed_points_on_a_circle():
    # Angles 0, 90, 100 degrees (radius 3: normalization removes it). Neighbours: 0 -> 90,
    # 90 <-> 100; chord lengths 2 sin(45 deg) and 2 sin(5 deg).
    a = np.deg2rad([0.0, 90.0, 100.0])
    x = 3.0 * np.stack([np.cos(a), np.sin(a)], axis=1)
    d = np.array([2 * np.sin(np.pi / 4), 2 * np.sin(np.pi / 36), 2 * np.sin(np.pi / 36)])
    expected = -np.mean(np.log(d))
    np.testing.assert_allclose(float(koleo_loss(jnp.asarray(x, jnp.float32))), expected, 1e-5)


def test_bfloat16_input_is_computed_in_float32():
    x = jax.random.normal(jax.random.key(0), (16, 32))
    low = koleo_loss(x.astype(jnp.bfloat16))
    assert low.dtype == jnp.float32
    exact = koleo_loss(x.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(float(low), float(exact), rtol=1e-6)


def test_finite_gradients_with_duplicates_and_zero_rows():
    g = golden("dinov2_koleo.npz")
    x = jnp.asarray(g["x_dup"], jnp.float32).at[0].set(0.0)
    value, grad = jax.jit(jax.value_and_grad(koleo_eager))(x)
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()


def test_batch_of_one_is_defined_as_zero():
    # No neighbour exists; DINOv2 would pair the row with itself (a constant, zero gradient).
    loss, grad = jax.jit(jax.value_and_grad(koleo_eager))(jnp.ones((1, 8)))
    assert float(loss) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
