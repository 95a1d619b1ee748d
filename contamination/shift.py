"""How far the background must move before a trained network fails, and whether removing what it
learned along the background mean undoes the failure: measured once, on the final parameters.

- **The shift curve and `critical_shift`.** The test set's background is translated by s, from
  its training range towards the OOD range: U[a + s e, b + s e] for a training range [a, b], with
  e = +1 when the OOD mean lies above the training mean and -1 otherwise (so s = 1 from U[0, 1]
  is the sign flip U[-1, 0]). On a geometric ladder of `SHIFT_POINTS` shifts from `shift_min` to
  `shift_max`, test accuracy and loss are measured (the shift curve); `critical_shift` is the
  smallest s at which accuracy falls below id_acc - critical_level * (id_acc - 1/K): the first
  ladder point below that level, refined by `BISECTIONS` log-space bisections against the point
  before it (a factor-2 ladder ends within 0.3%). A run whose accuracy never falls within the
  ladder is censored: `critical_shift` = `shift_max`, `critical_shift_censored` = 1; one that is
  already below the level at `shift_min` reports `shift_min`.
- **The mean-direction ablation.** Each first-layer neuron's weight loses its component along the
  unit background-mean direction u, and that component's mean contribution on the training data is
  folded into the neuron's bias: W' = W - p u^T, b' = b + p E_train<x, u>, p = W u. Without biases
  (`bias = false`) there is nothing to fold into: W' alone. Then ID and OOD accuracy and loss and
  the critical shift of the ablated network, and `failure_explained`, the share of the OOD
  accuracy loss the ablation recovers: (ood_acc_ablated - ood_acc) / (id_acc - ood_acc), NaN
  where the network loses less than two test samples' worth OOD.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .data import Data, Sizes, ood_split
from .metrics import masked_mean, output_metrics, range_mean
from .model import Deep, Params, forward

SHIFT_POINTS = 10  # the ladder: geometric from shift_min to shift_max (factor 2 at the defaults)
BISECTIONS = 8

SHIFT_METRICS = ("critical_shift", "critical_shift_censored", "id_acc_ablated", "id_loss_ablated",
                 "ood_acc_ablated", "ood_loss_ablated", "critical_shift_ablated", "failure_explained")
# The shift curve (one value per ladder point): the `shifts` table's columns
SHIFT_CURVES = ("shift", "ood_acc", "ood_loss", "ood_acc_ablated", "ood_loss_ablated")


class Net(NamedTuple):
    """What the shift measurements need to evaluate a network: `forward`'s static arguments."""

    activation: str
    slope: jax.Array
    mask: jax.Array
    deep: Deep
    loss: str


def ladder(shift_range: jax.Array) -> jax.Array:
    """SHIFT_POINTS shifts, geometric from shift_range[0] to shift_range[1]."""
    lo, hi = shift_range[0], shift_range[1]
    return lo * (hi / lo) ** (jnp.arange(SHIFT_POINTS) / (SHIFT_POINTS - 1))


def direction(bg_train: jax.Array, bg_ood: jax.Array) -> jax.Array:
    """+1 where the OOD background mean lies above the training mean, else -1."""
    return jnp.where(range_mean(bg_ood) > range_mean(bg_train), 1.0, -1.0)


def ablate(params: Params, u: jax.Array, train_mean_u: jax.Array, bias: bool) -> Params:
    """The network without its first layer's component along `u` (mean contribution folded into b)."""
    p = params.w @ u
    b = params.b + p * train_mean_u if bias else params.b
    return params._replace(w=params.w - p[:, None] * u[None, :], b=b)


def sweep(evaluate, test, shifted, ood, shifts: jax.Array, level_of):
    """Every evaluation the shift measurements make of one network, in one loop with one call of
    `evaluate(split) -> (loss, acc)` (a single traced copy of the network: compiling it once, not
    once per use, is most of what these measurements cost): the ID test set, the OOD set `ood`,
    the ladder `shifts` (`shifted(s)`: the test set moved by s), then `BISECTIONS` log-space
    bisections of the first ladder interval whose upper end falls below `level_of(id_acc)`.

    Returns (id_loss, id_acc, ood_loss, ood_acc, curve_loss, curve_acc, critical, censored)."""
    n = 2 + SHIFT_POINTS
    zero = jnp.zeros((), shifts.dtype)

    def body(i, carry):
        losses, accs, lo, hi, found = carry
        ladder_i = shifts[jnp.clip(i - 2, 0, SHIFT_POINTS - 1)]
        s = jnp.where(i < n, ladder_i, jnp.sqrt(lo * hi))
        split = jax.tree_util.tree_map(lambda a, b, c: jnp.where(i == 0, a, jnp.where(i == 1, b, c)),
                                       test, ood, shifted(s))
        loss, acc = evaluate(split)
        losses, accs = losses.at[i].set(loss), accs.at[i].set(acc)  # the bisections' too: not returned
        fails = acc < level_of(accs[0])
        # the ladder: the first point below the level brackets the crossing with the point before it
        first = (i >= 2) & (i < n) & fails & ~found
        lo = jnp.where(first, shifts[jnp.clip(i - 3, 0, SHIFT_POINTS - 1)], lo)
        hi = jnp.where(first, s, hi)
        # a bisection: keep the half whose upper end fails
        bisecting = i >= n
        lo, hi = jnp.where(bisecting & ~fails, s, lo), jnp.where(bisecting & fails, s, hi)
        return losses, accs, lo, hi, found | first

    init = (jnp.zeros(n + BISECTIONS, shifts.dtype), jnp.zeros(n + BISECTIONS, shifts.dtype), zero + shifts[-1],
            zero + shifts[-1], jnp.bool_(False))
    losses, accs, _, hi, found = jax.lax.fori_loop(0, n + BISECTIONS, body, init)
    return (losses[0], accs[0], losses[1], accs[1], losses[2:n], accs[2:n], jnp.where(found, hi, shifts[-1]), ~found)


def shift_metrics(params, ablated, evaluate, data: Data, *, core_dim: int, sizes: Sizes, bg_train: jax.Array,
                  bg_ood: jax.Array, critical_level: jax.Array, shift_range: jax.Array,
                  n_classes: int, per_variant: jax.Array | None = None,
                  orth: jax.Array | None = None) -> tuple[dict, dict]:
    """SHIFT_METRICS, each (n_evals,), and SHIFT_CURVES, each (n_evals, SHIFT_POINTS), for one
    network `params` and its ablation `ablated` (None: not defined for this model, NaN), per
    evaluation variant (its OOD range, level and ladder). `evaluate(params, split, extra) -> (loss,
    acc)`, with `extra` the variant's entry of `per_variant` (e.g. a probe's ridge), or None."""
    extras = jnp.zeros(bg_ood.shape[0]) if per_variant is None else per_variant
    orths = jnp.zeros(bg_ood.shape[0]) if orth is None else orth

    def variant(rng, level, shift_range, extra, o):
        e, shifts = direction(bg_train, rng), ladder(shift_range)
        extra = None if per_variant is None else extra
        o = None if orth is None else o  # the ladder and the OOD set move orthogonally to the mean

        def measure(p):  # one network: traced once, vmapped over the network and its ablation
            id_loss, id_acc, ood_loss, ood_acc, curve_loss, curve_acc, crit, censored = sweep(
                lambda split: evaluate(p, split, extra), data.test,
                lambda s: ood_split(data, core_dim, sizes, bg_train + s * e, o),
                ood_split(data, core_dim, sizes, rng, o), shifts,
                lambda id_acc: id_acc - level * (id_acc - 1.0 / n_classes))
            return {"critical_shift": crit, "critical_shift_censored": censored.astype(id_acc.dtype),
                    "id_acc": id_acc, "id_loss": id_loss, "ood_acc": ood_acc, "ood_loss": ood_loss,
                    "curve_acc": curve_acc, "curve_loss": curve_loss}

        if ablated is None:
            one = measure(params)
            both = jax.tree_util.tree_map(lambda v: jnp.stack([v, jnp.full_like(v, jnp.nan)]), one)
        else:
            both = jax.vmap(measure)(jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, ablated))
        out = {"critical_shift": both["critical_shift"][0], "critical_shift_censored": both["critical_shift_censored"][0]}
        for k in ("id_acc", "id_loss", "ood_acc", "ood_loss", "critical_shift"):
            out[f"{k}_ablated"] = both[k][1]
        out.update(id_acc=both["id_acc"][0], ood_acc=both["ood_acc"][0])
        curves = {"shift": shifts, "ood_acc": both["curve_acc"][0], "ood_loss": both["curve_loss"][0],
                  "ood_acc_ablated": both["curve_acc"][1], "ood_loss_ablated": both["curve_loss"][1]}
        lost = out["id_acc"] - out["ood_acc"]
        enough = lost >= 2.0 / sizes.n_test
        out["failure_explained"] = jnp.where(enough, (out["ood_acc_ablated"] - out["ood_acc"]) /
                                             jnp.where(enough, lost, 1.0), jnp.nan)
        return {k: out[k] for k in SHIFT_METRICS}, curves

    return jax.vmap(variant)(bg_ood, critical_level, shift_range, extras, orths)


def mlp_shift_metrics(params: Params, data: Data, *, u: jax.Array, net: Net, bias: bool, **kw) -> tuple[dict, dict]:
    """`shift_metrics` of an MLP, with its mean-direction ablation (module docstring)."""
    ablated = ablate(params, u, masked_mean(data.train.x @ u, data.train.mask), bias)

    def evaluate(p, split, _):
        f, _ = forward(p, split.x, net.activation, net.slope, net.mask, deep=net.deep)
        loss, acc, _ = output_metrics(f, split, net.loss)
        return loss, acc

    return shift_metrics(params, ablated, evaluate, data, **kw)
