"""The generic training loop every experiment shares: the optimizer, one guarded step, and the
scan over steps that measures at the logged steps.

An experiment (`experiments.py`) builds a `Training` for one run: its step, initial carry and
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

from .config import log_steps
from .spec import Static


class Training(NamedTuple):
    """One run of an experiment, ready to train: `step` for `lax.scan`, its initial `carry`
    (`init_carry`), `measure(params) -> {metric: (n_evals,)}`, `void`: a flag that voids the
    run (marked diverged at step 0; e.g. a distillation teacher that diverged), and `final`:
    measurements of the trained network only, `final(params) -> ({metric: (n_evals,)},
    {curve: (n_evals, points)})` (the critical shift and its curve, `shift.py`), or None."""

    step: Callable
    carry: Any
    measure: Callable
    void: Any = False
    final: Callable | None = None


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


def make_step(objective: Callable, tx: optax.GradientTransformation, trainable, get_batch: Callable):
    """One optimizer step for `lax.scan`, over any parameter pytree.

    The carry is `init_carry(params, tx)`: (params, optimizer state, step, diverged, diverged step).
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
        return (p, opt_state, t + 1, keep, div_step), None

    return step


def init_carry(params, tx: optax.GradientTransformation):
    return (params, tx.init(params), jnp.int32(0), jnp.bool_(False), jnp.int32(-1))


def train_for(step: Callable, carry, n: int):
    """`n` steps of `step` (static `n`; zero steps leave the carry as it is)."""
    return carry if n == 0 else jax.lax.scan(step, carry, None, length=n)[0]


def train_and_log(step: Callable, carry, measure: Callable, steps: int, log_every: int,
                  schedule: str = "linear") -> dict:
    """Train `steps` steps, measuring at the steps of `config.log_steps` (step 0 first, the last step last).

    Returns the run's output: {"curves": {metric: (n_logs, ...)}, "final": {metric, "diverged", "diverged_step"},
    "params": the final parameters}.
    """
    first = measure(carry[0])
    if schedule == "geometric":
        # Blocks of unequal (static) lengths: one scan over them, each a loop of its length.
        lengths = jnp.asarray(np.diff(log_steps(steps, log_every, schedule)), dtype=jnp.int32)

        def uneven_block(carry, n):
            carry = jax.lax.fori_loop(0, n, lambda _, c: step(c, None)[0], carry)
            return carry, measure(carry[0])

        carry, logged = jax.lax.scan(uneven_block, carry, lengths)
        curves = {k: jnp.concatenate([first[k][None], logged[k]]) for k in first}
    else:
        def block(carry, _):
            carry = train_for(step, carry, log_every)
            return carry, measure(carry[0])

        n_blocks, rest = divmod(steps, log_every)
        carry, logged = jax.lax.scan(block, carry, None, length=n_blocks)
        curves = {k: jnp.concatenate([first[k][None], logged[k]]) for k in first}
        if rest:
            carry = train_for(step, carry, rest)
            last = measure(carry[0])
            curves = {k: jnp.concatenate([curves[k], last[k][None]]) for k in curves}
    final = {k: v[-1] for k, v in curves.items()}
    final["diverged"] = carry[3]
    final["diverged_step"] = carry[4]
    return {"curves": curves, "final": final, "params": carry[0]}


def run_training(s: Static, training: Training) -> dict:
    """Train and log one run at `s`'s steps and schedule; a voided run is flagged at step 0."""
    out = train_and_log(training.step, training.carry, training.measure, s.steps, s.log_every, s.log_schedule)
    params = out.pop("params")
    if training.final is not None:
        once, out["shifts"] = training.final(params)
        out["final"].update(once)
    if training.void is not False:
        final = out["final"]
        final["diverged_step"] = jnp.where(training.void, 0, final["diverged_step"])
        final["diverged"] = final["diverged"] | training.void
    return out
