"""Where one bucket program's compile time goes: trace+lower and XLA compile of the whole run
and of its pieces (data and init alone; with one measurement), one process, no JAX cache.

    python benchmarks/compile_time.py [--rolled-threefry]

`--rolled-threefry` undoes contamination/lowering.py (JAX's own CPU lowering, threefry as
rolled loops) to compare. The program is width_vs_dim's (64 x 8+8 in 64, n = 256, 2000 steps),
8 runs vmapped, one device.
"""

from __future__ import annotations

import argparse
import sys
import time



def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rolled-threefry", action="store_true")
    args = ap.parse_args()
    import jax

    import contamination  # noqa: F401  (registers the unrolled lowering)
    if args.rolled_threefry:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf
        mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_cpu_lowering_rule, platform="cpu")
    from contamination.presets import preset
    from contamination.spec import stack_traced, static_spec
    from contamination.classify import make_training
    from contamination.setup import prepare
    from contamination.train import make_run

    cfg = preset("toy", n_train=256, n_test=256, lr=0.003, steps=2000, log_every=100, width=64, core_dim=8,
                 bg_dim=8, input_dim=64)
    s, traced = static_spec(cfg), stack_traced([cfg.replace(seed=i) for i in range(8)])

    def measured(tr):
        step, carry, measure = make_training(s, tr)[:3]
        return measure(carry.params)

    for name, fn in (("data and init (prepare)", lambda tr: prepare(s, tr)), ("prepare + one measurement", measured),
                     ("whole run", make_run(s))):
        t0 = time.perf_counter()
        lowered = jax.jit(jax.vmap(fn)).lower(traced)
        t1 = time.perf_counter()
        text = lowered.compile().as_text()
        t2 = time.perf_counter()
        print(f"{name:28}: trace+lower {t1 - t0:5.2f} s, XLA compile {t2 - t1:5.2f} s, "
              f"while loops {text.count(' while(')}, fusions {text.count('fusion(')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
