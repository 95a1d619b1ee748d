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

from . import experiments
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


@functools.lru_cache(maxsize=None)
def compiled_batch_run(static: Static):
    """`jit(batched(static))` for one static spec, cached so each spec compiles once per process."""
    return jax.jit(batched(static))


@functools.lru_cache(maxsize=None)
def compiled_single_run(static: Static):
    return jax.jit(make_run(static))
