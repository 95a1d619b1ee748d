"""One whole run as one pure function: data, init, a `lax.scan` over steps, metrics.

`make_run(static)` returns `run(traced) -> {"curves": {metric: (n_logs, n_evals)}, "final": {...}}`
where `traced` is `spec.traced_values(runs)` (arrays): one trained network, measured once per
evaluation variant. `jax.jit(jax.vmap(run))` trains a batch of networks that share `static`
(their sizes padded to its sizes) in one compiled program. What a run trains and measures is
its experiment's (`experiments/`: e.g. `classify.py`, `distill.py`); the loop is `loop.py`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

from . import cost, experiments
from .lowering import compiler_options
from .loop import LOOP_METRICS, run_training, stop_rule
from .numerics import matmul_precision
from .spec import Static, Traced


def make_run(static: Static) -> Callable[[dict], dict]:
    training = experiments.get(static.experiment).fn("training")

    def run(traced: Traced) -> dict:
        with matmul_precision(static.precision):
            return run_training(static, training(static, traced), stop_rule(static, traced))

    return run


def sequential(static: Static) -> bool:
    """Whether a program runs its networks one after another (`lax.map`) rather than vmapped: the
    CNN on a CPU, where `benchmarks/cnn_batching.py` measured `lax.map` 1.25x (8 runs) to 2.8x
    (32 runs) faster than `vmap` (BENCHMARKS.md). Everything else, and the CNN elsewhere, is vmapped."""
    return static.model == "cnn" and jax.default_backend() == "cpu"


def batched(static: Static) -> Callable[[dict], dict]:
    """The run of every network of a stacked batch: `vmap(run)`, or `lax.map(run)` (`sequential`)."""
    run = make_run(static)
    if sequential(static):
        return lambda traced: jax.lax.map(run, traced)
    return jax.vmap(run)


def metric_names(static: Static) -> tuple[str, ...]:
    """The metric names a run of this static spec logs (its curves' and final keys, in order)."""
    return experiments.get(static.experiment).metric_names(static) + LOOP_METRICS


def program_options(static: Static, n_networks: int, platform: str | None = None) -> tuple:
    """The compile options of a program of `n_networks` runs of `static` (`lowering.compiler_options`:
    XLA's older emitters for a small program on the CPU), on `platform` (default: JAX's backend)."""
    return compiler_options(cost.flops(static) * n_networks, platform or jax.default_backend())


@functools.lru_cache(maxsize=None)
def _jit(static: Static, options: tuple, batch: bool):
    return jax.jit(batched(static) if batch else make_run(static), compiler_options=dict(options) or None)


def compiled_batch_run(static: Static) -> Callable:
    """`jit(batched(static))` for one static spec and batch size, cached so each compiles once per
    process, with its compile options (`program_options`)."""

    def call(traced: Traced):
        n = jax.tree_util.tree_leaves(traced)[0].shape[0]
        return _jit(static, program_options(static, n), True)(traced)

    return call


def compiled_single_run(static: Static):
    return _jit(static, program_options(static, 1), False)
