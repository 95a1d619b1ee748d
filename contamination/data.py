"""The structured feature model (PAPER.md section 2) as pure functions of a key.

Inputs are `x = [core coefficients, background coefficients] @ M` with `M` a (d0, d)
matrix of orthonormal rows (the feature dictionary). Background coefficients are
`low + (high - low) * u` with `u ~ U[0, 1]`, so runs that differ only in a range share
their base draws (paired comparisons across a sweep).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Split(NamedTuple):
    x: jax.Array  # (n, d)
    y: jax.Array  # (n,), +-1, first half +1


class Data(NamedTuple):
    M: jax.Array  # (d0, d): rows are the features m_1..m_d0, core first
    train: Split
    test: Split  # independent ID test set
    ood: Split  # the test set's core and labels, background redrawn from bg_ood


def orthonormalize(a: jax.Array) -> jax.Array:
    """The Q of `a = QR` with diag(R) > 0, for a (d, k) matrix of full column rank.

    Classical Gram-Schmidt applied twice per column ("CGS2", orthogonal to working precision),
    in plain JAX. Not `jnp.linalg.qr`: that is a LAPACK custom call, and on a CPU with few
    cores, programs holding one deadlocked when several forced host devices ran them at once
    (`tests/test_engine.py::test_programs_hold_no_custom_calls`).
    """
    hi = jax.lax.Precision.HIGHEST

    def column(j, q):
        v = jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False)
        for _ in range(2):  # columns >= j of q are still zero, so this projects on q_0..q_{j-1}
            v = v - jnp.dot(q, jnp.dot(v, q, precision=hi), precision=hi)
        return jax.lax.dynamic_update_index_in_dim(q, v / jnp.linalg.norm(v), j, axis=1)

    return jax.lax.fori_loop(0, a.shape[1], column, jnp.zeros_like(a))


def dictionary(key: jax.Array, d0: int, d: int) -> jax.Array:
    """A Haar-random (d0, d) matrix with orthonormal rows (the Q of a Gaussian with diag(R) > 0)."""
    return orthonormalize(jax.random.normal(key, (d, d0))).T


def balanced_labels(n: int) -> jax.Array:
    """First n//2 labels +1, the rest -1 (as the reference script)."""
    return jnp.where(jnp.arange(n) < n // 2, 1.0, -1.0)


def core_coefficients(key: jax.Array, y: jax.Array, core_dim: int, core: str) -> jax.Array:
    """`linear`: y * U[0,1] per coordinate. `nonlinear`: a uniform direction of radius 1 (y=+1) or 2 (y=-1)."""
    n = y.shape[0]
    if core == "linear":
        return y[:, None] * jax.random.uniform(key, (n, core_dim))
    g = jax.random.normal(key, (n, core_dim))
    g = g / jnp.linalg.norm(g, axis=1, keepdims=True)
    return g * jnp.where(y > 0, 1.0, 2.0)[:, None]


def background_coefficients(key: jax.Array, n: int, bg_dim: int, rng: jax.Array) -> jax.Array:
    """Independent U[rng[0], rng[1]] per coordinate."""
    return rng[0] + (rng[1] - rng[0]) * jax.random.uniform(key, (n, bg_dim))


def sample(key: jax.Array, M: jax.Array, y: jax.Array, core_dim: int, core: str,
           bg_range: jax.Array, ood_range: jax.Array | None = None):
    """Inputs for labels `y`; with `ood_range`, also the paired OOD inputs (same core)."""
    k_core, k_bg, k_ood = jax.random.split(key, 3)
    bg_dim = M.shape[0] - core_dim
    zc = core_coefficients(k_core, y, core_dim, core)
    x = jnp.concatenate([zc, background_coefficients(k_bg, y.shape[0], bg_dim, bg_range)], axis=1) @ M
    if ood_range is None:
        return x
    z_ood = jnp.concatenate([zc, background_coefficients(k_ood, y.shape[0], bg_dim, ood_range)], axis=1)
    return x, z_ood @ M


def make_data(key: jax.Array, core_dim: int, bg_dim: int, input_dim: int, core: str,
              n_train: int, n_test: int, bg_train: jax.Array, bg_ood: jax.Array) -> Data:
    k_dict, k_train, k_test = jax.random.split(key, 3)
    M = dictionary(k_dict, core_dim + bg_dim, input_dim)
    y_train, y_test = balanced_labels(n_train), balanced_labels(n_test)
    x_train = sample(k_train, M, y_train, core_dim, core, bg_train)
    x_test, x_ood = sample(k_test, M, y_test, core_dim, core, bg_train, bg_ood)
    return Data(M, Split(x_train, y_train), Split(x_test, y_test), Split(x_ood, y_test))


def online_batch(key: jax.Array, step: jax.Array, M: jax.Array, batch_size: int, core_dim: int,
                 core: str, bg_train: jax.Array) -> Split:
    """A fresh balanced batch from the training distribution for step `step` (theory's online SGD)."""
    y = balanced_labels(batch_size)
    return Split(sample(jax.random.fold_in(key, step), M, y, core_dim, core, bg_train), y)


def minibatch(key: jax.Array, step: jax.Array, train: Split, batch_size: int) -> Split:
    """Minibatch `step` of epoch-wise shuffling without replacement (the last partial batch is dropped)."""
    n = train.y.shape[0]
    per_epoch = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), n)
    idx = jax.lax.dynamic_slice(perm, ((step % per_epoch) * batch_size,), (batch_size,))
    return Split(train.x[idx], train.y[idx])
