import jax
import jax.numpy as jnp
import numpy as np
from testutil import golden

from pathfm.models.mae_ops import patchify, random_masking, unpatchify, unshuffle
from pathfm.ssl.mae_loss import mae_loss


def _golden():
    g = golden("mae.npz")
    return g, int(g["patch_size"]), float(g["mask_ratio"])


def test_patchify_matches_official_mae():
    g, p, _ = _golden()
    patches = patchify(jnp.asarray(g["imgs_nhwc"], jnp.float32), p)
    assert patches.shape == (3, 16, 48)
    np.testing.assert_allclose(np.asarray(patches), g["patches"], rtol=1e-6)
    # Same as the reference's einsum on the NCHW images.
    x = g["imgs_nchw"].reshape(3, 3, 4, p, 4, p)
    ref = np.einsum("nchpwq->nhwpqc", x).reshape(3, 16, p * p * 3)
    np.testing.assert_allclose(np.asarray(patches), ref, rtol=1e-6)


def test_random_masking_matches_official_mae():
    g, _, ratio = _golden()
    kept, mask, ids_restore = jax.jit(random_masking, static_argnums=1)(
        jnp.asarray(g["tokens"], jnp.float32), ratio, noise=jnp.asarray(g["noise"], jnp.float32)
    )
    np.testing.assert_allclose(np.asarray(kept), g["tokens_kept"], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(mask), g["mask"])
    np.testing.assert_array_equal(np.asarray(ids_restore), g["ids_restore"])


def test_losses_match_official_mae():
    g, p, _ = _golden()
    imgs = jnp.asarray(g["imgs_nhwc"], jnp.float32)
    pred, mask = jnp.asarray(g["pred"], jnp.float32), jnp.asarray(g["mask"])
    loss = jax.jit(mae_loss, static_argnums=(3, 4))
    np.testing.assert_allclose(float(loss(imgs, pred, mask, p, True)), g["loss_norm_pix"], 1e-5)
    np.testing.assert_allclose(float(loss(imgs, pred, mask, p, False)), g["loss_plain"], 1e-5)


def test_unpatchify_inverts_patchify():
    x = jax.random.normal(jax.random.key(0), (2, 24, 16, 3))
    patches = patchify(x, 8)
    assert patches.shape == (2, 6, 192)
    np.testing.assert_array_equal(np.asarray(unpatchify(patches, 8, (3, 2))), np.asarray(x))
    sq = jax.random.normal(jax.random.key(1), (1, 16, 16, 3))
    np.testing.assert_array_equal(np.asarray(unpatchify(patchify(sq, 4), 4)), np.asarray(sq))


def test_masking_keeps_a_quarter_and_unshuffles_back():
    n, length, d = 4, 196, 3
    tokens = jax.random.normal(jax.random.key(0), (n, length, d))
    kept, mask, ids_restore = jax.jit(random_masking, static_argnums=1)(
        tokens, 0.75, jax.random.key(1)
    )
    assert kept.shape == (n, 49, d)
    np.testing.assert_array_equal(np.asarray(mask.sum(1)), length - 49)
    fill = jnp.full((n, length - 49, d), jnp.nan)
    restored = np.asarray(unshuffle(kept, fill, ids_restore))
    ref = np.take_along_axis(
        np.asarray(jnp.concatenate([kept, fill], 1)), np.asarray(ids_restore)[..., None], 1
    )
    np.testing.assert_array_equal(restored, ref)
    visible = np.asarray(mask) == 0
    np.testing.assert_array_equal(restored[visible], np.asarray(tokens)[visible])
    assert np.isnan(restored[~visible]).all()


def test_different_keys_give_different_masks():
    tokens = jnp.zeros((2, 64, 1))
    _, m1, _ = random_masking(tokens, 0.75, jax.random.key(0))
    _, m2, _ = random_masking(tokens, 0.75, jax.random.key(1))
    _, m1_again, _ = random_masking(tokens, 0.75, jax.random.key(0))
    assert not np.array_equal(np.asarray(m1), np.asarray(m2))
    assert not np.array_equal(np.asarray(m1[0]), np.asarray(m1[1]))  # per-sample masks
    np.testing.assert_array_equal(np.asarray(m1), np.asarray(m1_again))


def test_loss_ignores_visible_patches():
    g, p, _ = _golden()
    imgs = jnp.asarray(g["imgs_nhwc"], jnp.float32)
    pred, mask = jnp.asarray(g["pred"], jnp.float32), jnp.asarray(g["mask"])
    changed = jnp.where(mask[..., None] == 0, pred + 100.0, pred)
    grad_fn = jax.jit(jax.grad(mae_loss, argnums=1), static_argnums=(3, 4))
    for norm in (True, False):
        assert float(mae_loss(imgs, changed, mask, p, norm)) == float(
            mae_loss(imgs, pred, mask, p, norm)
        )
        grad = np.asarray(grad_fn(imgs, pred, mask, p, norm))
        assert np.all(grad[np.asarray(mask) == 0] == 0)
        assert np.any(grad[np.asarray(mask) == 1] != 0)
