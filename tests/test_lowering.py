"""The unrolled CPU lowering of threefry (contamination/lowering.py) computes the same bits; small
CPU programs are compiled with XLA's older emitters, and nothing else is."""

import json
import math
import subprocess
import sys

import jax
import numpy as np

from contamination import cost, lowering
from contamination.spec import static_spec
from contamination.train import program_options


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


def test_the_older_emitters_only_where_measured_sound():
    measured = lowering.legacy_emitters_measured
    avx = "fpu sse4_2 avx avx2"
    assert measured("0.10.2", "x86_64", "", avx) and measured("0.10.2", "AMD64", "--xla_cpu_max_isa=AVX2", avx)
    assert not measured("0.11.0", "x86_64", "", avx)  # a jaxlib not measured
    assert not measured("0.10.2", "aarch64", "", "fp asimd")  # an ARM CPU
    assert not measured("0.10.2", "x86_64", "", "fpu sse4_2")  # no AVX
    assert not measured("0.10.2", "x86_64", "--xla_cpu_max_isa=SSE4_2", avx)  # held to SSE: NaN in one metric


def test_small_cpu_programs_take_the_older_emitters_and_large_or_accelerator_ones_do_not(small_config):
    known = lowering._legacy_emitters_known()
    cut = lowering.LEGACY_EMITTERS_MAX_FLOPS
    assert lowering.emitters(cut / 2, "cpu") == ("legacy" if known else "default")
    assert lowering.emitters(cut, "cpu") == "default"
    assert lowering.emitters(cut / 2, "gpu") == lowering.emitters(cut / 2, "tpu") == "default"
    # a program's FLOPs are its whole call's: the networks of a chunk together
    s = static_spec(small_config("toy"))
    assert program_options(s, 3, "cpu") == (lowering.LEGACY_EMITTERS if known else ())
    assert program_options(s, math.ceil(cut / cost.flops(s)), "cpu") == ()
    assert program_options(s, 3, "gpu") == ()
    # the option is one this XLA takes: a compile with it runs
    if known:
        f = jax.jit(lambda x: np.float32(2) * jax.numpy.tanh(x), compiler_options=dict(lowering.LEGACY_EMITTERS))
        np.testing.assert_allclose(np.asarray(f(np.ones(3, np.float32))), 2 * np.tanh(1.0), rtol=1e-6)
