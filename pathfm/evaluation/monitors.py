"""Unsupervised representation monitors of Aben et al. 2024 (kaiko.ai), jitted, float32.

RankMe (Garrido et al., ICML 2023): effective rank of the embedding matrix.
ODCorr: mean absolute off-diagonal Pearson correlation between embedding dimensions (lower is
better; collapsed or redundant features score high).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def rankme(z: jax.Array, eps: float = 1e-7) -> jax.Array:
    """exp(entropy of the normalised singular values) of z [N, D] (not centred)."""
    sigma = jnp.linalg.svd(z.astype(jnp.float32), compute_uv=False)
    p = sigma / jnp.sum(sigma) + eps
    return jnp.exp(-jnp.sum(p * jnp.log(p)))


@jax.jit
def odcorr(z: jax.Array) -> jax.Array:
    """Mean |corr(i, j)| over pairs of distinct dimensions of z [N, D].

    Pairs involving a constant dimension have no defined correlation and are left out; if every
    pair is undefined (a fully collapsed embedding) the result is NaN rather than a false 0.
    """
    z = z.astype(jnp.float32)
    centred = z - jnp.mean(z, axis=0, keepdims=True)
    std = jnp.sqrt(jnp.sum(jnp.square(centred), axis=0))  # [D]
    corr = (centred.T @ centred) / (std[:, None] * std[None, :])
    dims = z.shape[1]
    defined = (std[:, None] > 0) & (std[None, :] > 0) & ~jnp.eye(dims, dtype=bool)
    return jnp.sum(jnp.where(defined, jnp.abs(corr), 0.0)) / jnp.sum(defined)


def monitor_metrics(z: jax.Array) -> dict[str, float]:
    """{'rankme', 'odcorr'} of embeddings z [N, D] as Python floats."""
    return {"rankme": float(rankme(z)), "odcorr": float(odcorr(z))}
