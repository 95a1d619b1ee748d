"""Claim 1: the data is PAPER.md section 2's structured feature model."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contamination.presets import preset
from contamination.spec import static_spec, traced_values
from contamination.data import Sizes, dictionary, gaussian_frame, minibatch, online_batch, ood_split
from contamination.setup import prepare


def _setup(**kw):
    cfg = preset("toy", **{"n_train": 200, "n_test": 300, **kw})
    return cfg, prepare(static_spec(cfg), traced_values(cfg))


def _data(**kw):
    cfg, setup = _setup(**kw)
    data = setup.data
    # with the OOD set of the config's own range as a split
    return cfg, types.SimpleNamespace(**data._asdict(),
                                      ood=ood_split(data, cfg.core_dim, setup.sizes, jnp.asarray(cfg.bg_ood)))


@pytest.mark.parametrize("d0,d", [(8, 8), (16, 64), (64, 256), (128, 128)])
def test_dictionary_orthonormal(d0, d):
    M = np.asarray(dictionary(jax.random.key(3), d0 // 2, d0 - d0 // 2, d))
    assert M.shape == (d0, d)
    np.testing.assert_allclose(M @ M.T, np.eye(d0), atol=2e-5)


@pytest.mark.parametrize("d0,d", [(8, 8), (16, 64), (64, 256), (32, 1024)])
def test_dictionary_is_the_sign_fixed_qr_of_a_gaussian(d0, d):
    """The plain-JAX Gram-Schmidt gives LAPACK's Q (float64 here) with diag(R) > 0: Haar-random rows."""
    key = jax.random.key(5)
    c, b = d0 // 4, d0 - d0 // 4
    g = np.asarray(gaussian_frame(key, c, b, d, Sizes(c, b, d, 0, 0)), np.float64)
    assert g.shape == (d, d0) and abs(g.std() - 1) < 0.1
    q, r = np.linalg.qr(g)
    np.testing.assert_allclose(np.asarray(dictionary(key, c, b, d)), (q * np.sign(np.diag(r))).T, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_core_and_background_ranges(seed):
    cfg, data = _data(core="linear", bg_train=[0.2, 0.7], bg_ood=[-0.9, -0.3], seed=seed)
    M = np.asarray(data.M)
    for split, (lo, hi) in [(data.train, (0.2, 0.7)), (data.test, (0.2, 0.7)), (data.ood, (-0.9, -0.3))]:
        x, y = np.asarray(split.x), np.asarray(split.y)
        z = x @ M.T
        np.testing.assert_allclose(z @ M, x, atol=1e-4)  # x lies in the span of the dictionary
        core, bg = z[:, :cfg.core_dim], z[:, cfg.core_dim:]
        yc = y[:, None] * core  # core = y * U[0, 1]
        assert yc.min() > -1e-5 and yc.max() < 1 + 1e-5
        assert abs(yc.mean() - 0.5) < 0.02
        assert bg.min() > lo - 1e-5 and bg.max() < hi + 1e-5
        assert abs(bg.mean() - (lo + hi) / 2) < 0.02
        # labels balanced, first half +1
        n = len(y)
        assert (y[: n // 2] == 1).all() and (y[n // 2:] == -1).all()


def test_nonlinear_core_radii():
    cfg, data = _data(core="nonlinear")
    z = np.asarray(data.test.x) @ np.asarray(data.M).T
    r = np.linalg.norm(z[:, :cfg.core_dim], axis=1)
    y = np.asarray(data.test.y)
    np.testing.assert_allclose(r[y > 0], 1.0, atol=1e-4)
    np.testing.assert_allclose(r[y < 0], 2.0, atol=1e-4)
    # directions are uniform: mean direction near zero
    dirs = z[:, :cfg.core_dim] / r[:, None]
    assert np.abs(dirs.mean(0)).max() < 0.25


def test_ood_set_is_paired_with_test_set():
    cfg, data = _data(core="linear")
    M = np.asarray(data.M)
    zt, zo = np.asarray(data.test.x) @ M.T, np.asarray(data.ood.x) @ M.T
    np.testing.assert_allclose(zt[:, :cfg.core_dim], zo[:, :cfg.core_dim], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(data.test.y), np.asarray(data.ood.y))
    assert (zt[:, cfg.core_dim:] >= -1e-5).all() and (zo[:, cfg.core_dim:] <= 1e-5).all()
    # ID test set is independent of the training set
    ztr = np.asarray(data.train.x) @ M.T
    assert not np.allclose(ztr[:10, :cfg.core_dim], zt[:10, :cfg.core_dim])


def test_ranges_share_base_draws():
    """Runs differing only in a range see the same underlying uniforms (paired sweeps)."""
    _, a = _data(core="linear", bg_train=[0.0, 1.0])
    _, b = _data(core="linear", bg_train=[-0.5, 0.5])
    M = np.asarray(a.M)
    za, zb = np.asarray(a.train.x) @ M.T, np.asarray(b.train.x) @ M.T
    np.testing.assert_allclose(za[:, 32:] - 0.5, zb[:, 32:], atol=1e-5)


def test_online_and_minibatches():
    cfg, setup = _setup(core="linear")
    data, key = setup.data, jax.random.key(0)
    b0 = online_batch(key, jnp.int32(0), data.M, 16, cfg.core_dim, "linear", setup.sizes, jnp.array([0.0, 1.0]))
    b1 = online_batch(key, jnp.int32(1), data.M, 16, cfg.core_dim, "linear", setup.sizes, jnp.array([0.0, 1.0]))
    assert b0.x.shape == (16, cfg.input_dim) and not np.allclose(b0.x, b1.x)
    assert float(b0.y.sum()) == 0.0
    # one epoch of minibatches covers the training set exactly once
    seen = np.concatenate([np.asarray(minibatch(key, jnp.int32(t), data.train, 50).x) for t in range(4)])
    np.testing.assert_allclose(np.sort(seen.sum(1)), np.sort(np.asarray(data.train.x).sum(1)), atol=1e-5)
