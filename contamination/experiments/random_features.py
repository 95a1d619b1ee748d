"""The `random_features` experiment: the classifier with its first layer frozen at its
initialisation, only the read-out trained: the lazy (kernel) control. Its first-layer weights
cannot drift, so the background projections (`bg_mean_proj`, `contaminated_frac`) stay at their
step-0 values, while its ID accuracy is whatever random features of the input give
(docs/experiments.md#random_features).

A one-hidden-layer network trained on the labels exactly as `classify`'s (the same data, init,
optimizer, loss and metrics; `contamination/classify.py`), whose first-layer weights (and, unless
`rf_train_bias`, biases) are put back to their initial values after every optimizer step. The step
still computes their gradient, so a run costs what the classifier's costs.
"""

from __future__ import annotations

from ..fields import ConfigError, Field
from .classify import EXPERIMENT as CLASSIFY

FIELDS = (
    Field("rf_train_bias", "bool", False, "random_features: train the first layer's biases with the read-out "
          "(each unit's threshold moves, never its direction); false: only the read-out trains"),
)


def validate(cfg) -> None:
    if cfg.depth != 1 or cfg.output != "train":
        raise ConfigError("experiment: random_features trains the read-out of one frozen hidden layer; depth must "
                          f"be 1 and output \"train\", got depth {cfg.depth} and output {cfg.output!r}")


def describe(s) -> str:
    return "first layer frozen " + ("(biases trained) " if s.rf_train_bias else "")


def training(static, traced):
    """The classifier's run (`classify.mlp_training`) with its first layer held at its init."""
    # Imported here: this declaration is read while `Config` is built, before these modules can be.
    from ..classify import mlp_training

    run = mlp_training(static, traced)
    start = run.carry.params

    def step(carry, x):
        new, out = run.step(carry, x)
        p = new.params._replace(w=start.w, b=new.params.b if static.rf_train_bias else start.b)
        return new._replace(params=p), out

    return run._replace(step=step)


# The classifier's declaration (its metrics, cost, fit and compared columns) with the frozen layer.
EXPERIMENT = CLASSIFY._replace(
    name="random_features",
    fields=FIELDS,
    validate=validate,
    training="contamination.experiments.random_features:training",
    describe=describe,
)
