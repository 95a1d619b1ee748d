"""The JAX training loop against an independent NumPy re-implementation (PyTorch semantics)."""

import numpy as np
import pytest

from contamination.config import static_spec, traced_values
from contamination.simulate import simulate
from conftest import small
from reference_numpy import train


@pytest.mark.parametrize("activation,loss,optimizer,output", [
    ("relu", "logistic", "adamw", "train"),
    ("sigmoid", "mse", "adam", "train"),
    ("relu", "hinge", "sgd", "frozen_half"),
    ("tanh", "logistic", "sgd", "train"),
    ("linear", "hinge", "adamw", "frozen_half"),
])
def test_matches_numpy_reference(activation, loss, optimizer, output):
    from contamination.train import prepare

    steps = 15
    cfg = small("toy", activation=activation, loss=loss, optimizer=optimizer, output=output,
                steps=steps, log_every=1, lr=0.05, weight_decay=0.01)
    setup = prepare(static_spec(cfg), traced_values(cfg))
    params = {k: np.asarray(getattr(setup.params, k)) for k in ("w", "b", "a", "c")}
    trainable = {"w": True, "b": True, "a": output == "train", "c": output == "train"}
    ref = train(params, trainable, setup.data.train.x, setup.data.train.y, activation=activation, loss=loss,
                optimizer=optimizer, lr=0.05, wd=0.01, momentum=cfg.momentum, steps=steps)
    ours = simulate(cfg)["curves"]["train_loss"]
    assert ref[-1] < ref[0]  # it trained
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=1e-6)
