"""Trace, lower and compile time of a grid's padded program, with and without each experiment's
final measurements (the critical shift, its curve, the ablation and any refit: `Training.final`),
and of its set-up alone (`setup`: the data, the dictionary and the init that the program computes
before its first step, `contamination.setup.prepare`).

    .venv/bin/python benchmarks/compile_cost.py GRID [with|without|setup] [--networks N]

Compiles `jit(batched(spec))` for the grid's networks padded into one program (as the engine's
one-bucket plan would), with JAX's persistent cache off, and prints lower and compile seconds.
Run each arm in its own process (a process compiles a spec once); alternate them and take the least.
"""

from __future__ import annotations

import argparse
import time

import jax

from contamination import loop, train
from contamination.spec import padded_spec, stack_traced
from sweeps import grid as grid_module
from sweeps.plan import networks_of


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("grid")
    ap.add_argument("arm", nargs="?", default="with", choices=("with", "without", "setup"))
    ap.add_argument("--networks", type=int, default=None)
    args = ap.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    nets = networks_of(grid_module.expand(grid_module.load(args.grid)))[:args.networks]
    spec = padded_spec([n.static for n in nets])
    if args.arm == "without":
        run_training = loop.run_training
        train.run_training = lambda s, training, *rule: run_training(s, training._replace(final=None), *rule)
    traced = stack_traced([[r.config for r in n.runs] for n in nets], n_evals=spec.n_evals, depth=spec.depth)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), traced)
    if args.arm == "setup":
        from contamination.setup import prepare

        fn = jax.jit(jax.vmap(lambda t: prepare(spec, t)))
    else:
        fn = jax.jit(train.batched(spec))
    t0 = time.perf_counter()
    lowered = fn.lower(abstract)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    print(f"{args.grid} {args.arm}: lower {t1 - t0:.2f} s, compile {t2 - t1:.2f} s ({len(nets)} networks)")


if __name__ == "__main__":
    main()
