"""Faster compiles on the CPU: threefry's random bits lowered without rolled loops.

On the CPU backend JAX lowers every threefry hash as a small `while` loop (compact code, but
each one becomes its own loop and fusions in XLA's CPU code generation). A program of this
project draws data, inits and batches through about 17 of them; lowered unrolled (the
lowering JAX uses on every other backend) the same program compiles about 40% faster
(BENCHMARKS.md: 379 fusions and 21 loops become 229 and 3) and computes bit-identical bits
(`tests/test_lowering.py`). It uses JAX internals, and is applied on jaxlib 0.10 only (below):
elsewhere nothing changes but the compile time.
"""

from __future__ import annotations


# Measured where it helps: jaxlib 0.10. On jaxlib 0.12 the same lowering makes XLA's CPU
# compile pathologically slow (its "very slow compile" alarm; a `prepare` that compiles in 2.7 s
# with JAX's rolled loops had not finished after minutes), so newer jaxlibs keep JAX's lowering.
UNROLLED_BELOW = (0, 11)


def unroll_threefry_on_cpu() -> bool:
    """Register the unrolled threefry lowering for the CPU platform; False where it is not applied
    (a jaxlib outside the measured range, or one whose internals moved)."""
    try:  # JAX's internals, imported here: where they moved, the ImportError leaves JAX's lowering
        import jaxlib
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        if tuple(int(p) for p in jaxlib.__version__.split(".")[:2]) >= UNROLLED_BELOW:
            return False
        mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_lowering_rule, platform="cpu")
        return True
    except (ImportError, AttributeError, ValueError):
        return False


UNROLLED_THREEFRY = unroll_threefry_on_cpu()
