"""Trace, lower and compile time of a grid's padded program, with and without each experiment's
final measurements (the critical shift, its curve, the ablation and any refit: `Training.final`),
and of its set-up alone (`setup`: the data, the dictionary and the init that the program computes
before its first step, `contamination.setup.prepare`).

    .venv/bin/python benchmarks/compile_cost.py GRID [with|without|setup] [--networks N]
        [--emitters engine|default|legacy] [--run]

Compiles `jit(batched(spec))` for the grid's networks padded into one program (as the engine's
one-bucket plan would), with JAX's persistent cache off, and prints lower and compile seconds
(and the compile's CPU seconds, both cores). `--emitters`: XLA's CPU emitters the program is
compiled with, as the engine chooses for a program of its FLOPs (`engine`, the default) or forced
(`contamination/lowering.py`); `--run`: also the best of three calls of the compiled program.
Run each arm in its own process (a process compiles a spec once); alternate them and take the least.
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from contamination import loop, lowering, train
from contamination.spec import padded_spec, stack_traced
from sweeps import grid as grid_module
from sweeps.plan import networks_of


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("grid")
    ap.add_argument("arm", nargs="?", default="with", choices=("with", "without", "setup"))
    ap.add_argument("--networks", type=int, default=None)
    ap.add_argument("--emitters", choices=("engine", "default", "legacy"), default="engine")
    ap.add_argument("--run", action="store_true")
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
    if args.emitters == "engine":
        options = train.program_options(spec, len(nets))
    else:
        options = lowering.LEGACY_EMITTERS if args.emitters == "legacy" else ()
    t0 = time.perf_counter()
    lowered = fn.lower(abstract)
    t1, c1 = time.perf_counter(), sum(os.times()[:2])
    compiled = lowered.compile(dict(options) or None)
    t2, c2 = time.perf_counter(), sum(os.times()[:2])
    run = ""
    if args.run and args.arm != "setup":
        jax.block_until_ready(compiled(traced))
        best = float("inf")
        for _ in range(3):
            t3 = time.perf_counter()
            jax.block_until_ready(compiled(traced))
            best = min(best, time.perf_counter() - t3)
        run = f", run {best:.2f} s"
    print(f"{args.grid} {args.arm}: lower {t1 - t0:.2f} s, compile {t2 - t1:.2f} s (CPU {c2 - c1:.2f} s), "
          f"emitters {'legacy' if options else 'default'}{run} ({len(nets)} networks)")


if __name__ == "__main__":
    main()
