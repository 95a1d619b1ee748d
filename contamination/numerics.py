"""How a run computes: the float width (float32, or float64 under `jax_enable_x64`) and the
precision of its float32 matrix products (`Config.precision`).

float64 is a process-wide JAX setting (`JAX_ENABLE_X64=1`, or `--x64` on the command lines):
every array the simulator makes follows it, so the same code runs in either width. Identities
(padding, chunking, devices, train-once) are tested in float64, where rounding cannot hide a
leak (docs/simulator.md#numerics).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

# `Config.precision` -> JAX's name for the precision of float32 matmuls and convolutions.
# `highest` computes what a CPU computes (full float32); `tf32` is JAX's default on NVIDIA GPUs
# from Ampere on (10-bit mantissa inputs); `bf16` rounds the inputs to bfloat16 (8 bits).
# On a CPU all three compute full float32. In float64 they do not apply.
PRECISIONS = {"highest": "highest", "tf32": "tensorfloat32", "bf16": "bfloat16"}


def x64() -> bool:
    """Whether this process computes in float64."""
    return bool(jax.config.jax_enable_x64)


def float_dtype():
    """The simulator's float dtype: float64 under `jax_enable_x64`, else float32."""
    return jnp.float64 if x64() else jnp.float32


def np_float():
    """`float_dtype` as a NumPy scalar type (for traced inputs built on the host)."""
    return np.float64 if x64() else np.float32


def float_name() -> str:
    """'float64' or 'float32': what the tables and the manifest record."""
    return "float64" if x64() else "float32"


def enable_x64() -> None:
    """Compute in float64 from now on (before any program is traced)."""
    jax.config.update("jax_enable_x64", True)


def matmul_precision(precision: str):
    """A context under which traced matmuls take `precision` (a `Config.precision` value)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    return jax.default_matmul_precision(PRECISIONS[precision])


@contextlib.contextmanager
def float64():
    """Compute in float64 inside the block, then restore the previous setting (for tests)."""
    before = x64()
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)
