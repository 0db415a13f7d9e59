import jax
import jax.numpy as jnp
import numpy as np
import pytest
from testutil import golden

from pathfm.evaluation.monitors import odcorr, rankme


def test_rankme_and_odcorr_match_golden():
    g = golden("monitors.npz")
    np.testing.assert_allclose(float(rankme(jnp.asarray(g["z"]))), g["rankme"], rtol=1e-5)
    np.testing.assert_allclose(float(odcorr(jnp.asarray(g["z"]))), g["odcorr"], rtol=1e-5)


def test_rankme_known_cases():
    # Orthonormal rows: all singular values equal -> RankMe = D (up to the 1e-7 smoothing).
    assert float(rankme(jnp.eye(8))) == pytest.approx(8.0, rel=1e-4)
    # Rank one: one non-zero singular value -> RankMe ~ 1.
    z = jnp.outer(jnp.arange(1.0, 11.0), jnp.ones(6))
    assert float(rankme(z)) == pytest.approx(1.0, abs=1e-3)


def test_odcorr_known_cases():
    x = jax.random.normal(jax.random.key(0), (20000, 4))
    assert float(odcorr(x)) < 0.02  # independent dimensions
    redundant = jnp.concatenate([x[:, :1], 2 * x[:, :1], -x[:, :1]], axis=1)
    assert float(odcorr(redundant)) == pytest.approx(1.0, abs=1e-5)
    collapsed = jnp.ones((10, 5))
    assert np.isnan(float(odcorr(collapsed)))  # undefined, never reported as perfect
