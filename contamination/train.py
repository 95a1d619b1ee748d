"""One whole run as one pure function: data, init, a `lax.scan` over steps, metrics.

`make_run(static)` returns `run(traced) -> {"curves": {metric: (n_logs, n_evals)}, "final": {...}}`
where `traced` is `spec.traced_values(runs)` (arrays): one trained network, measured once per
evaluation variant. `jax.jit(jax.vmap(run))` trains a batch of networks that share `static`
(their sizes padded to its sizes) in one compiled program. What a run trains and measures is
its experiment's (`experiments.py`: `classify.py`, `distill.py`); the loop is `loop.py`.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

from . import experiments
from .loop import run_training
from .spec import Static


def make_run(static: Static) -> Callable[[dict], dict]:
    training = experiments.get(static.experiment).training

    def run(traced: dict) -> dict:
        return run_training(static, training(static, traced))

    return run


def metric_names(static: Static) -> tuple[str, ...]:
    """The metric names a run of this static spec logs (its curves' and final keys, in order)."""
    return experiments.get(static.experiment).metric_names(static)


@functools.lru_cache(maxsize=None)
def compiled_batch_run(static: Static):
    """`jit(vmap(run))` for one static spec, cached so each spec compiles once per process."""
    return jax.jit(jax.vmap(make_run(static)))


@functools.lru_cache(maxsize=None)
def compiled_single_run(static: Static):
    return jax.jit(make_run(static))
