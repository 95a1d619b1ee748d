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
import os
import pathlib
from platform import machine
import re


# Measured where it helps: jaxlib 0.10. On jaxlib 0.12 the same lowering makes XLA's CPU
# compile pathologically slow (its "very slow compile" alarm; a `prepare` that compiles in 2.7 s
# with JAX's rolled loops had not finished after minutes), so newer jaxlibs keep JAX's lowering.
UNROLLED_BELOW = (0, 11)


def measured_jaxlib(version: str) -> bool:
    """Whether a jaxlib `version` is in the measured range (below UNROLLED_BELOW), where both of this
    module's measures apply."""
    try:
        return tuple(int(p) for p in version.split(".")[:2]) < UNROLLED_BELOW
    except ValueError:
        return False


def unroll_threefry_on_cpu() -> bool:
    """Register the unrolled threefry lowering for the CPU platform; False where it is not applied
    (a jaxlib outside the measured range, or one whose internals moved)."""
    try:  # JAX's internals, imported here: where they moved, the ImportError leaves JAX's lowering
        import jaxlib
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        if not measured_jaxlib(jaxlib.__version__):
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
# last bits of a few metrics, less than another instruction set's. Only where they were measured
# sound (`legacy_emitters_measured`).
LEGACY_EMITTERS = (("xla_cpu_use_fusion_emitters", False),)
LEGACY_EMITTERS_MAX_FLOPS = 5e10
# A compile with the older emitters over one with the default emitters, same program, same
# machine: 0.60-0.64 for quickstart and the first-minute small grid (BENCHMARKS.md, seventh
# session). The device model's prior for a program compiled with them, until it has recorded some.
LEGACY_COMPILE_SHARE = 0.62


def legacy_emitters_measured(jaxlib_version: str, arch: str, xla_flags: str, cpu_flags: str) -> bool:
    """Whether the older emitters were measured sound here: jaxlib 0.10 (the option may leave later
    XLAs), an x86-64 CPU with AVX (`cpu_flags`: /proc/cpuinfo's flags) whose XLA is not held to SSE
    (`--xla_cpu_max_isa`). Under `--xla_cpu_max_isa=SSE4_2` they compute NaN for one float64 metric
    of the CNN (`contamination_ratio`; training identical; AVX, AVX2, AVX-512 and float32 are
    right), and no ARM CPU was measured: there the default emitters stay."""
    isa = re.search(r"--xla_cpu_max_isa=(\S+)", xla_flags)
    if isa and isa.group(1).upper().startswith("SSE"):
        return False
    return measured_jaxlib(jaxlib_version) and arch.lower() in ("x86_64", "amd64") and "avx" in cpu_flags.split()


@functools.lru_cache(maxsize=None)
def _legacy_emitters_known() -> bool:
    import jaxlib

    try:
        cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        flags = next((line.split(":", 1)[1] for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    except OSError:  # not Linux: the CPU's flags are not read, and the default emitters stay
        flags = ""
    return legacy_emitters_measured(jaxlib.__version__, machine(), os.environ.get("XLA_FLAGS", ""), flags)


def emitters(flops: float, platform: str) -> str:
    """"legacy" or "default": the fusion emitters a program of `flops` (its whole call) is compiled
    with on `platform` ("cpu", "gpu", "tpu")."""
    small = platform == "cpu" and flops < LEGACY_EMITTERS_MAX_FLOPS and _legacy_emitters_known()
    return "legacy" if small else "default"


def compiler_options(flops: float, platform: str) -> tuple:
    """The XLA compile options of a program of `flops` on `platform`, as a hashable tuple of pairs
    (`dict(...)` for `jax.jit(compiler_options=...)` and `Lowered.compile`); () for none."""
    return LEGACY_EMITTERS if emitters(flops, platform) == "legacy" else ()


def options_tag(options: tuple) -> str:
    """A short name of compile options (`compiler_options`): "" for none, "older-emitters" for
    LEGACY_EMITTERS, else the options written out."""
    if not options:
        return ""
    return "older-emitters" if tuple(options) == LEGACY_EMITTERS else ",".join(f"{k}={v}" for k, v in options)


def compile_share(options: tuple) -> float:
    """The expected compile time with `options` over one without (LEGACY_COMPILE_SHARE; 1 otherwise)."""
    return LEGACY_COMPILE_SHARE if tuple(options) == LEGACY_EMITTERS else 1.0
