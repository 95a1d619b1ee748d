"""The two-layer network `f(x) = sum_k a_k act(<w_k, x> + b_k) + c`, its init and losses.

Width may be padded: neurons `k >= true_width` have zero weights, are held at zero by the
trainable mask, and their activations are masked (sigmoid(0) != 0 would revive them).
The input dimension may be padded too: padded input columns of `w` start at zero and stay
there (their inputs are exactly zero, so is their gradient). Every init draw is per neuron
(`data.per_row`), so the first `true_width` neurons of a padded network, restricted to the
first `true_d` inputs, are exactly the neurons of the unpadded one.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .data import first, per_row


class Params(NamedTuple):
    w: jax.Array  # (m, d) first layer
    b: jax.Array  # (m,) first-layer bias
    a: jax.Array  # (m,) output weights
    c: jax.Array  # () output bias


def activate(pre: jax.Array, activation: str, slope: jax.Array) -> jax.Array:
    if activation == "relu":
        return jax.nn.relu(pre)
    if activation == "gelu":
        return jax.nn.gelu(pre, approximate=False)
    if activation == "leaky_relu":
        return jnp.where(pre >= 0, pre, slope * pre)
    if activation == "sigmoid":
        return jax.nn.sigmoid(pre)
    if activation == "tanh":
        return jnp.tanh(pre)
    if activation == "linear":
        return pre
    raise ValueError(f"unknown activation {activation!r}")


def init_params(key: jax.Array, width: int, input_dim: int, true_width: jax.Array, true_d: jax.Array, *,
                init: str, output: str, bias: bool, init_scale: jax.Array) -> Params:
    """PyTorch-default (`torch`) or N(0, 1/d) (`theory`) init; output per `output` mode.

    Fan-ins are the true ones: d for the first layer, the true width for the output layer.
    `init_scale` multiplies the first layer (weights and biases).
    """
    k_w, k_b, k_a, k_c = jax.random.split(key, 4)
    m_true = true_width.astype(jnp.float32)
    d_true = jnp.asarray(true_d).astype(jnp.float32)
    mask = first(width, true_width)
    if init == "torch":
        bound = 1.0 / jnp.sqrt(d_true)
        w = per_row(k_w, width, lambda k: jax.random.uniform(k, (input_dim,), minval=-bound, maxval=bound))
        b = per_row(k_b, width, lambda k: jax.random.uniform(k, (), minval=-bound, maxval=bound))
        out_bound = 1.0 / jnp.sqrt(m_true)
        a = per_row(k_a, width, lambda k: jax.random.uniform(k, (), minval=-1.0, maxval=1.0)) * out_bound
        c = jax.random.uniform(k_c, (), minval=-1.0, maxval=1.0) * out_bound
    elif init == "theory":
        w = per_row(k_w, width, lambda k: jax.random.normal(k, (input_dim,))) / jnp.sqrt(d_true)
        b = jnp.zeros((width,))
        a = per_row(k_a, width, lambda k: jax.random.rademacher(k, (), dtype=jnp.float32)) / m_true
        c = jnp.zeros(())
    else:
        raise ValueError(f"unknown init {init!r}")
    idx = jnp.arange(width)
    if output == "frozen_half":
        a = jnp.where(idx < true_width // 2, 1.0, -1.0) / m_true
    elif output == "frozen_random":
        a = per_row(k_a, width, lambda k: jax.random.rademacher(k, (), dtype=jnp.float32)) / m_true
    w = w * init_scale * mask[:, None] * first(input_dim, true_d)
    b = b * init_scale * mask if bias else jnp.zeros((width,))
    c = c if bias else jnp.zeros(())
    return Params(w, b, a * mask, c)


def trainable_mask(width: int, true_width: jax.Array, *, output: str, bias: bool) -> Params:
    """1 where a parameter trains, 0 where it is padding, frozen, or switched off."""
    mask = first(width, true_width)
    train_out = output == "train"
    return Params(
        w=jnp.broadcast_to(mask[:, None], (width, 1)),
        b=mask * float(bias),
        a=mask * float(train_out),
        c=jnp.asarray(float(bias and train_out)),
    )


@jax.custom_vjp
def dense_dm(x: jax.Array, xT: jax.Array, wT: jax.Array) -> jax.Array:
    """`x @ wT` for a first layer stored (d, m), given the inputs also as `xT` (d, n).

    Its weight gradient is `xT @ g`, so both GEMMs of a step take row-major operands as they
    are. Autodiff of `x @ w.T` with w stored (m, d) gives `g.T @ x`, a transposed-operand
    GEMM that XLA's CPU backend ran 12-14% slower for the pair at the reference sizes
    (`benchmarks/profile_step.py`, BENCHMARKS.md). No gradient flows to the data.
    """
    return x @ wT


def _dense_dm_fwd(x, xT, wT):
    return x @ wT, (x, xT)


def _dense_dm_bwd(res, g):
    x, xT = res
    return jnp.zeros_like(x), jnp.zeros_like(xT), xT @ g


dense_dm.defvjp(_dense_dm_fwd, _dense_dm_bwd)


def to_dm(params: Params) -> Params:
    """The training layout: the first layer stored (d, m) (see `dense_dm`); `to_dm` is its own inverse."""
    return params._replace(w=params.w.T)


def hidden(params: Params, x: jax.Array, activation: str, slope: jax.Array, mask: jax.Array,
           xT: jax.Array | None = None):
    """Hidden activations (masked) and pre-activations, both (n, m).

    With `xT` (the inputs transposed), `params` are in the training layout (`to_dm`).
    """
    pre = (x @ params.w.T if xT is None else dense_dm(x, xT, params.w)) + params.b
    return activate(pre, activation, slope) * mask, pre


def forward(params: Params, x: jax.Array, activation: str, slope: jax.Array, mask: jax.Array,
            xT: jax.Array | None = None):
    h, pre = hidden(params, x, activation, slope, mask, xT)
    return h @ params.a + params.c, pre


def loss_values(f: jax.Array, y: jax.Array, loss: str) -> jax.Array:
    """Per-sample loss for labels +-1: logistic (stable softplus), hinge, or squared error."""
    if loss == "logistic":
        return jax.nn.softplus(-y * f)
    if loss == "hinge":
        return jax.nn.relu(1.0 - y * f)
    if loss == "mse":
        return (f - y) ** 2
    raise ValueError(f"unknown loss {loss!r}")
