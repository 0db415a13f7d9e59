"""DINOv2's iBOT on the masked tokens only (a per-device buffer of `upperbound` rows) against the
dense heads on every patch token: same loss, gradients and centers; host groups = loss groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testutil import random_dino_batch, tiny_dino_config

from pathfm.config import dinov2_defaults
from pathfm.data.masking import mask_upperbound
from pathfm.data.pipeline import AddBlockMasks
from pathfm.ssl.base import sample_major
from pathfm.ssl.dinov2 import DinoV2
from pathfm.ssl.dinov2_loss import ibot_loss_dense
from pathfm.ssl.ibot_buffer import buffer_size, gather_tokens, group_tokens, masked_buffer

BATCH = 8


class DenseDinoV2(DinoV2):
    """The loss as it was before the gather: the iBOT head on all 2B x N patch tokens, the
    targets over the masked ones (`valid=masks`) and `ibot_loss_dense`."""

    def _ibot(self, params, teacher, t_tokens, s_tokens, masks, extra, temp):
        t_logits = self._ibot_head(teacher, t_tokens)  # [2B, N, K]
        q = jax.lax.stop_gradient(self._patch_targets(extra, t_logits, masks, temp))
        s_logits = self._ibot_head(params, s_tokens)
        loss = ibot_loss_dense(s_logits, q, masks, self.config.dino.student_temp)
        return loss, {"teacher_patch": t_logits, "masks": masks, "overflow": jnp.int32(0)}


def _config(centering):
    tiny = {"model.patch_size": 4, "model.depth": 1}  # one block: the heads are what differs
    config = dinov2_defaults(tiny_dino_config(batch_size=BATCH, **tiny))
    config.dino.warmup_teacher_temp_epochs = 1
    config.dinov2.centering = centering
    return config


def _batch(config, groups, seed=0):
    grid = (config.crops.global_size // config.model.patch_size,) * 2
    v = config.dinov2
    add = AddBlockMasks(grid, v.mask_probability, tuple(v.mask_ratio), seed, groups=groups)
    batch = add({**random_dino_batch(config, seed), "index": np.arange(BATCH) + 100 * seed})
    return {k: jnp.asarray(batch[k]) for k in ("global_crops", "local_crops", "masks")}


def _state(method):
    params, extra = jax.jit(method.init)(jax.random.key(0))  # eager init takes seconds
    k = method.config.dino.out_dim
    # A teacher apart from the student and non-zero centers, so that every term is exercised.
    extra["teacher"] = jax.tree.map(
        lambda x: x * 1.1 + 0.01 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), extra["teacher"]
    )
    extra["center"] = 0.1 * jax.random.normal(jax.random.key(1), (1, k))
    extra["patch_center"] = 0.1 * jax.random.normal(jax.random.key(2), (1, k))
    return params, extra


def _step(method, params, extra, batch):
    """Loss, metrics, gradients and the updated centers of one step."""

    def loss(p):
        return method.loss(p, extra, batch, jax.random.key(3), 2)

    (value, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    new = jax.jit(method.update_extra)(extra, params, aux, 2)
    return value, aux, grads, new


def _close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


def _close_grads(a, b):
    """Every gradient leaf within 1e-4 of the other's norm, and element-wise within 1e-3 of its
    largest entry: float32 sums in another order, and some leaves are small (~1e-5, behind
    LayerScale) differences of large terms."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert np.isfinite(x).all()
        assert np.linalg.norm(x - y) <= 1e-4 * np.linalg.norm(y) + 1e-30
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-3 * np.abs(y).max())


@pytest.mark.parametrize(("centering", "groups"), [("sinkhorn_knopp", 4), ("centering", 1)])
def test_gathered_equals_dense_loss_gradients_and_centers(centering, groups):
    config = _config(centering)
    batch = _batch(config, groups)
    gathered, dense = DinoV2(config, groups), DenseDinoV2(config, groups)
    params, extra = _state(gathered)
    loss, aux, grads, new = _step(gathered, params, extra, batch)
    d_loss, d_aux, d_grads, d_new = _step(dense, params, extra, batch)

    valid = np.asarray(aux["masks"])
    n_tokens = batch["masks"].shape[-1]
    assert valid.shape == (groups, mask_upperbound(2 * BATCH // groups, n_tokens))
    assert valid.sum() == int(batch["masks"].sum()) and not valid.all()  # padded rows exist
    assert int(aux["metrics"]["ibot_overflow"]) == 0
    assert float(aux["metrics"]["ibot_loss"]) > 0.1
    np.testing.assert_allclose(loss, d_loss, rtol=1e-5)
    for name in ("ibot_loss", "dino_loss", "koleo_loss"):
        np.testing.assert_allclose(aux["metrics"][name], d_aux["metrics"][name], rtol=1e-5)
    _close_grads(grads, d_grads)
    centers = lambda e: (e["center"], e["patch_center"])
    _close(centers(new), centers(d_new), rtol=1e-5, atol=1e-7)


def test_host_groups_are_the_loss_groups_and_fit_the_bound():
    # AddBlockMasks(groups=G) draws each contiguous slice of B/G samples on its own; the loss
    # groups the sample-major [B*2] rows batch-major: group g = samples g*B/G .. (g+1)*B/G - 1.
    config, groups = _config("centering"), 4
    rows, p = 2 * BATCH // groups, config.dinov2.mask_probability
    overflowed = 0
    for seed in range(30):
        per_group = _batch(config, groups, seed)["masks"]  # [B, 2, N]
        flat = sample_major(per_group)  # [B*2, N]
        n_tokens = flat.shape[-1]
        ub = buffer_size(rows, n_tokens, p, tuple(config.dinov2.mask_ratio))
        grouped = np.asarray(group_tokens(flat, groups)).reshape(groups, rows, n_tokens)
        host = np.asarray(per_group).reshape(groups, rows, n_tokens)  # the host's B/G slices
        np.testing.assert_array_equal(grouped, host)
        for g in range(groups):
            masked_images = int(grouped[g].any(-1).sum())
            assert masked_images <= int(rows * p) and grouped[g].sum() <= ub
        assert int(masked_buffer(flat, groups, ub).overflow) == 0
        # One draw over the whole batch (groups=1) can put more masks in a group than its bound.
        whole = sample_major(_batch(config, 1, seed)["masks"])
        overflowed += int(masked_buffer(whole, groups, ub).overflow) > 0
    assert overflowed > 0


def test_buffer_order_weights_and_padding():
    masks = np.zeros((4, 5), bool)
    masks[0, [1, 3]] = True
    masks[3, :4] = True  # group 1 (rows 2, 3): 4 masked tokens
    buffer = masked_buffer(jnp.asarray(masks), 2, 6)
    np.testing.assert_array_equal(buffer.index[0, :2], [1, 3])  # row-major, masked first
    np.testing.assert_array_equal(buffer.index[1, :4], [5, 6, 7, 8])  # row 3 of the group's 10
    np.testing.assert_array_equal(buffer.valid.sum(1), [2, 4])
    np.testing.assert_allclose(buffer.weights, [[0.5, 0.5, 0, 0, 0, 0], [0.25] * 4 + [0, 0]])
    tokens = jnp.arange(4 * 5 * 3.0).reshape(4, 5, 3)
    out = np.asarray(gather_tokens(tokens, buffer))  # [2, 6, 3]
    grouped = np.asarray(tokens).reshape(2, 10, 3)
    np.testing.assert_array_equal(out, np.take_along_axis(grouped, buffer.index[..., None], 1))
    np.testing.assert_array_equal(out[1, :4], grouped[1, 5:9])
    assert not masks.reshape(2, 10)[0, np.asarray(buffer.index[0, 2:])].any()  # padded: unmasked
    assert int(masked_buffer(jnp.asarray(masks), 2, 3).overflow) == 1


def test_overflow_is_never_truncated_and_all_tokens_is_exact():
    config = _config("sinkhorn_knopp")
    batch = _batch(config, 1)
    batch["masks"] = batch["masks"].at[:2].set(True)  # hand-made: samples 0, 1 fully masked
    params, extra = _state(DinoV2(config, 1))
    loss, aux, _, _ = _step(DinoV2(config, 1), params, extra, batch)
    n_tokens = batch["masks"].shape[-1]
    ub = mask_upperbound(2 * BATCH, n_tokens)
    assert int(aux["metrics"]["ibot_overflow"]) == int(batch["masks"].sum()) - ub > 0
    assert np.isnan(loss) and np.isnan(aux["metrics"]["ibot_loss"])  # the step is dropped

    every, every_aux, every_grads, _ = _step(DinoV2(config, 1, "all"), params, extra, batch)
    dense, _, dense_grads, _ = _step(DenseDinoV2(config, 1), params, extra, batch)
    assert every_aux["masks"].shape == (1, 2 * BATCH * n_tokens)
    np.testing.assert_allclose(every, dense, rtol=1e-5)
    _close_grads(every_grads, dense_grads)
    with pytest.raises(ValueError, match="ibot buffer size"):
        DinoV2(config, 1, "dense")
