import os

# Tests run on the CPU; keep XLA from grabbing every thread of a shared machine.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from contamination.config import preset  # noqa: E402


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
