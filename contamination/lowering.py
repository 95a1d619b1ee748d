"""Faster compiles on the CPU: threefry's random bits lowered without rolled loops.

On the CPU backend JAX lowers every threefry hash as a small `while` loop (compact code, but
each one becomes its own loop and fusions in XLA's CPU code generation). A program of this
project draws data, inits and batches through about 17 of them; lowered unrolled (the
lowering JAX uses on every other backend) the same program compiles about 40% faster
(BENCHMARKS.md: 379 fusions and 21 loops become 229 and 3) and computes bit-identical bits
(`tests/test_lowering.py`). It uses JAX internals: where they moved, nothing changes but the
compile time.
"""

from __future__ import annotations


def unroll_threefry_on_cpu() -> bool:
    """Register the unrolled threefry lowering for the CPU platform; False where JAX lacks it."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_lowering_rule, platform="cpu")
        return True
    except (ImportError, AttributeError):
        return False


UNROLLED_THREEFRY = unroll_threefry_on_cpu()
