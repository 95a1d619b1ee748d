"""The network `f(x) = a . h_L(x) + c` with hidden layers `h_l = act(W_l h_{l-1} + b_l)`,
`h_0 = x` (the two-layer network `sum_k a_k act(<w_k, x> + b_k) + c` at depth 1), its init and
losses. Two classes: one output and labels +-1; K > 2 classes: K logits (`a` is (m_L, K)).

Depth may be padded too: a run of depth L in a program of more layers skips the layers past
its own (each passes its input through unchanged), so the output layer reads its last layer.
Deeper layers are drawn per unit like the first (one `fold_in` per layer, then per unit) with
the true fan-in of the layer below.

Width may be padded: neurons `k >= true_width` have zero weights, are held at zero by the
trainable mask, and their activations are masked (sigmoid(0) != 0 would revive them).
The input dimension may be padded too: padded input columns of `w` start at zero and stay
there (their inputs are exactly zero, so is their gradient). Every init draw is per neuron
(`data.per_row`), so the first `true_width` neurons of a padded network, restricted to the
first `true_d` inputs, are exactly the neurons of the unpadded one.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .numerics import float_dtype

from .data import first, per_row


class Params(NamedTuple):
    w: jax.Array  # (m, d) first layer
    b: jax.Array  # (m,) first-layer bias
    a: jax.Array  # (m_L,) output weights; (m_L, K) for K > 2 classes
    c: jax.Array  # () output bias; (K,)
    deep: tuple = ()  # layers 2..L: ((W_l (m_l, m_{l-1}), b_l (m_l,)), ...)


class Deep(NamedTuple):
    """The true sizes of layers 2..L of one run in its program (empty at depth 1)."""

    masks: tuple = ()  # (m_l,) unit masks
    active: tuple = ()  # per layer, a traced bool: the run has this layer (False: skipped)
    last: jax.Array | None = None  # the (n_units,) mask of the run's last hidden layer

    @staticmethod
    def of(widths: tuple[int, ...], true_width: jax.Array, true_hidden: jax.Array | None,
           true_depth: jax.Array | None) -> "Deep":
        """From the program's padded widths of layers 2..L and the run's true sizes."""
        if not widths:
            return Deep()
        masks = tuple(first(m, true_hidden[i]) for i, m in enumerate(widths))
        active = tuple(i + 2 <= true_depth for i in range(len(widths)))
        true_last = jnp.concatenate([true_width[None], true_hidden])[true_depth - 1]
        return Deep(masks, active, first(widths[-1], true_last))


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
                init: str, output: str, bias: bool, init_scale: jax.Array, hidden: tuple[int, ...] = (),
                true_hidden: jax.Array | None = None, true_depth: jax.Array | None = None,
                n_classes: int = 2) -> Params:
    """PyTorch-default (`torch`) or N(0, 1/fan-in) (`theory`) init; output per `output` mode.

    Fan-ins are the true ones: d for the first layer, the true width below for deeper layers
    and the output layer. `init_scale` multiplies the first layer (weights and biases).
    `hidden` are the padded widths of layers 2..L; the run's own are `true_hidden` (0 past its
    `true_depth`).
    """
    k_w, k_b, k_a, k_c = jax.random.split(key, 4)
    w, b = _first_layer(k_w, k_b, width, input_dim, true_width, true_d, init, bias, init_scale)
    widths = (width,) + tuple(hidden)
    deep_sizes = Deep.of(tuple(hidden), true_width, true_hidden, true_depth)
    masks = (first(width, true_width),) + deep_sizes.masks
    trues = (true_width,) + tuple(true_hidden[i] for i in range(len(hidden)))
    deep = tuple(_deep_layer(jax.random.fold_in(key, l + 1), widths[l], widths[l - 1], masks[l], masks[l - 1],
                             trues[l - 1], init, bias) for l in range(1, len(widths)))
    a, c = _output_layer(k_a, k_c, widths[-1], deep_sizes.last if hidden else masks[0], init=init, output=output,
                         bias=bias, n_classes=n_classes)
    return Params(w, b, a, c, deep)


def rademacher(key, shape):
    return jax.random.rademacher(key, shape, dtype=float_dtype())


def _draw_layer(k_w, k_b, m, n_in, fan_in, init):
    """A layer's weights (m, n_in) and biases (m,), one draw per unit: U(+-1/sqrt(fan_in)) for
    `torch`, N(0, 1/fan_in) weights and zero biases for `theory`."""
    if init == "torch":
        bound = 1.0 / jnp.sqrt(fan_in)
        w = per_row(k_w, m, lambda k: jax.random.uniform(k, (n_in,), minval=-bound, maxval=bound))
        b = per_row(k_b, m, lambda k: jax.random.uniform(k, (), minval=-bound, maxval=bound))
        return w, b
    if init == "theory":
        return per_row(k_w, m, lambda k: jax.random.normal(k, (n_in,))) / jnp.sqrt(fan_in), jnp.zeros((m,))
    raise ValueError(f"unknown init {init!r}")


def _first_layer(k_w, k_b, width, input_dim, true_width, true_d, init, bias, init_scale):
    mask = first(width, true_width)
    w, b = _draw_layer(k_w, k_b, width, input_dim, jnp.asarray(true_d).astype(float_dtype()), init)
    w = w * init_scale * mask[:, None] * first(input_dim, true_d)
    b = b * init_scale * mask if bias else jnp.zeros((width,))
    return w, b


def _deep_layer(key, m, m_prev, mask, mask_prev, true_prev, init, bias):
    """Layer l >= 2 of (padded) width m over a layer of width m_prev: per-unit draws, true fan-in."""
    fan_in = jnp.maximum(true_prev, 1).astype(float_dtype())  # a layer past the run's depth has none
    w, b = _draw_layer(*jax.random.split(key), m, m_prev, fan_in, init)
    return w * mask[:, None] * mask_prev[None, :], (b * mask if bias else jnp.zeros((m,)))


def _output_layer(k_a, k_c, m_last, last, *, init, output, bias, n_classes):
    """The output weights (m_last,) or (m_last, K) and bias over the last hidden layer, whose true
    units are `last`: drawn per unit, fan-in the true width."""
    true_last = jnp.sum(last)
    k = 1 if n_classes == 2 else n_classes
    shape = () if n_classes == 2 else (k,)  # two classes: one scalar draw per unit

    def out_draw(kk, draw):
        return draw(kk, shape).reshape(k)

    if init == "torch":
        out_bound = 1.0 / jnp.sqrt(true_last)
        uniform = functools.partial(jax.random.uniform, minval=-1.0, maxval=1.0)
        a = per_row(k_a, m_last, lambda kk: out_draw(kk, uniform)) * out_bound
        c = out_draw(k_c, uniform) * out_bound
    else:
        a = per_row(k_a, m_last, lambda kk: out_draw(kk, rademacher)) / true_last
        c = jnp.zeros((k,))
    idx = jnp.arange(m_last)
    if output == "frozen_half":
        if n_classes == 2:
            a = jnp.where(idx < true_last // 2, 1.0, -1.0)[:, None] / true_last
        else:  # unit i feeds class floor(i K / m): K blocks, weight 1/m
            own = (idx * n_classes) // jnp.maximum(true_last, 1).astype(jnp.int32)
            a = (own[:, None] == jnp.arange(n_classes)[None, :]).astype(float_dtype()) / true_last
    elif output == "frozen_random":
        a = per_row(k_a, m_last, lambda kk: out_draw(kk, rademacher)) / true_last
    a = a * last[:, None]
    c = c if bias else jnp.zeros((k,))
    return (a[:, 0], c[0]) if n_classes == 2 else (a, c)


def trainable_mask(width: int, true_width: jax.Array, *, output: str, bias: bool, deep: Deep = Deep(),
                   n_classes: int = 2) -> Params:
    """1 where a parameter trains, 0 where it is padding, frozen, or switched off."""
    mask = first(width, true_width)
    train_out = output == "train"
    last = mask if deep.last is None else deep.last
    return Params(
        w=jnp.broadcast_to(mask[:, None], (width, 1)),
        b=mask * float(bias),
        a=(last if n_classes == 2 else last[:, None]) * float(train_out),
        c=jnp.asarray(float(bias and train_out)),
        deep=tuple((m[:, None], m * float(bias)) for m in deep.masks),
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


def representations(params: Params, x: jax.Array, activation: str, slope: jax.Array, mask: jax.Array,
                    xT: jax.Array | None = None, deep: Deep = Deep()):
    """Every hidden layer's (masked) activations [h_1, ..., h_L] and the first layer's pre-activations.

    A layer the run does not have (`deep.active` False) passes its input through unchanged; in
    a program holding several depths every layer has the same padded width (`spec.padded_widths`).
    """
    h, pre = hidden(params, x, activation, slope, mask, xT)
    return [h] + deeper_layers(params, h, activation, slope, deep), pre


def deeper_layers(params: Params, h: jax.Array, activation: str, slope: jax.Array, deep: Deep) -> list:
    """Layers 2..L from the first layer's activations `h`: [h_2, ..., h_L] (a skipped layer passes
    its input through)."""
    hs = []
    for (w, b), m, active in zip(params.deep, deep.masks, deep.active):
        new = activate(h @ w.T + b, activation, slope) * m
        h = jnp.where(active, new, h) if new.shape == h.shape else new
        hs.append(h)
    return hs


def forward(params: Params, x: jax.Array, activation: str, slope: jax.Array, mask: jax.Array,
            xT: jax.Array | None = None, deep: Deep = Deep()):
    """The outputs ((n,), or (n, K) logits) and the first layer's pre-activations."""
    if not params.deep:
        h, pre = hidden(params, x, activation, slope, mask, xT)
        return h @ params.a + params.c, pre
    hs, pre = representations(params, x, activation, slope, mask, xT, deep)
    return hs[-1] @ params.a + params.c, pre


def margins(f: jax.Array, y: jax.Array) -> jax.Array:
    """y f for two classes; for K > 2, the true logit's lead over the best other one."""
    if f.ndim == 1:
        return y * f
    k = f.shape[-1]
    onehot = jax.nn.one_hot(y.astype(jnp.int32), k)
    true = jnp.sum(f * onehot, axis=-1)
    return true - jnp.max(jnp.where(onehot > 0, -jnp.inf, f), axis=-1)


def loss_values(f: jax.Array, y: jax.Array, loss: str) -> jax.Array:
    """Per-sample loss. Labels +-1 (f of shape (n,)): logistic (stable softplus), hinge, or squared
    error. K classes (f of shape (n, K), y the class): softmax cross-entropy (`logistic`),
    multi-class hinge max(0, 1 - margin) (Crammer-Singer), or squared error to the one-hot target."""
    if f.ndim == 2:
        if loss == "logistic":
            onehot = jax.nn.one_hot(y.astype(jnp.int32), f.shape[-1])
            return jax.nn.logsumexp(f, axis=-1) - jnp.sum(f * onehot, axis=-1)
        if loss == "hinge":
            return jax.nn.relu(1.0 - margins(f, y))
        if loss == "mse":
            return jnp.sum((f - jax.nn.one_hot(y.astype(jnp.int32), f.shape[-1])) ** 2, axis=-1)
        raise ValueError(f"unknown loss {loss!r}")
    if loss == "logistic":
        return jax.nn.softplus(-y * f)
    if loss == "hinge":
        return jax.nn.relu(1.0 - y * f)
    if loss == "mse":
        return (f - y) ** 2
    raise ValueError(f"unknown loss {loss!r}")
