"""What compiling a grid's set-up as a program of its own would save (a prototype, not the engine's
path): the first-minute style program of GRID's padded spec compiled whole (`one`), or as two
programs, the set-up (`contamination.setup.prepare`: data, init, masks) and the training that takes
its outputs as inputs, compiled one after the other (`seq`) or in two threads (`par`).

    .venv/bin/python benchmarks/setup_split.py GRID one|seq|par

Classifier (MLP) grids only: the training program reads the set-up by replacing
`contamination.classify.prepare` while it is traced. JAX's persistent cache is off. Run each mode
in its own process and alternate them (BENCHMARKS.md, eighth session).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import jax

from contamination import classify, train
from contamination.setup import prepare
from contamination.spec import padded_spec
from sweeps import grid as grid_module, programs
from sweeps.plan import networks_of


def split_programs(spec, abstract):
    """The lowered set-up program and the lowered training program that takes its outputs."""
    setup_fn = jax.jit(jax.vmap(lambda t: prepare(spec, t)))
    run = train.make_run(spec)

    def run_with(t, setup):
        original = classify.prepare
        classify.prepare = lambda s, traced: setup
        try:
            return run(t)
        finally:
            classify.prepare = original

    return setup_fn.lower(abstract), jax.jit(jax.vmap(run_with)).lower(abstract, jax.eval_shape(setup_fn, abstract))


def main() -> None:
    jax.config.update("jax_enable_compilation_cache", False)
    grid, mode = sys.argv[1], sys.argv[2]
    nets = networks_of(grid_module.expand(grid_module.load(grid)))
    spec = padded_spec([n.static for n in nets])
    abstract = programs.abstract_inputs(spec, 14)
    t0 = time.perf_counter()
    if mode == "one":
        lowered = [jax.jit(train.batched(spec)).lower(abstract)]
    else:
        lowered = list(split_programs(spec, abstract))
    t1, c0 = time.perf_counter(), sum(os.times()[:2])
    parts = []
    if mode == "par":
        thread = threading.Thread(target=lowered[0].compile)
        thread.start()
        lowered[1].compile()
        thread.join()
    else:
        for lo in lowered:
            t = time.perf_counter()
            lo.compile()
            parts.append(f"{time.perf_counter() - t:.2f}")
    t2 = time.perf_counter()
    print(f"{mode}: lower {t1 - t0:.2f} s, compile {t2 - t1:.2f} s (CPU {sum(os.times()[:2]) - c0:.2f} s), "
          f"total {t2 - t0:.2f} s" + (f"; each compile {' + '.join(parts)} s" if len(parts) > 1 else ""))


if __name__ == "__main__":
    main()
