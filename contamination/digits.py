"""Real digits as experiment data: scikit-learn's 1,797 bundled 8x8 handwritten digits (10
classes), each framed by a border whose intensity is drawn per image, independently of the label
(the paper's CIFAR-10 experiment, at the size of a 2-core CPU).

The data set is read once on the host from the CSV inside scikit-learn's wheel (never
downloaded: nothing here opens a socket) and enters the compiled program as a constant; the
split, the borders and the OOD sets are drawn inside it from the run's data key, so the training
loop stays one `jit(vmap)` program over seeds, widths and settings.

An image is `x = [digit pixels (64), border pixels (S^2 - 64)]` with S = 8 + 2 `border`: the
feature model of `data.py` with the standard basis as its dictionary, the digit's pixels as the
core coefficients and the border's pixels as the background ones, every border pixel of an image
at one intensity `z ~ U[bg_train]` (OOD: `U[bg_ood]`, the same test digits). So the classifier's
metrics read the same quantities: `bg_mean_proj` is the first layer's projection on the border's
mean direction, `core_norm`/`bg_norm` its weight on digit and border pixels. (The network is
fully connected, so where the border pixels sit does not matter to it; `layout` places them for
pictures.)
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp

from .numerics import float_dtype
import numpy as np

from .data import Data, Sizes, Split, per_row

SIDE = 8  # the digits are 8 x 8
N_PIXELS = SIDE * SIDE


class DataError(RuntimeError):
    """A data set cannot be read (e.g. its optional package is missing); one line."""


def side(border: int) -> int:
    return SIDE + 2 * border


def n_border(border: int) -> int:
    return side(border) ** 2 - N_PIXELS


@functools.lru_cache(maxsize=None)
def load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits, pixels scaled to [0, 1] (float32, (1797, 64)), and their labels 0-9."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset = \"digits\" needs scikit-learn, whose wheel ships the data set: "
                        "pip install scikit-learn (or make install EXTRAS=test)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise DataError(f"digits: {path} is missing from the scikit-learn installation; reinstall scikit-learn")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return raw[:, :-1] / 16.0, raw[:, -1].astype(np.int32)


def selected(classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The digits of `classes` (all ten when empty), labels renumbered 0..K-1 in that order,
    sorted by label (the in-program split relies on it)."""
    x, y = load_arrays()
    classes = tuple(classes) or tuple(range(10))
    keep = np.isin(y, classes)
    remap = np.full(10, -1, dtype=np.int32)
    remap[list(classes)] = np.arange(len(classes))
    x, y = x[keep], remap[y[keep]]
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


def available(classes: tuple[int, ...]) -> int:
    return len(selected(classes)[1])


def allocation(counts: np.ndarray, total: int) -> np.ndarray:
    """`total` split over classes in proportion to `counts` (largest remainders): a stratified size."""
    exact = counts * total / counts.sum()
    out = np.floor(exact).astype(int)
    out[np.argsort(-(exact - out), kind="stable")[: total - out.sum()]] += 1
    return out


@functools.lru_cache(maxsize=None)
def split_positions(classes: tuple[int, ...], n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Static positions, in the class-sorted order of a seed's shuffle, of the test and training
    points: the first `n_test_c` of each class test, the next `n_train_c` train (stratified)."""
    _, y = selected(classes)
    counts = np.bincount(y)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_te, n_tr = allocation(counts, n_test), allocation(counts, n_train)
    test = np.concatenate([s + np.arange(k) for s, k in zip(starts, n_te)])
    train = np.concatenate([s + t + np.arange(k) for s, t, k in zip(starts, n_te, n_tr)])
    return test, train


def labels_of(y: jax.Array, n_classes: int) -> jax.Array:
    """The model's labels: +-1 (first class +1) for a pair, the class index for K > 2."""
    y = y.astype(float_dtype())
    return jnp.where(y == 0, 1.0, -1.0) if n_classes == 2 else y


def make_digits_data(key: jax.Array, classes: tuple[int, ...], border: int, n_train: int, n_test: int,
                     n_classes: int, sizes: Sizes, bg_train: jax.Array) -> Data:
    """The digits data of one run: a seed-keyed stratified split, every image framed by a border of
    intensity `U[bg_train]` drawn per image, and the base uniforms of the OOD borders."""
    x_np, y_np = selected(classes)
    x_all, y_all = jnp.asarray(x_np), jnp.asarray(y_np)
    k_split, k_train, k_test, k_ood = jax.random.split(key, 4)
    u = per_row(k_split, len(y_np), lambda k: jax.random.uniform(k, ()))
    order = jnp.argsort(y_all.astype(float_dtype()) * 2.0 + u)  # by class, shuffled within each class
    test_pos, train_pos = split_positions(tuple(classes), n_train, n_test)
    nb = n_border(border)
    d = N_PIXELS + nb
    M = jnp.eye(d)

    def split(positions, k_border):
        idx = order[jnp.asarray(positions)]
        n = len(positions)
        core = jnp.concatenate([x_all[idx], jnp.zeros((n, nb))], axis=1)
        z = bg_train[0] + (bg_train[1] - bg_train[0]) * per_row(k_border, n, lambda k: jax.random.uniform(k, ()))
        x = core + jnp.concatenate([jnp.zeros((n, N_PIXELS)), jnp.broadcast_to(z[:, None], (n, nb))], axis=1)
        return Split(x, labels_of(y_all[idx], n_classes), jnp.ones((n,))), core

    train, _ = split(train_pos, k_train)
    test, test_core = split(test_pos, k_test)
    ood_u = jnp.broadcast_to(per_row(k_ood, len(test_pos), lambda k: jax.random.uniform(k, ()))[:, None],
                             (len(test_pos), nb))
    return Data(M, train, test, test_core, ood_u)


def layout(border: int) -> tuple[np.ndarray, np.ndarray]:
    """Raster positions (in an S x S image, row-major) of the 64 digit pixels and of the border
    pixels, in the input's order: `image.flat[pos] = x` draws an input as a picture."""
    s = side(border)
    grid = np.arange(s * s).reshape(s, s)
    inner = np.zeros((s, s), dtype=bool)
    inner[border:border + SIDE, border:border + SIDE] = True
    return grid[inner], grid[~inner]


def as_image(x: np.ndarray, border: int) -> np.ndarray:
    """An input vector (or a first-layer weight) as an S x S picture."""
    core, bg = layout(border)
    img = np.zeros(side(border) ** 2, dtype=np.asarray(x).dtype)
    img[core], img[bg] = x[:N_PIXELS], x[N_PIXELS:]
    return img.reshape(side(border), side(border))
