import os
import shutil
import tempfile

# Tests run on the CPU; keep XLA from grabbing every thread of a shared machine.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One JAX compilation cache and one device model for the whole session, shared with the
# subprocesses the tests start: a program compiled by one test is a cache hit for the next
# (tests that exercise the caches give their own directories), and the device model is measured
# once (tests/test_planner.py measures its own). Fresh per session, so timings do not depend on
# what an earlier session left behind.
_SESSION = tempfile.mkdtemp(prefix="contamination-tests-")
os.environ.setdefault("CONTAMINATION_JAX_CACHE", os.path.join(_SESSION, "jax"))
os.environ.setdefault("CONTAMINATION_DEVICE_MODELS", os.path.join(_SESSION, "device-models"))
# One CPU device for the test processes and the sweeps they start: a sweep's programs are keyed by
# its devices, so a subprocess that split the CPU into one device per core (the CLI's default)
# compiled again every program the test had compiled in-process (one device). The tests of that
# default, and of several devices, ask for their device counts explicitly.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")

from contamination.cache import setup_jax  # noqa: E402

setup_jax()


def pytest_sessionfinish(session, exitstatus):
    # xdist's workers share the controller's directories: the controller removes them, last
    if "PYTEST_XDIST_WORKER" not in os.environ:
        shutil.rmtree(os.environ["CONTAMINATION_JAX_CACHE"].rsplit(os.sep, 1)[0], ignore_errors=True)
        shutil.rmtree(_SESSION, ignore_errors=True)

import pytest  # noqa: E402

from contamination.presets import preset  # noqa: E402


# The [fixed] lines of the tiny grids the engine and analysis tests run.
TINY_FIXED = """core_dim = 4
bg_dim = 4
input_dim = 32
n_train = 64
n_test = 64
steps = 40
log_every = 10
"""


def small(name: str = "toy_theory", **kw):
    """A reduced config for fast tests."""
    base = dict(width=16, core_dim=4, bg_dim=4, input_dim=32, n_train=64, n_test=64, steps=40, log_every=10)
    base.update(kw)
    return preset(name, **base)


@pytest.fixture
def small_config():
    return small


# Identities (padding, chunking, bucketing, devices, train once and evaluate many) hold in real
# arithmetic, so they are tested in float64 at rtol 1e-9: there rounding (1e-16, amplified by a
# few hundred optimizer steps) stays far below the tolerance on every instruction set, while a
# leak (a padded row in a mean, a padded neuron revived) moves numbers by 1e-3 or more. In
# float32 the same two programs differ by the order of their reductions, 1e-3 after 300 AdamW
# steps on one CPU and not on another (docs/simulator.md#numerics).
IDENTITY = dict(rtol=1e-9, atol=1e-12)


@pytest.fixture
def x64():
    """Run the test in float64 (JAX's `jax_enable_x64`), restoring the previous width after it."""
    from contamination.numerics import float64

    with float64():
        yield


def identity(test):
    """Mark an identity test: run in float64 (`x64`), and selected by `make test-portable`."""
    return pytest.mark.identity(pytest.mark.usefixtures("x64")(test))
