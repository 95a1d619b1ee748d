"""The JAX training loop against an independent NumPy re-implementation (PyTorch semantics).

Both compute in float64 (the JAX side under `jax_enable_x64`), so they agree to rounding on any
CPU: rtol 1e-8 (the two sum in different orders, and 15 optimizer steps amplify that little)."""

import numpy as np
import pytest

from contamination.spec import static_spec, traced_values
from contamination.simulate import simulate
from conftest import identity, small
from reference_numpy import train

TOL = dict(rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("activation,loss,optimizer,output,warmup", [
    ("relu", "logistic", "adamw", "train", 0),
    ("sigmoid", "mse", "adam", "train", 0),
    ("relu", "hinge", "sgd", "frozen_half", 0),
    ("tanh", "logistic", "sgd", "train", 0),
    ("linear", "hinge", "adamw", "frozen_half", 0),
    ("relu", "logistic", "adamw", "train", 6),  # a learning-rate warm-up over 6 of the 15 steps
    ("tanh", "hinge", "sgd", "train", 15),
])
@identity
def test_matches_numpy_reference(activation, loss, optimizer, output, warmup):
    from contamination.setup import prepare

    steps = 15
    cfg = small("toy", activation=activation, loss=loss, optimizer=optimizer, output=output,
                steps=steps, log_every=1, lr=0.05, weight_decay=0.01, warmup_steps=warmup)
    setup = prepare(static_spec(cfg), traced_values(cfg))
    params = {k: np.asarray(getattr(setup.params, k)) for k in ("w", "b", "a", "c")}
    trainable = {"w": True, "b": True, "a": output == "train", "c": output == "train"}
    ref = train(params, trainable, setup.data.train.x, setup.data.train.y, activation=activation, loss=loss,
                optimizer=optimizer, lr=0.05, wd=0.01, momentum=cfg.momentum, steps=steps,
                warmup=warmup)
    ours = simulate(cfg)["curves"]["train_loss"]
    assert ref[-1] < ref[0]  # it trained
    np.testing.assert_allclose(ours, ref, **TOL)


@pytest.mark.parametrize("activation,slope,loss,bg_train", [
    ("leaky_relu", 0.0, "hinge", (0.0, 1.0)),  # ReLU as the engine compiles it
    ("leaky_relu", 1.0, "logistic", (0.0, 1.0)),  # the linear network
    ("leaky_relu", 0.1, "mse", (-0.5, 0.5)),  # zero-mean background
    ("gelu", 0.0, "logistic", (-1.0, 0.0)),  # negative mean
    ("sigmoid", 0.0, "hinge", (0.25, 1.25)),
    ("tanh", 0.0, "mse", (0.0, 1.0)),
])
@identity
def test_mechanism_metrics_match_numpy_reference(activation, slope, loss, bg_train):
    """act_asym, bg_mean_proj, bg_shift_rms, bg_norm, contaminated_frac, contamination_sign,
    contamination_ratio and bg_grad_balance against a float64 NumPy computation from their
    definitions (docs/simulator.md, Metrics), on weights moved along the background mean for some
    neurons, in both directions, and along the core for all (so that every metric is away from its
    init value)."""
    import jax.numpy as jnp

    from contamination.metrics import evaluate, reference
    from contamination.setup import prepare
    from reference_numpy import mechanism_metrics

    cfg = small("toy", core="linear", loss=loss, bg_train=list(bg_train), bg_ood=[-1.5, -0.5])
    setup = prepare(static_spec(cfg), traced_values(cfg))
    data, p0 = setup.data, setup.params
    u_bg = np.asarray(data.M[cfg.core_dim:]).sum(0) / np.sqrt(cfg.bg_dim)
    u_core = np.asarray(data.M[:cfg.core_dim]).sum(0) / np.sqrt(cfg.core_dim)
    k = np.arange(cfg.width)
    bump = np.select([k % 3 == 0, k % 3 == 1], [0.3, -0.25], 0.0)[:, None] * u_bg[None, :] + 0.2 * u_core[None, :]
    params = p0._replace(w=p0.w + jnp.asarray(bump))
    ref = reference(p0.w, data.M, cfg.core_dim, setup.sizes, jnp.asarray(bg_train), setup.mask, data.train)
    ours = evaluate(params, data, core_dim=cfg.core_dim, sizes=setup.sizes, bg_train=jnp.asarray(bg_train),
                    bg_ood=jnp.asarray([cfg.bg_ood]), ref=ref, activation=activation,
                    loss=loss, slope=jnp.asarray(slope), mask=setup.mask)
    expected = mechanism_metrics(params.w, params.b, params.a, params.c, p0.w, data.M, cfg.core_dim, bg_train, cfg.bg_ood,
                            data.train.x, data.train.y, data.test.x, data.test.y, activation=activation, loss=loss,
                            slope=slope)
    for name, v in expected.items():
        np.testing.assert_allclose(float(ours[name][0]), v, **TOL, err_msg=name)
    if slope == 1.0:
        assert float(ours["act_asym"][0]) == 0.0  # nothing is gated
    assert 0 < expected["contaminated_frac"] < 1 and abs(expected["contamination_sign"]) < 1  # both signs count
