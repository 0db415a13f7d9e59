import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from testutil import golden

from pathfm.ssl import dino_loss
from pathfm.ssl.sinkhorn import sinkhorn_knopp, softmax_center_teacher, update_center


def reference_f64(t: np.ndarray, temp: float, n_iterations: int = 3) -> np.ndarray:
    """DINOv2's `sinkhorn_knopp_teacher` transcribed line by line, in float64, one device."""
    q = np.exp(t / temp).T
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


sinkhorn_jit = jax.jit(sinkhorn_knopp, static_argnames=("n_iterations", "axis_name"))


def run(t, temp, **kw):
    return np.asarray(sinkhorn_jit(jnp.asarray(t, jnp.float32), temp, **kw))


def test_cls_targets_match_official_dinov2():
    g = golden("dinov2_sinkhorn_cls.npz")
    t, temp, n_it = g["teacher_output"], float(g["teacher_temp"]), int(g["n_iterations"])
    q = run(t, temp, n_iterations=n_it)
    # The reference ran in float32: entries below ~1e-12 (of rows summing to 1) lost precision to
    # underflow there, so they are compared absolutely; everything above to rtol 1e-5.
    np.testing.assert_allclose(q, g["q"], rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(reference_f64(t, temp, n_it), g["q"], rtol=1e-5, atol=1e-12)
    # Against exact arithmetic only entries < 1e-20 may underflow.
    np.testing.assert_allclose(q, reference_f64(t, temp, n_it), rtol=1e-5, atol=1e-20)


def test_ibot_targets_with_b_equal_m_where_the_official_float32_code_overflows():
    g = golden("dinov2_ibot.npz")
    t, temp = g["teacher_raw_masked"], float(g["teacher_temp"])
    # max t/T = 93 > log(float32 max) = 88.7: the official code's exp overflows and every entry of
    # its output is NaN. The exact answer is the float64 transcription, which pathfm must match.
    assert (t / temp).max() > 88.8 and np.isnan(g["sinkhorn_q"]).all()
    q = run(t, temp)
    assert np.isfinite(q).all()
    np.testing.assert_allclose(q, reference_f64(t, temp), rtol=1e-5, atol=1e-20)


def test_marginals_rows_exact_prototypes_balanced_as_iterations_grow():
    t = np.asarray(jax.random.normal(jax.random.key(0), (64, 16)))
    b, k = t.shape
    errors = []
    for n_it in (1, 3, 30):
        q = run(t, 0.5, n_iterations=n_it)
        # The last step normalises samples: each row is a distribution, exactly.
        np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)
        errors.append(np.abs(q.sum(0) - b / k).max())
    # Prototype marginals are B/K only right after a prototype step: approximate after 3.
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4 and errors[1] < 0.3


def test_padded_rows_are_ignored_via_n_valid_or_valid():
    g = golden("dinov2_ibot.npz")
    t, temp = g["teacher_raw_masked"], float(g["teacher_temp"])
    padded = np.concatenate([t, np.full((3, t.shape[1]), 50.0)])  # big values: would dominate
    expected = run(t, temp)
    for kw in ({"n_valid": len(t)}, {"valid": jnp.arange(len(padded)) < len(t)}):
        q = run(padded, temp, **kw)
        np.testing.assert_allclose(q[: len(t)], expected, rtol=1e-6, atol=1e-30)
        np.testing.assert_array_equal(q[len(t) :], 0.0)


def test_same_targets_on_one_device_and_under_shard_map_over_four():
    mesh = jax.make_mesh((4,), ("data",))
    cls = golden("dinov2_sinkhorn_cls.npz")
    t, temp = jnp.asarray(cls["teacher_output"], jnp.float32), float(cls["teacher_temp"])
    split = NamedSharding(mesh, P("data"))
    f = jax.jit(
        jax.shard_map(
            lambda x: sinkhorn_knopp(x, temp, axis_name="data"),
            mesh=mesh,
            in_specs=P("data"),
            out_specs=P("data"),
        )
    )
    np.testing.assert_allclose(
        np.asarray(f(jax.device_put(t, split))), run(t, temp), rtol=1e-6, atol=1e-30
    )

    # iBOT: 37 masked tokens padded to 40 and split 4 ways; B = psum of the valid counts = 37.
    ib = golden("dinov2_ibot.npz")
    raw = ib["teacher_raw_masked"]
    padded = jnp.asarray(np.concatenate([raw, np.zeros((3, raw.shape[1]))]), jnp.float32)
    valid = jnp.arange(40) < 37
    g = jax.jit(
        jax.shard_map(
            lambda x, v: sinkhorn_knopp(x, temp, axis_name="data", valid=v),
            mesh=mesh,
            in_specs=(P("data"), P("data")),
            out_specs=P("data"),
        )
    )
    q = np.asarray(g(jax.device_put(padded, split), jax.device_put(valid, split)))
    np.testing.assert_allclose(q[:37], run(raw, temp), rtol=1e-6, atol=1e-30)
    np.testing.assert_array_equal(q[37:], 0.0)


def test_no_gradient_flows_into_the_teacher():
    t = jax.random.normal(jax.random.key(1), (8, 16))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(sinkhorn_knopp(x, 0.1) * jnp.arange(16.0))))(t)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_centering_alternative():
    t = jax.random.normal(jax.random.key(2), (6, 16)).astype(jnp.bfloat16)
    center = jnp.linspace(-1.0, 1.0, 16)[None]
    p = softmax_center_teacher(t, center, 0.04)
    assert p.dtype == jnp.float32
    expected = jax.nn.softmax((t.astype(jnp.float32) - center) / 0.04, axis=-1)
    np.testing.assert_allclose(np.asarray(p), np.asarray(expected), rtol=1e-6, atol=1e-30)
    # Patch tokens [B, N, K] with a [1, 1, K] center broadcast the same way.
    tokens = jnp.broadcast_to(t[:, None], (6, 3, 16))
    p_tok = softmax_center_teacher(tokens, center[None], 0.04)
    np.testing.assert_allclose(np.asarray(p_tok[:, 1]), np.asarray(p), rtol=1e-6)
    assert update_center is dino_loss.update_center


EIGHT_DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from pathfm.ssl.sinkhorn import sinkhorn_knopp
assert jax.device_count() == 8
t = jax.random.normal(jax.random.key(0), (64, 32)) * 3.0
one = np.asarray(jax.jit(lambda x: sinkhorn_knopp(x, 0.07))(t))
mesh = jax.make_mesh((8,), ("data",))
split = NamedSharding(mesh, P("data"))
mapped = jax.jit(jax.shard_map(lambda x: sinkhorn_knopp(x, 0.07, axis_name="data"), mesh=mesh,
                               in_specs=P("data"), out_specs=P("data")))
global_view = jax.jit(lambda x: sinkhorn_knopp(x, 0.07), out_shardings=split)
for q in (mapped(jax.device_put(t, split)), global_view(jax.device_put(t, split))):
    np.testing.assert_allclose(np.asarray(q), one, rtol=1e-5, atol=1e-30)
np.testing.assert_allclose(one.sum(1), 1.0, rtol=1e-5)
print("ok")
"""


def test_identical_on_one_and_eight_devices():
    import subprocess
    import sys

    from testutil import REPO

    done = subprocess.run(
        [sys.executable, "-c", EIGHT_DEVICES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
