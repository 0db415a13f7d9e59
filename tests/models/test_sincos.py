import numpy as np
import pytest
from testutil import golden

from pathfm.models.sincos import sincos_2d_pos_embed


def test_matches_official_mae_pos_embed():
    g = golden("mae_sincos.npz")
    emb = sincos_2d_pos_embed(int(g["embed_dim"]), int(g["grid_size"]), cls_token=True)
    assert emb.shape == g["pos_embed_with_cls"].shape == (17, 32)
    np.testing.assert_allclose(emb, g["pos_embed_with_cls"], rtol=1e-5, atol=1e-7)


def test_hand_checked_values_and_channel_order():
    d = 16  # four blocks of D/4 = 4 channels: sin(col), cos(col), sin(row), cos(row)
    emb = sincos_2d_pos_embed(d, (2, 3), cls_token=True)
    assert emb.shape == (1 + 6, d)
    np.testing.assert_array_equal(emb[0], 0.0)  # CLS row
    # Token 0 = (row 0, col 0): sin 0 = 0, cos 0 = 1 in both halves.
    np.testing.assert_array_equal(emb[1], [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4)
    omega = 1.0 / 10000 ** (np.arange(4) / 4)
    # Token 2 = (row 0, col 2): the W axis owns the first half of the channels.
    row, col = 0, 2
    expected = np.concatenate(
        [np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)]
    )
    np.testing.assert_allclose(emb[1 + 2], expected, rtol=1e-12)
    # Token 4 = (row 1, col 1) in row-major order of a 2 x 3 grid.
    np.testing.assert_allclose(emb[1 + 4, 0], np.sin(1.0))
    np.testing.assert_allclose(emb[1 + 4, 8], np.sin(1.0))
    np.testing.assert_allclose(emb[1 + 4, 4], np.cos(1.0))
    assert sincos_2d_pos_embed(d, 3).shape == (9, d)


def test_rejects_dimension_not_divisible_by_four():
    with pytest.raises(ValueError):
        sincos_2d_pos_embed(18, 4)
