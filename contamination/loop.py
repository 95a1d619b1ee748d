"""The generic training loop every experiment shares: the optimizer, one guarded step, and the
loop over steps that measures at the logged steps and stops a run by its rule (`StopRule`).

An experiment (`experiments/`) builds a `Training` for one run: its step, initial carry and
measure; `run_training` trains and logs it. The carry is `init_carry(params, tx)`: (params,
optimizer state, step, diverged, diverged step); a step that makes the loss or parameters
non-finite freezes the run and flags it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import experiments
from .config import log_steps
from .spec import Static, Traced


class Training(NamedTuple):
    """One run of an experiment, ready to train: `step` for `lax.scan`, its initial `carry`
    (`init_carry`), `measure(params) -> {metric: (n_evals,)}`, `void`: a flag that voids the
    run (marked diverged at step 0; e.g. a distillation teacher that diverged), and `final`:
    measurements of the trained network only, `final(params) -> ({metric: (n_evals,)},
    {curve: (n_evals, points)})` (the critical shift and its curve, `shift.py`), or None; `tracked`:
    the metrics `stop = "converged"` reads (`StopRule`; the fit metric of `stop = "id_loss"` is the
    experiment's declared `fit_metric`)."""

    step: Callable
    carry: Any
    measure: Callable
    void: Any = False
    final: Callable | None = None
    # the metrics whose relative change `stop = "converged"` tracks (those `measure` returns)
    tracked: tuple[str, ...] = ("train_loss", "bg_mean_proj")


def _sgd(learning_rate, weight_decay, momentum):
    # PyTorch SGD: weight decay coupled into the gradient, then heavy-ball momentum.
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum=momentum))


def _adam(learning_rate, weight_decay, momentum):
    # PyTorch Adam(weight_decay=...): L2 added to the gradient before the moments.
    del momentum
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8))


def _adamw(learning_rate, weight_decay, momentum):
    # PyTorch AdamW: decoupled decay, p -= lr * (adam_update + wd * p).
    del momentum
    return optax.adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def warmed_up(lr, warmup_steps):
    """The learning rate of step t (the optimizer's count, from 0): lr * min(1, (t + 1) / warmup_steps),
    exactly lr from the first step when warmup_steps is 0 (`Config.warmup_steps`)."""
    return lambda count: lr * jnp.minimum(1.0, (count + 1) / jnp.maximum(warmup_steps, 1.0))


def make_optimizer(name: str, lr, weight_decay, momentum, warmup_steps=None) -> optax.GradientTransformation:
    """The optimizer with its numbers as traced hyperparameters (one compile for all values);
    with `warmup_steps` (traced), the learning rate warms up linearly over them (`warmed_up`)."""
    learning_rate = lr if warmup_steps is None else warmed_up(lr, warmup_steps)
    return optax.inject_hyperparams(OPTIMIZERS[name])(
        learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum)


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(x)) for x in leaves])


class Carry(NamedTuple):
    """The training loop's state for one run (a pytree: it scans, vmaps and selects as a tuple)."""

    params: Any
    opt_state: Any
    step: jax.Array  # steps taken
    diverged: jax.Array  # the loss or parameters went non-finite: frozen since
    diverged_step: jax.Array  # the step at which it diverged (-1: never)


def make_step(objective: Callable, tx: optax.GradientTransformation, trainable, get_batch: Callable):
    """One optimizer step for `lax.scan`, over any parameter pytree.

    The carry is a `Carry` (`init_carry(params, tx)`).
    `trainable` is a pytree of 0/1 masks broadcastable to the parameters.
    """

    def step(carry, _):
        p, opt_state, t, diverged, div_step = carry
        loss, grads = jax.value_and_grad(objective)(p, get_batch(t))
        grads = jax.tree_util.tree_map(jnp.multiply, grads, trainable)
        updates, new_state = tx.update(grads, opt_state, p)
        # Masking the update too keeps frozen and padded parameters exactly fixed
        # (decoupled weight decay would otherwise shrink them).
        new_p = jax.tree_util.tree_map(lambda x, u, m: x + u * m, p, updates, trainable)
        # A run whose loss or parameters go non-finite stops updating and is flagged;
        # runs are independent under vmap, so it cannot affect the others.
        bad = jnp.logical_not(jnp.isfinite(loss) & _all_finite(new_p))
        newly = bad & ~diverged
        keep = diverged | bad
        p = jax.tree_util.tree_map(lambda old, new: jnp.where(keep, old, new), p, new_p)
        opt_state = jax.tree_util.tree_map(lambda old, new: jnp.where(keep, old, new), opt_state, new_state)
        div_step = jnp.where(newly, t, div_step)
        return Carry(p, opt_state, t + 1, keep, div_step), None

    return step


def init_carry(params, tx: optax.GradientTransformation) -> Carry:
    return Carry(params, tx.init(params), jnp.int32(0), jnp.bool_(False), jnp.int32(-1))


def train_for(step: Callable, carry, n):
    """`n` steps of `step`: a scan of static length (zero steps leave the carry as it is) or, for a
    traced `n`, a loop of its length."""
    if isinstance(n, (int, np.integer)):
        return carry if n == 0 else jax.lax.scan(step, carry, None, length=n)[0]
    return jax.lax.fori_loop(0, n, lambda _, c: step(c, None)[0], carry)


class StopRule(NamedTuple):
    """When a run stops (`Config.stop`). `mode` is static: `steps` (a fixed-length scan) or `rule`
    (a loop that ends when the run meets its rule); the rest is traced (one compile for all):
    `kind` 0 for `id_loss`, 1 for `converged` (`spec.STOP_KINDS`), and the rules' numbers."""

    mode: str = "steps"
    kind: Any = -1
    target: Any = None  # id_loss: the fit metric's level
    tol: Any = None  # converged: the largest relative change over the window
    window: Any = 5  # logged points back (converged; and `drift_trend`'s window in every mode)


def stop_rule(s: Static, traced: Traced) -> StopRule:
    return StopRule(s.stop, traced.stop_kind, traced.target_id_loss, traced.stop_tol, traced.stop_window)


# Final values the loop adds to every run's (one per evaluation variant, like the metrics):
# `drift_trend` is a metric column, `stopped_step` an integer column beside `diverged_step`.
LOOP_METRICS = ("drift_trend",)


def met(rule: StopRule, curves: dict, i, fit: str, tracked: tuple[str, ...]) -> jax.Array:
    """Whether a run meets `rule` at its logged point `i` (curves filled up to it): `id_loss`, the
    fit metric at or below the target; `converged`, every tracked metric m with |m_i - m_(i-w)|
    <= tol max(|m_i|, |m_(i-w)|) for the window w (never before w points are logged)."""
    fitted = jnp.all(curves[fit][i] <= rule.target)
    back = i - rule.window
    steady = back >= 0
    for name in (t for t in tracked if t in curves):
        now, then = curves[name][i], curves[name][jnp.maximum(back, 0)]
        steady &= jnp.all(jnp.abs(now - then) <= rule.tol * jnp.maximum(jnp.abs(now), jnp.abs(then)))
    return jnp.where(rule.kind == 0, fitted, steady)


def train_and_log(step: Callable, carry, measure: Callable, steps: int, log_every: int,
                  schedule: str = "linear", rule: StopRule = StopRule(), fit: str = "id_loss",
                  tracked: tuple[str, ...] = ("train_loss", "bg_mean_proj")) -> dict:
    """Train `steps` steps, measuring at the steps of `config.log_steps` (step 0 first, the last step
    last), or until the run meets `rule` at a logged step (`until_stopped`).

    Returns the run's output: {"curves": {metric: (n_logs, ...)}, "final": {metric, "diverged",
    "diverged_step", "stopped_step", "drift_trend"}, "params": the final parameters}.
    """
    points = log_steps(steps, log_every, schedule)
    if rule.mode == "steps":
        carry, curves = fixed_steps(step, carry, measure, steps, log_every, schedule)
        stop_index, stopped_step = len(points) - 1, jnp.int32(steps)
    else:
        carry, curves, stop_index, stopped = until_stopped(step, carry, measure, points,
                                                           lambda c, i: met(rule, c, i, fit, tracked))
        stopped_step = jnp.where(stopped, jnp.asarray(points, jnp.int32)[stop_index], steps)
    final = {k: v[-1] for k, v in curves.items()}
    shape = final[next(iter(final))].shape  # (n_evals,): one value per evaluation variant
    if "bg_mean_proj" in curves:
        final["drift_trend"] = drift_trend(curves["bg_mean_proj"], points, stop_index, rule.window)
    final["stopped_step"] = jnp.broadcast_to(stopped_step, shape)
    final["diverged"] = carry.diverged
    final["diverged_step"] = carry.diverged_step
    return {"curves": curves, "final": final, "params": carry.params}


def block_lengths(points: list[int]) -> jax.Array:
    """The steps trained before each logged point: 0 before step 0, then the gaps between points."""
    return jnp.asarray(np.diff(points, prepend=0), dtype=jnp.int32)


def fixed_steps(step: Callable, carry, measure: Callable, steps: int, log_every: int, schedule: str):
    """All `steps` steps, measured at the logged steps: (final carry, curves {metric: (n_logs, ...)}).

    One scan over the logged points, each a loop of the steps since the point before (none before
    step 0), so the program holds one copy of `measure` and of `step`: every copy is compiled
    again (a measurement of step 0 before the loop and a short last block after it added 10-20% to
    the compile; BENCHMARKS.md).
    """
    def block(carry, n):
        carry = train_for(step, carry, n)
        return carry, measure(carry.params)

    return jax.lax.scan(block, carry, block_lengths(log_steps(steps, log_every, schedule)))


def until_stopped(step: Callable, carry, measure: Callable, points: list[int], meets: Callable):
    """Train block by block between the logged `points` until the run `meets(curves, i)` at its
    logged point i, or diverges, or reaches the last step: (carry, curves, i, met).

    A `lax.while_loop` over the logged points (the first trains no step), its curves preallocated
    and written at each point: one copy of `measure` and of `step`, as `fixed_steps`. Under `vmap`
    its predicate is per run: a run that has stopped keeps its carry while the others train, and
    the loop ends when every run has stopped. The curves past a run's stop repeat its values at
    the stop.
    """
    n_logs, lengths = len(points), block_lengths(points)
    shapes = jax.eval_shape(measure, carry.params)
    curves = {k: jnp.zeros((n_logs, *v.shape), v.dtype) for k, v in shapes.items()}

    def body(state):
        carry, curves, i, _ = state
        carry = train_for(step, carry, lengths[i])
        logged = measure(carry.params)
        curves = {k: curves[k].at[i].set(logged[k]) for k in curves}
        return carry, curves, i + 1, meets(curves, i) | carry.diverged

    state = (carry, curves, jnp.int32(0), jnp.bool_(False))
    carry, curves, n, _ = jax.lax.while_loop(lambda st: (st[2] < n_logs) & ~st[3], body, state)
    i = n - 1  # the last logged point
    index = jnp.arange(n_logs)
    curves = {k: jnp.where((index <= i).reshape(-1, *(1,) * (v.ndim - 1)), v, v[i]) for k, v in curves.items()}
    return carry, curves, i, meets(curves, i)


def drift_trend(values: jax.Array, points: list[int], stop_index, window) -> jax.Array:
    """The least-squares slope of `values` (n_logs, ...) against the step, per 1000 steps, over the
    logged points stop_index - window .. stop_index (NaN with one point)."""
    index = jnp.arange(len(points))
    w = ((index <= stop_index) & (index >= stop_index - window)).astype(values.dtype)
    w = w.reshape(-1, *(1,) * (values.ndim - 1))
    x = (jnp.asarray(points, values.dtype) / 1000.0).reshape(w.shape)
    n = jnp.sum(w, axis=0)
    dx = x - jnp.sum(w * x, axis=0) / n
    dy = values - jnp.sum(w * values, axis=0) / n
    den = jnp.sum(w * dx ** 2, axis=0)
    return jnp.where(den > 0, jnp.sum(w * dx * dy, axis=0) / jnp.where(den > 0, den, 1.0), jnp.nan)


def run_training(s: Static, training: Training, rule: StopRule = StopRule()) -> dict:
    """Train and log one run at `s`'s steps and schedule, stopping by `rule` (`stop_rule`); a
    voided run is flagged at step 0."""
    out = train_and_log(training.step, training.carry, training.measure, s.steps, s.log_every, s.log_schedule,
                        rule, experiments.get(s.experiment).fit_metric, training.tracked)
    params = out.pop("params")
    if training.final is not None:
        once, out["shifts"] = training.final(params)
        out["final"].update(once)
    if training.void is not False:
        final = out["final"]
        final["diverged_step"] = jnp.where(training.void, 0, final["diverged_step"])
        final["diverged"] = final["diverged"] | training.void
    return out
