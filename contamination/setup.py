"""What every experiment's run starts from: its data, initial parameters, masks and batches,
drawn from its traced values (true sizes, PRNG key words) at the program's padded sizes."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax

from .data import Data, Sizes, Split, first, make_data, minibatch, online_batch
from .model import Deep, Params, init_params, trainable_mask
from .spec import Static, Traced


class Setup(NamedTuple):
    data: Data
    params: Params
    trainable: Params
    mask: jax.Array  # the true neurons of the first layer
    batch_key: jax.Array
    sizes: Sizes  # the run's true sizes
    deep: Deep = Deep()  # the true sizes of layers 2..L


def sizes_of(traced: Traced) -> Sizes:
    return Sizes(traced.true_core_dim, traced.true_bg_dim, traced.true_input_dim, traced.true_n_train,
                 traced.true_n_test)


def run_key(words: jax.Array) -> jax.Array:
    """A run's PRNG key from its traced key words (`Traced.data_key`, `init_key`: threefry2x32)."""
    return jax.random.wrap_key_data(words, impl="threefry2x32")


def prepare(s: Static, traced: Traced) -> Setup:
    """Data, initial parameters and masks of one run, from its traced values."""
    data_key, init_key = run_key(traced.data_key), run_key(traced.init_key)
    k_data, k_batch = jax.random.split(data_key)
    true_width, sizes = traced.true_width, sizes_of(traced)
    if s.dataset == "digits":
        from .digits import make_digits_data  # the digits data's module loads only for digits runs

        data = make_digits_data(k_data, s.digit_classes, s.border, s.n_train, s.n_test, s.n_classes, sizes,
                                traced.bg_train)
    else:
        data = make_data(k_data, s.core_dim, s.bg_dim, s.input_dim, s.core, s.n_train, s.n_test, sizes,
                         traced.bg_train, s.n_classes, spurious=traced.bg_spurious)
    true_hidden, true_depth = traced.true_hidden, traced.true_depth
    params = init_params(init_key, s.width, s.input_dim, true_width, sizes.d, init=s.init, output=s.output,
                         bias=s.bias, init_scale=traced.init_scale, hidden=s.hidden, true_hidden=true_hidden,
                         true_depth=true_depth, n_classes=s.n_classes)
    deep = Deep.of(s.hidden, true_width, true_hidden, true_depth)
    trainable = trainable_mask(s.width, true_width, output=s.output, bias=s.bias, deep=deep, n_classes=s.n_classes)
    return Setup(data, params, trainable, first(s.width, true_width), k_batch, sizes, deep)


def make_get_batch(s: Static, setup: Setup, bg_train: jax.Array) -> Callable[[jax.Array], Split]:
    """The training batch of step `t`: a fresh online batch, a minibatch, or the full training set."""
    data, k_batch = setup.data, setup.batch_key

    def get_batch(t):
        if s.online:
            return online_batch(k_batch, t, data.M, s.batch_size, s.core_dim, s.core, setup.sizes, bg_train,
                                s.n_classes, spurious=None if s.dataset != "synthetic" else data.spurious)
        if s.minibatches:
            return minibatch(k_batch, t, data.train, s.batch_size)
        return data.train  # s.full_batch

    return get_batch
