"""The `random_features` experiment (contamination/experiments/random_features.py): the read-out
trained on a frozen random first layer, whose background projections therefore stay at init while
a trained ReLU network's drift along the background mean."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from contamination import ConfigError
from contamination.cost import flops, step_flops
from contamination.experiments import get
from contamination.presets import preset
from contamination.simulate import simulate_batch
from contamination.spec import static_spec, traced_values

from conftest import IDENTITY

SEEDS = (0, 1, 2)
# quickstart's ReLU network with a mean-0.5 background (docs/experiments.md#random_features)
SMALL = dict(width=64, core_dim=8, bg_dim=8, input_dim=64, n_train=256, n_test=256, lr=0.01, steps=400,
             log_every=100, bg_train=[0.0, 1.0], bg_ood=[-3.0, -2.0])
FIRST_LAYER = ("bg_mean_proj", "contaminated_frac", "core_norm", "bg_norm", "bg_signed", "bg_shift_rms")


def runs(experiment: str, **kw):
    return simulate_batch([preset("toy_theory", experiment=experiment, seed=s, **SMALL, **kw) for s in SEEDS])


def test_the_first_layer_stays_at_init_while_a_trained_relu_networks_drifts(x64):
    """Float64, three seeds. Random features: every first-layer metric keeps its step-0 value at
    every logged step (an identity), while the read-out learns (its ID loss falls, its ID accuracy
    is well above chance). The quickstart classifier (first layer trained, read-out frozen): measured
    here, `bg_mean_proj` rose by 0.185-0.201 and `contaminated_frac` went from 0 to 0.56-0.67 (0.1
    and 0.3 asserted), while random features' ID loss fell to 0.7-1.1% of its step-0 value."""
    rf = runs("random_features", output="train")
    for m in FIRST_LAYER:
        c = rf["curves"][m]
        np.testing.assert_allclose(c, np.repeat(c[:, :1], c.shape[1], axis=1), **IDENTITY, err_msg=m)
    assert (rf["curves"]["id_loss"][:, -1] < 0.5 * rf["curves"]["id_loss"][:, 0]).all()
    assert (rf["final"]["id_acc"] > 0.75).all()
    trained = runs("classify")
    drift = trained["final"]["bg_mean_proj"] - trained["curves"]["bg_mean_proj"][:, 0]
    assert (drift > 0.1).all(), drift
    assert (trained["final"]["contaminated_frac"] > 0.3).all()
    assert (np.abs(rf["final"]["bg_mean_proj"]) < 0.05).all()  # a mean of 64 random projections


def test_its_cost_is_the_classifiers_and_xla_agrees():
    """The frozen layer's gradient is still computed (then discarded): XLA counts the classifier's
    step, and the run's FLOPs are the classifier's."""
    cfg = preset("toy_theory", experiment="random_features", output="train", steps=1, log_every=1, width=64,
                 input_dim=64, core_dim=8, bg_dim=8, n_train=256)
    s = static_spec(cfg)
    step, carry = get("random_features").fn("training")(s, traced_values(cfg))[:2]
    analysis = jax.jit(step).lower(carry, None).compile().cost_analysis()
    xla = float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])
    assert xla == pytest.approx(step_flops(s), rel=0.05)
    assert flops(s) == flops(static_spec(cfg.replace(experiment="classify")))
    assert "first layer frozen" in get("random_features").describe(s)


@pytest.mark.parametrize("kw", [dict(depth=2), dict(output="frozen_half")])
def test_it_refuses_what_it_cannot_freeze(kw):
    with pytest.raises(ConfigError, match="random_features"):
        preset("toy", experiment="random_features", **kw)


@pytest.mark.slow
def test_trained_biases_move_the_thresholds_not_the_directions(x64):
    """`rf_train_bias`: the biases train with the read-out, so the fit differs from the frozen
    layer's, while every weight direction (every first-layer metric) keeps its step-0 value."""
    with_bias = runs("random_features", output="train", rf_train_bias=True)
    without = runs("random_features", output="train")
    for m in FIRST_LAYER:
        np.testing.assert_allclose(with_bias["curves"][m], without["curves"][m], **IDENTITY, err_msg=m)
    assert not np.allclose(with_bias["curves"]["train_loss"][:, -1], without["curves"]["train_loss"][:, -1])
