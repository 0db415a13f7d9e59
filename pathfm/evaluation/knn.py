"""DINO's weighted k-nearest-neighbour classifier (facebookresearch/dino `eval_knn.py`).

Features are L2-normalised, neighbours are the k training features of highest cosine similarity,
each votes for its class with weight exp(similarity / temperature), and the prediction is the
class with the largest summed vote (ties: the lowest class index).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _l2_normalise(x: jax.Array) -> jax.Array:
    """Rows of x [N, D] divided by their norm (floored at 1e-12, as torch's F.normalize)."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "chunk"))
def knn_classify(
    train_x: jax.Array,
    train_y: jax.Array,
    test_x: jax.Array,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 256,
) -> tuple[jax.Array, jax.Array]:
    """Classify test_x [M, D] by the k nearest of train_x [N, D] with labels train_y [N].

    Test features are processed `chunk` at a time, so memory holds [chunk, N] similarities.
    k is capped at N. Returns (predictions [M] int32, votes [M, num_classes] float32).
    """
    train = _l2_normalise(train_x)  # [N, D]
    train_y = jnp.asarray(train_y)
    k = min(k, train.shape[0])

    def votes_for(query: jax.Array) -> jax.Array:  # [D] -> [C]
        similarity = jnp.matmul(train, query, precision=jax.lax.Precision.HIGHEST)  # [N]
        top_similarity, top_index = jax.lax.top_k(similarity, k)  # [k]
        weights = jnp.exp(top_similarity / temperature)
        return jnp.zeros(num_classes, jnp.float32).at[train_y[top_index]].add(weights)

    votes = jax.lax.map(votes_for, _l2_normalise(test_x), batch_size=chunk)  # [M, C]
    return jnp.argmax(votes, axis=-1).astype(jnp.int32), votes
