"""One whole run as one pure function: data, init, a `lax.scan` over steps, metrics.

`make_run(static)` returns `run(traced) -> {"curves": {metric: (n_logs, n_evals)}, "final": {...}}`
where `traced` is `config.traced_values(runs)` (arrays): one trained network, measured once per
evaluation variant. `jax.jit(jax.vmap(run))` trains a batch of networks that share `static`
(their sizes padded to its sizes) in one compiled program.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .config import Static, log_steps
from .data import Data, Sizes, Split, first, make_data, minibatch, online_batch
from .metrics import METRICS, bg_direction, evaluate, init_spread, masked_mean
from .model import Params, forward, init_params, loss_values, to_dm, trainable_mask


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


def make_optimizer(name: str, lr, weight_decay, momentum) -> optax.GradientTransformation:
    """The optimizer with its numbers as traced hyperparameters (one compile for all values)."""
    return optax.inject_hyperparams(OPTIMIZERS[name])(
        learning_rate=lr, weight_decay=weight_decay, momentum=momentum)


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(x)) for x in leaves])


class Setup(NamedTuple):
    data: Data
    params: Params
    trainable: Params
    mask: jax.Array  # the true neurons
    batch_key: jax.Array
    sizes: Sizes  # the run's true sizes


def sizes_of(traced: dict) -> Sizes:
    return Sizes(traced["true_core"], traced["true_bg"], traced["true_d"], traced["true_n_train"],
                 traced["true_n_test"])


def prepare(s: Static, traced: dict) -> Setup:
    """Data, initial parameters and masks of one run, from its traced values."""
    data_key = jax.random.wrap_key_data(traced["data_key"], impl="threefry2x32")
    init_key = jax.random.wrap_key_data(traced["init_key"], impl="threefry2x32")
    k_data, k_batch = jax.random.split(data_key)
    true_width, sizes = traced["true_width"], sizes_of(traced)
    data = make_data(k_data, s.core_dim, s.bg_dim, s.input_dim, s.core, s.n_train, s.n_test, sizes,
                     traced["bg_train"])
    params = init_params(init_key, s.width, s.input_dim, true_width, sizes.d, init=s.init, output=s.output,
                         bias=s.bias, init_scale=traced["init_scale"])
    trainable = trainable_mask(s.width, true_width, output=s.output, bias=s.bias)
    return Setup(data, params, trainable, first(s.width, true_width), k_batch, sizes)


def make_get_batch(s: Static, setup: Setup, bg_train: jax.Array) -> Callable[[jax.Array], Split]:
    """The training batch of step `t`: a fresh online batch, a minibatch, or the full training set."""
    data, k_batch = setup.data, setup.batch_key

    def get_batch(t):
        if s.online:
            return online_batch(k_batch, t, data.M, s.batch_size, s.core_dim, s.core, setup.sizes, bg_train)
        if s.batch_size:
            return minibatch(k_batch, t, data.train, s.batch_size)
        return data.train

    return get_batch


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

    Returns the run's output: {"curves": {metric: (n_logs, ...)}, "final": {metric, "diverged", "diverged_step"}}.
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
    return {"curves": curves, "final": final}


def make_training(s: Static, traced: dict):
    """The pieces of one classifier run: its step function, initial carry and metrics.

    `make_run` scans them; the benchmarks call the same step from a Python loop. The carry
    holds the parameters in the training layout (`model.to_dm`: first layer stored (d, m));
    `measure` takes them in that layout.
    """
    setup = prepare(s, traced)
    data, params, trainable, mask = setup.data, setup.params, setup.trainable, setup.mask
    slope = traced["leaky_slope"]
    tx = make_optimizer(s.optimizer, traced["lr"], traced["weight_decay"], traced["momentum"])
    u = bg_direction(data.M, s.core_dim, setup.sizes.bg, traced["bg_train"])
    evaluate_md = functools.partial(evaluate, data=data, core_dim=s.core_dim, sizes=setup.sizes,
                                    bg_train=traced["bg_train"], bg_ood=traced["bg_ood"], u=u,
                                    spread0=init_spread(params.w, u, mask), activation=s.activation, loss=s.loss,
                                    slope=slope, mask=mask)

    def measure(p_dm):
        return evaluate_md(to_dm(p_dm))

    get_batch = make_get_batch(s, setup, traced["bg_train"])
    full_batch = not s.online and not s.batch_size
    # The full training set is the batch of every step: transpose it once, outside the loop.
    train_xT = data.train.x.T if full_batch else None

    def objective(p, batch):
        xT = train_xT if full_batch else batch.x.T
        f, _ = forward(p, batch.x, s.activation, slope, mask, xT)
        return masked_mean(loss_values(f, batch.y, s.loss), batch.mask)

    step = make_step(objective, tx, to_dm(trainable), get_batch)
    return step, init_carry(to_dm(params), tx), measure


def make_run(static: Static) -> Callable[[dict], dict]:
    s = static
    if s.experiment == "distill":
        from .distill import make_distill_run
        return make_distill_run(s)

    def run(traced: dict) -> dict:
        step, carry, measure = make_training(s, traced)
        return train_and_log(step, carry, measure, s.steps, s.log_every, s.log_schedule)

    return run


def metric_names(static: Static) -> tuple[str, ...]:
    """The metric names a run of this static spec logs (its curves' and final keys, in order)."""
    if static.experiment == "distill":
        from .distill import DISTILL_METRICS
        return DISTILL_METRICS
    return METRICS


@functools.lru_cache(maxsize=None)
def compiled_batch_run(static: Static):
    """`jit(vmap(run))` for one static spec, cached so each spec compiles once per process."""
    return jax.jit(jax.vmap(make_run(static)))


@functools.lru_cache(maxsize=None)
def compiled_single_run(static: Static):
    return jax.jit(make_run(static))
