"""Claim 2: a config gives the same metrics in a vmapped batch as alone (also when its width is
padded), in float64 to rtol 1e-9 (conftest.IDENTITY)."""

import numpy as np
import pytest

from contamination.simulate import simulate, simulate_batch
from conftest import IDENTITY, identity, small


def assert_same(a, b, **tol):
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k], dtype=float), np.asarray(b[k], dtype=float),
                                   **(tol or IDENTITY), err_msg=k)


@pytest.mark.parametrize("preset_name,extra", [
    ("toy_theory", {}),
    # (under `make test-all`; by default test_padding.py pads a sigmoid network and online batches)
    pytest.param("toy", {"activation": "sigmoid"}, marks=pytest.mark.slow),
    pytest.param("theory", {"input_dim": 64, "batch_size": 8}, marks=pytest.mark.slow),
    pytest.param("toy", {"optimizer": "adam", "batch_size": 16, "activation": "gelu"},
                 marks=pytest.mark.slow),  # minibatches stay tested by the `theory` case
])
@identity
def test_batch_equals_alone(preset_name, extra):
    cfgs = [
        small(preset_name, **extra, seed=0),
        small(preset_name, **extra, seed=1, lr=0.01),
        small(preset_name, **extra, seed=2, weight_decay=0.1, bg_train=[-0.5, 0.5]),
        small(preset_name, **extra, seed=3, leaky_slope=0.3, init_scale=2.0, bg_ood=[-2.0, 0.0]),
    ]
    batch = simulate_batch(cfgs)
    for i, cfg in enumerate(cfgs):
        alone = simulate(cfg)
        assert_same({k: v[i] for k, v in batch["curves"].items()}, alone["curves"])


# The output mode whose signs depend on the true width (+1/m for its first half), with a
# sigmoid (f(0) != 0: padded neurons must be masked). The other output modes and activations
# are padded on every axis in tests/test_padding.py.
@pytest.mark.slow  # (by default: test_padding.py pads the width of a sigmoid network with the rest)
@pytest.mark.parametrize("activation,output", [("sigmoid", "frozen_half")])
@identity
def test_padded_width_equals_unpadded(activation, output):
    """Padding to a larger width changes nothing: masks, true fan-in and true-m scaling."""
    cfgs = [small("toy", width=w, activation=activation, output=output, seed=w) for w in (6, 11)]
    padded = simulate_batch(cfgs, width=24)
    for i, cfg in enumerate(cfgs):
        alone = simulate(cfg)
        assert_same({k: v[i] for k, v in padded["curves"].items()}, alone["curves"])


def test_divergent_run_is_flagged_and_isolated():
    good = small("toy_theory", seed=5, steps=30)
    bad = small("toy_theory", seed=5, steps=30, lr=1e30, init_scale=1e10)
    batch = simulate_batch([good, bad, good.replace(seed=6)])
    assert bool(batch["final"]["diverged"][1])
    assert not batch["final"]["diverged"][0] and not batch["final"]["diverged"][2]
    assert batch["final"]["diverged_step"][1] >= 0
    # the good runs beside a healthy run in the divergent one's place (the same program): unchanged.
    # float32 (an overflow at 1e30 is what it tests); the batch-equals-alone identity is tested in
    # float64 above, so here the tolerance only has to see that the good runs were left alone
    clean = simulate_batch([good, good.replace(seed=7), good.replace(seed=6)])
    assert not clean["final"]["diverged"].any()
    for i in (0, 2):
        assert_same({k: v[i] for k, v in batch["curves"].items()}, {k: v[i] for k, v in clean["curves"].items()},
                    rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", pytest.param("linear", marks=pytest.mark.slow)])
@identity
def test_relu_and_linear_share_the_leaky_program_exactly(activation):
    """ReLU and linear compile as LeakyReLU with a traced slope of 0 and 1; the results are
    those of the dedicated activation."""
    from contamination.spec import static_spec, traced_values
    from contamination.train import compiled_single_run

    # toy_theory at small()'s sizes: `simulate(cfg)` is the program of the run alone in test_batch_equals_alone
    cfg = small("toy_theory", activation=activation, seed=3)
    spec = static_spec(cfg)
    assert spec.activation == "leaky_relu"
    assert spec == static_spec(cfg.replace(activation="leaky_relu", leaky_slope=0.3))
    shared = simulate(cfg)["curves"]
    dedicated = compiled_single_run(spec._replace(activation=activation))(traced_values(cfg))
    assert_same(shared, {k: np.asarray(v)[:, 0] for k, v in dedicated["curves"].items()})  # one variant
