"""Faster compiles on the CPU: threefry's random bits lowered without rolled loops, and small
programs compiled with XLA's older fusion emitters (`compiler_options`, at the end).

On the CPU backend JAX lowers every threefry hash as a small `while` loop (compact code, but
each one becomes its own loop and fusions in XLA's CPU code generation). A program of this
project draws data, inits and batches through about 17 of them; lowered unrolled (the
lowering JAX uses on every other backend) the same program compiles about 40% faster
(BENCHMARKS.md: 379 fusions and 21 loops become 229 and 3) and computes bit-identical bits
(`tests/test_lowering.py`). It uses JAX internals, and is applied on jaxlib 0.10 only (below):
elsewhere nothing changes but the compile time.
"""

from __future__ import annotations

import functools


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


# XLA's CPU backend emits its fused kernels with its MLIR fusion emitters (the default) or with its
# older elemental emitters (`xla_cpu_use_fusion_emitters = false`). Measured on jaxlib 0.10, 2-core
# AMD EPYC (BENCHMARKS.md, `benchmarks/compile_cost.py --emitters`): the older emitters compile this
# project's programs 37-42% faster (quickstart 3.2 -> 2.0 s) and run them 8-17% slower (2-3 ms
# per GFLOP here). A program whose call does fewer FLOPs than LEGACY_EMITTERS_MAX_FLOPS (at most
# about 0.15 s slower a call here, for a second or more of compile saved) is compiled with them:
# tests, quick looks, short sweeps. Its float32 results differ from the default emitters' in the
# last bits of a few metrics, less than another instruction set's.
LEGACY_EMITTERS = (("xla_cpu_use_fusion_emitters", False),)
LEGACY_EMITTERS_MAX_FLOPS = 5e10


@functools.lru_cache(maxsize=None)
def _legacy_emitters_known() -> bool:
    """Whether this jaxlib is in the measured range (the option may leave later XLAs)."""
    import jaxlib

    try:
        return tuple(int(p) for p in jaxlib.__version__.split(".")[:2]) < UNROLLED_BELOW
    except ValueError:
        return False


def emitters(flops: float, platform: str) -> str:
    """"legacy" or "default": the fusion emitters a program of `flops` (its whole call) is compiled
    with on `platform` ("cpu", "gpu", "tpu")."""
    small = platform == "cpu" and flops < LEGACY_EMITTERS_MAX_FLOPS and _legacy_emitters_known()
    return "legacy" if small else "default"


def compiler_options(flops: float, platform: str) -> tuple:
    """The XLA compile options of a program of `flops` on `platform`, as a hashable tuple of pairs
    (`dict(...)` for `jax.jit(compiler_options=...)` and `Lowered.compile`); () for none."""
    return LEGACY_EMITTERS if emitters(flops, platform) == "legacy" else ()
