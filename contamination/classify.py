"""The `classify` experiment: the two-layer network trained on the labels (docs/simulator.md, "The model"),
measured by `metrics.evaluate` at every logged step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .loop import Training, init_carry, make_optimizer, make_step
from .metrics import METRICS, evaluate, layer_metrics, masked_mean, reference
from .model import forward, loss_values, to_dm
from .setup import make_get_batch, prepare, run_key
from .retrain import RETRAIN_METRICS, RETRAIN_STREAM, retrain_metrics
from .shift import SHIFT_METRICS, Net, mlp_shift_metrics
from .spec import Static, Traced


def make_training(s: Static, traced: Traced):
    if s.model == "cnn":
        from .cnn import cnn_training

        return cnn_training(s, traced)
    return mlp_training(s, traced)


def mlp_training(s: Static, traced: Traced):
    """One classifier run as a `Training`: its step function, initial carry and metrics.

    `loop.run_training` scans them; the benchmarks call the same step from a Python loop. The carry
    holds the parameters in the training layout (`model.to_dm`: first layer stored (d, m));
    `measure` takes them in that layout.
    """
    setup = prepare(s, traced)
    data, params, trainable, mask = setup.data, setup.params, setup.trainable, setup.mask
    slope = traced.leaky_slope
    tx = make_optimizer(s.optimizer, traced.lr, traced.weight_decay, traced.momentum,
                        traced.warmup_steps)
    ref = reference(params.w, data.M, s.core_dim, setup.sizes, traced.bg_train, mask, data.train,
                    n_classes=s.n_classes, core=s.core, dataset=s.dataset, deep_w0=tuple(w for w, _ in params.deep))
    u = ref.u
    synthetic = s.dataset == "synthetic"
    orth = traced.bg_ood_orth if synthetic else None  # the orthogonal OOD shift (synthetic only)
    evaluate_md = functools.partial(evaluate, data=data, core_dim=s.core_dim, sizes=setup.sizes,
                                    bg_train=traced.bg_train, bg_ood=traced.bg_ood, ref=ref,
                                    activation=s.activation, loss=s.loss,
                                    slope=slope, mask=mask, deep=setup.deep, n_classes=s.n_classes,
                                    input_grad=s.dataset != "synthetic", orth=orth)

    def measure(p_dm):
        return evaluate_md(to_dm(p_dm))

    def final(p_dm):
        p = to_dm(p_dm)
        once, curves = mlp_shift_metrics(p, data, u=u, net=Net(s.activation, slope, mask, setup.deep, s.loss),
                                         bias=s.bias, core_dim=s.core_dim, sizes=setup.sizes,
                                         bg_train=traced.bg_train, bg_ood=traced.bg_ood,
                                         critical_level=traced.critical_level, shift_range=traced.shift_range,
                                         n_classes=s.n_classes, orth=orth)
        if synthetic and s.retrain_output != "none":
            data_key = run_key(traced.data_key)
            once.update(retrain_metrics(
                p, data, key=jax.random.fold_in(data_key, RETRAIN_STREAM), activation=s.activation, slope=slope,
                mask=mask, deep=setup.deep, core_dim=s.core_dim, core=s.core, sizes=setup.sizes,
                bg_train=traced.bg_train, bg_ood=traced.bg_ood, orth=orth, share=traced.retrain_ood_share,
                ridge=traced.probe_ridge, n_classes=s.n_classes))
        elif synthetic:  # no refit compiled: the columns exist, NaN (as retrain_metrics gives at "none")
            nan = jnp.full(traced.bg_ood.shape[:1], jnp.nan, dtype=once["critical_shift"].dtype)
            once.update({k: nan for k in RETRAIN_METRICS})
        return once, curves

    get_batch = make_get_batch(s, setup, traced.bg_train)
    full_batch = s.full_batch
    # The full training set is the batch of every step: transpose it once, outside the loop.
    train_xT = data.train.x.T if full_batch else None

    def objective(p, batch):
        xT = train_xT if full_batch else batch.x.T
        f, _ = forward(p, batch.x, s.activation, slope, mask, xT, setup.deep)
        return masked_mean(loss_values(f, batch.y, s.loss), batch.mask)

    step = make_step(objective, tx, to_dm(trainable), get_batch)
    return Training(step, init_carry(to_dm(params), tx), measure, final=final)


def spec_metrics(s: Static) -> tuple[str, ...]:
    if s.model == "cnn":
        return SHIFT_METRICS
    return layer_metrics(s) + SHIFT_METRICS + (RETRAIN_METRICS if s.dataset == "synthetic" else ())


def metrics_of(s: Static) -> tuple[str, ...]:
    if s.model == "cnn":
        from .cnn import CNN_METRICS

        return CNN_METRICS
    return METRICS

