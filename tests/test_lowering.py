"""The unrolled CPU lowering of threefry (contamination/lowering.py) computes the same bits."""

import json
import subprocess
import sys

import jax
import numpy as np

from contamination import lowering


def test_unrolled_threefry_gives_jax_s_own_bits():
    code = ("import json, jax; k = jax.random.key(7); "
            "print(json.dumps([jax.random.bits(jax.random.fold_in(k, 3), (257,)).tolist(), "
            "jax.random.uniform(k, (5, 3)).tolist()]))")
    plain = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      env={"JAX_PLATFORMS": "cpu", "PATH": ""}).stdout)
    k = jax.random.key(7)
    bits = jax.jit(lambda k: jax.random.bits(jax.random.fold_in(k, 3), (257,)))(k)
    np.testing.assert_array_equal(np.asarray(bits), np.asarray(plain[0], dtype=np.uint32))
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda k: jax.random.uniform(k, (5, 3)))(k)),
                                  np.asarray(plain[1], dtype=np.float32))


def test_unrolled_lowering_is_in_effect_where_applied():
    import jaxlib

    applied = tuple(int(p) for p in jaxlib.__version__.split(".")[:2]) < lowering.UNROLLED_BELOW
    assert lowering.UNROLLED_THREEFRY == applied
    hlo = jax.jit(lambda k: jax.random.uniform(k, (4,))).lower(jax.random.key(0)).as_text()
    assert ("stablehlo.while" in hlo) != applied
