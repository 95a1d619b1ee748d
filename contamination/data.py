"""The structured feature model (docs/simulator.md, "The model") as pure functions of a key.

Inputs are `x = z_core @ M_core + z_bg @ M_bg` with `M = [M_core; M_bg]` a (d0, d) matrix of
orthonormal rows (the feature dictionary). Background coefficients are `low + (high - low) * u`
with `u ~ U[0, 1]`, so runs that differ only in a range share their base draws (paired
comparisons across a sweep).

Every shape may be padded (a program holds runs of several sizes): arrays have the program's
static sizes, and a run's true sizes (`Sizes`, traced) mask the rest to exact zeros. Every
random draw is made per row (one `fold_in` per sample, feature or neuron) as a 1-D draw whose
first k values do not depend on its length (threefry's partitionable counters), so the padded
draw restricted to the true sizes *is* the unpadded one.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from .numerics import float_dtype


class Sizes(NamedTuple):
    """A run's true sizes (traced int32 scalars) inside a possibly larger program."""

    core: jax.Array
    bg: jax.Array
    d: jax.Array
    n_train: jax.Array
    n_test: jax.Array


class Split(NamedTuple):
    x: jax.Array  # (n, d); padded rows and columns are zero
    # (n,) labels. Two classes: +-1, first half of the true rows +1, 0 on padded rows.
    # K > 2 classes: the class 0..K-1 (rows in K equal blocks), 0 on padded rows.
    y: jax.Array
    mask: jax.Array  # (n,) 1.0 on true rows


class Data(NamedTuple):
    M: jax.Array  # (core_dim + bg_dim, d): rows are the features, core first; padded rows zero
    train: Split
    test: Split  # independent ID test set
    test_core: jax.Array  # (n_test, d): the test set's core part, shared by every OOD set
    ood_u: jax.Array  # (n_test, bg_dim): base uniforms of the OOD background (masked)
    # The training background range and `bg_spurious`, which the OOD sets need: the
    # orthogonal shift is measured from the training mean, and the spurious coefficient flips.
    bg_train: jax.Array | None = None
    spurious: jax.Array | float = 0.0


def check_prefix_stable_draws() -> None:
    """Padding is exact only with threefry's partitionable counters (JAX's default since 0.5)."""
    if not jax.config.jax_threefry_partitionable:
        raise RuntimeError("contamination needs jax_threefry_partitionable=True (JAX's default): padded "
                           "random draws must restrict to the unpadded ones")


def per_row(key: jax.Array, n: int, draw: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """`draw(fold_in(key, i))` for rows i < n, stacked: row i never depends on n."""
    return jax.vmap(lambda i: draw(jax.random.fold_in(key, i)))(jnp.arange(n))


def first(n: int, true_n: jax.Array) -> jax.Array:
    """The float mask of the first `true_n` of `n` entries."""
    return (jnp.arange(n) < true_n).astype(float_dtype())


def orthonormalize(a: jax.Array) -> jax.Array:
    """The Q of `a = QR` with diag(R) > 0, for a (d, k) matrix; zero columns (padding) stay zero.

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
        norm = jnp.linalg.norm(v)
        return jax.lax.dynamic_update_index_in_dim(q, v / jnp.where(norm > 0, norm, 1.0), j, axis=1)

    return jax.lax.fori_loop(0, a.shape[1], column, jnp.zeros_like(a))


def gaussian_frame(key: jax.Array, core_dim: int, bg_dim: int, input_dim: int, sizes: Sizes) -> jax.Array:
    """The (d, core_dim + bg_dim) Gaussian the dictionary orthonormalizes: one column per feature,
    drawn per feature (core and background features from separate streams), padding zero."""
    k_core, k_bg = jax.random.split(key)
    d_mask = first(input_dim, sizes.d)
    column = lambda k: jax.random.normal(k, (input_dim,)) * d_mask  # noqa: E731
    g_core = per_row(k_core, core_dim, column) * first(core_dim, sizes.core)[:, None]
    g_bg = per_row(k_bg, bg_dim, column) * first(bg_dim, sizes.bg)[:, None]
    return jnp.concatenate([g_core, g_bg]).T


def dictionary(key: jax.Array, core_dim: int, bg_dim: int, input_dim: int, sizes: Sizes | None = None) -> jax.Array:
    """A Haar-random (d0, d) matrix with orthonormal rows (the Q of a Gaussian with diag(R) > 0),
    orthonormal in the run's own coordinates: padded rows and columns are zero."""
    if sizes is None:
        sizes = Sizes(core_dim, bg_dim, input_dim, 0, 0)
    return orthonormalize(gaussian_frame(key, core_dim, bg_dim, input_dim, sizes)).T


def balanced_labels(n: int, true_n: jax.Array | int | None = None) -> jax.Array:
    """First true_n//2 labels +1, the rest of the true rows -1 (as the reference script); padding 0."""
    true_n = n if true_n is None else true_n
    i = jnp.arange(n)
    return jnp.where(i < true_n // 2, 1.0, jnp.where(i < true_n, -1.0, 0.0))


def class_labels(n: int, true_n: jax.Array | int | None, n_classes: int) -> jax.Array:
    """Labels of n rows: `balanced_labels` for two classes; for K > 2, row i < true_n is class
    floor(i K / true_n) (K blocks of equal size, up to one), padded rows 0."""
    if n_classes == 2:
        return balanced_labels(n, true_n)
    true_n = n if true_n is None else true_n
    i = jnp.arange(n)
    return jnp.where(i < true_n, (i * n_classes) // true_n, 0).astype(float_dtype())


def owned_features(y: jax.Array, core_dim: int, n_classes: int) -> jax.Array:
    """(n, core_dim): 1 where core feature j belongs to the row's class (j mod K = y), K > 2."""
    return (jnp.arange(core_dim)[None, :] % n_classes == y[:, None].astype(jnp.int32)).astype(float_dtype())


def uniform_rows(key: jax.Array, n: int, k: int, true_k: jax.Array) -> jax.Array:
    """U[0, 1] per row and column, the columns past `true_k` zero."""
    return per_row(key, n, lambda kk: jax.random.uniform(kk, (k,))) * first(k, true_k)


def core_coefficients(key: jax.Array, y: jax.Array, core_dim: int, true_core: jax.Array, core: str,
                      n_classes: int = 2) -> jax.Array:
    """Two classes: `linear`: y * U[0,1] per coordinate; `nonlinear`: a uniform direction of
    radius 1 (y=+1) or 2 (y=-1). K > 2 classes: the class's own features only (j mod K = y):
    `linear`: U[0,1] on each; `nonlinear`: a uniform direction of radius 1 in their span (the
    class is which subspace the point lies in, not a sign: no linear read-out separates it)."""
    n = y.shape[0]
    if n_classes > 2:
        own = owned_features(y, core_dim, n_classes)
        if core == "linear":
            return uniform_rows(key, n, core_dim, true_core) * own
        g = per_row(key, n, lambda k: jax.random.normal(k, (core_dim,))) * first(core_dim, true_core) * own
        return g / jnp.linalg.norm(g, axis=1, keepdims=True)
    if core == "linear":
        return y[:, None] * uniform_rows(key, n, core_dim, true_core)
    g = per_row(key, n, lambda k: jax.random.normal(k, (core_dim,))) * first(core_dim, true_core)
    g = g / jnp.linalg.norm(g, axis=1, keepdims=True)
    return g * jnp.where(y > 0, 1.0, jnp.where(y < 0, 2.0, 0.0))[:, None]


def background(u: jax.Array, rng: jax.Array, bg_mask: jax.Array) -> jax.Array:
    """Coefficients U[rng[0], rng[1]] from base uniforms `u`; padded columns stay zero."""
    return (rng[0] + (rng[1] - rng[0]) * u) * bg_mask


def spurious_offset(y: jax.Array, bg_dim: int, true_bg: jax.Array, spurious) -> jax.Array:
    """(n, bg_dim): `spurious` * y on the first background coefficient (two classes, y = +-1; 0 on
    padded rows), zero elsewhere: the `bg_spurious` correlation."""
    e0 = ((jnp.arange(bg_dim) == 0) & (true_bg > 0)).astype(float_dtype())
    return spurious * y[:, None] * e0[None, :]


def orthogonal_pattern(bg_dim: int, true_bg: jax.Array) -> jax.Array:
    """(bg_dim,): the zero-sum pattern of an orthogonal OOD shift, +1 on even and -1 on odd
    background features (a last odd one out: 0), scaled so that its squared norm is the true
    number of background features (the same L2 size as the all-ones pattern of a mean shift)."""
    j = jnp.arange(bg_dim)
    paired = 2 * (jnp.asarray(true_bg) // 2)
    pattern = jnp.where(j < paired, jnp.where(j % 2 == 0, 1.0, -1.0), 0.0).astype(float_dtype())
    scale = jnp.sqrt(jnp.asarray(true_bg).astype(float_dtype()) / jnp.maximum(paired, 1).astype(float_dtype()))
    return pattern * scale


def sample(key: jax.Array, M: jax.Array, y: jax.Array, mask: jax.Array, core_dim: int, core: str,
           sizes: Sizes, bg_range: jax.Array, with_ood: bool = False, n_classes: int = 2, spurious=None):
    """A split of inputs for labels `y` (rows where `mask` is 0 are zero).

    With `with_ood`, also the split's core part and the base uniforms of its OOD background
    (an OOD set reuses the core coefficients and labels; only the background is redrawn).
    """
    k_core, k_bg, k_ood = jax.random.split(key, 3)
    n, bg_dim = y.shape[0], M.shape[0] - core_dim
    bg_mask = first(bg_dim, sizes.bg)
    x_core = core_coefficients(k_core, y, core_dim, sizes.core, core, n_classes) @ M[:core_dim] * mask[:, None]
    zb = background(uniform_rows(k_bg, n, bg_dim, sizes.bg), bg_range, bg_mask)
    if spurious is not None:
        zb = zb + spurious_offset(y, bg_dim, sizes.bg, spurious)
    split = Split(x_core + zb @ M[core_dim:] * mask[:, None], y, mask)
    if not with_ood:
        return split
    return split, x_core, uniform_rows(k_ood, n, bg_dim, sizes.bg)


def make_data(key: jax.Array, core_dim: int, bg_dim: int, input_dim: int, core: str,
              n_train: int, n_test: int, sizes: Sizes, bg_train: jax.Array, n_classes: int = 2,
              spurious=None) -> Data:
    check_prefix_stable_draws()
    k_dict, k_train, k_test = jax.random.split(key, 3)
    M = dictionary(k_dict, core_dim, bg_dim, input_dim, sizes)
    y_train = class_labels(n_train, sizes.n_train, n_classes)
    y_test = class_labels(n_test, sizes.n_test, n_classes)
    train = sample(k_train, M, y_train, first(n_train, sizes.n_train), core_dim, core, sizes, bg_train,
                   n_classes=n_classes, spurious=spurious)
    test, test_core, ood_u = sample(k_test, M, y_test, first(n_test, sizes.n_test), core_dim, core, sizes,
                                    bg_train, with_ood=True, n_classes=n_classes, spurious=spurious)
    return Data(M, train, test, test_core, ood_u, bg_train, 0.0 if spurious is None else spurious)


def ood_split(data: Data, core_dim: int, sizes: Sizes, ood_range: jax.Array, orth=None) -> Split:
    """The OOD set for background range `ood_range`: the test set's core and labels, background redrawn."""
    return ood_inputs(data.M, core_dim, sizes, data.test_core, data.ood_u, data.test, ood_range, orth,
                      data.bg_train, data.spurious)


def ood_inputs(M: jax.Array, core_dim: int, sizes: Sizes, x_core: jax.Array, u: jax.Array, split: Split,
               ood_range: jax.Array, orth=None, bg_train=None, spurious=0.0) -> Split:
    """`split`'s points (core part `x_core`, labels, mask) with the background drawn from `ood_range`
    by base uniforms `u`. With `orth` = 1 (the orthogonal shift) every coefficient is moved
    back by the mean shift delta = mean(ood_range) - mean(bg_train) and then by delta times the
    zero-sum `orthogonal_pattern`: the OOD range's spread, an L2 shift of |delta| sqrt(d_bg) as the
    mean shift's, and the training mean. A spurious coefficient (`bg_spurious`) flips its sign."""
    bg_dim = M.shape[0] - core_dim
    zb = background(u, ood_range, first(bg_dim, sizes.bg))
    if orth is not None:
        delta = 0.5 * (ood_range[0] + ood_range[1]) - 0.5 * (bg_train[0] + bg_train[1])
        zb = zb - orth * delta * (1.0 - orthogonal_pattern(bg_dim, sizes.bg)) * first(bg_dim, sizes.bg)
    if not (isinstance(spurious, float) and spurious == 0.0):
        zb = zb - spurious_offset(split.y, bg_dim, sizes.bg, spurious)
    x = x_core + (zb @ M[core_dim:]) * split.mask[:, None]
    return Split(x, split.y, split.mask)


def online_batch(key: jax.Array, step: jax.Array, M: jax.Array, batch_size: int, core_dim: int,
                 core: str, sizes: Sizes, bg_train: jax.Array, n_classes: int = 2, spurious=None) -> Split:
    """A fresh balanced batch from the training distribution for step `step` (theory's online SGD)."""
    y = class_labels(batch_size, None, n_classes)
    return sample(jax.random.fold_in(key, step), M, y, jnp.ones((batch_size,)), core_dim, core, sizes, bg_train,
                  n_classes=n_classes, spurious=spurious)


def minibatch(key: jax.Array, step: jax.Array, train: Split, batch_size: int) -> Split:
    """Minibatch `step` of epoch-wise shuffling without replacement (the last partial batch is dropped).

    The training set is unpadded here (`config.pad_fields`): a permutation depends on its length.
    """
    n = train.y.shape[0]
    per_epoch = n // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), n)
    idx = jax.lax.dynamic_slice(perm, ((step % per_epoch) * batch_size,), (batch_size,))
    return Split(train.x[idx], train.y[idx], train.mask[idx])
