"""Last-layer retraining (docs/interventions.md; Kirichenko et al.'s deep feature reweighting, in closed form):
after training, the last hidden layer is frozen and the output layer refitted on OOD data, to ask
how much of the OOD failure a new read-out of the same features recovers.

- **The refit set.** `n_train` fresh points of the training distribution (their own key, drawn
  like the training set: same sizes, labels and core), each also with its background redrawn from
  the run's OOD range (as the OOD test set is drawn from the ID test set: `data.ood_inputs`, with
  the variant's shift direction and a spurious coefficient flipped). `retrain_output = "ood"`
  refits on the OOD versions of all of them; `"mix"` on the OOD versions of the even rows and the
  ID versions of the odd rows (half of each class, labels come in blocks). None of them is a test
  point.
- **The fit.** Ridge least squares of the targets (two classes: y = +-1; K classes: one-hot) on
  the last hidden layer's activations, with an unpenalised intercept, and a relative ridge
  `probe_ridge * trace(C) / p` (C the feature covariance on the refit set, p the live units, those
  with any non-zero activation there), so it does not depend on the representation's scale or on
  padding. The refitted read-out replaces the trained output layer (a frozen output included).
- **Columns** (`RETRAIN_METRICS`, one per evaluation variant, NaN with `retrain_output = "none"`):
  `id_acc_retrained` and `ood_acc_retrained`, the refitted network's accuracy on the ID test set and
  on the run's OOD test set, and `retrain_recovered` = (ood_acc_retrained - ood_acc) / (id_acc -
  ood_acc), the share of the OOD accuracy loss the refit recovers (NaN where the network loses
  fewer than two test samples OOD), to read beside the ablation's `failure_explained`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .data import Data, Sizes, ood_inputs, ood_split, sample
from .metrics import class_onehot, masked_mean
from .model import Deep, Params, forward, margins, representations
from .numerics import float_dtype

RETRAIN_METRICS = ("id_acc_retrained", "ood_acc_retrained", "retrain_recovered")
RETRAIN_STREAM = 27  # the refit set's key: fold_in(the run's data key, RETRAIN_STREAM)


def ridge_readout(h: jax.Array, targets: jax.Array, rows: jax.Array, ridge: jax.Array):
    """Least squares of `targets` ((n,) or (n, K)) on features `h` (n, p) with an unpenalised
    intercept over the rows where `rows` is 1; relative ridge over the live units (module doc)."""
    from .distill import spd_solve  # the distillation experiment's module loads only where a readout is refitted

    n = jnp.sum(rows)
    mu = rows @ h / n
    hc = (h - mu) * rows[:, None]
    tbar = rows @ targets / n
    cov = hc.T @ hc / n
    live = jnp.maximum(jnp.sum(jnp.any(h * rows[:, None] != 0, axis=0)), 1).astype(float_dtype())
    lam = ridge * jnp.trace(cov) / live + 1e-12
    w = spd_solve(cov + lam * jnp.eye(h.shape[1], dtype=h.dtype), hc.T @ (targets - tbar) / n)
    return w, tbar - mu @ w


def retrain_metrics(params: Params, data: Data, *, key: jax.Array, activation: str, slope: jax.Array,
                    mask: jax.Array, deep: Deep, core_dim: int, core: str, sizes: Sizes, bg_train: jax.Array,
                    bg_ood: jax.Array, orth: jax.Array, share: jax.Array, ridge: jax.Array,
                    n_classes: int) -> dict[str, jax.Array]:
    """RETRAIN_METRICS, each (n_evals,), of one trained network (params in the natural layout)."""
    train = data.train
    refit, x_core, u = sample(key, data.M, train.y, train.mask, core_dim, core, sizes, bg_train, with_ood=True,
                              n_classes=n_classes, spurious=data.spurious)
    even = (jnp.arange(train.y.shape[0]) % 2 == 0)

    def features(x):
        hs, _ = representations(params, x, activation, slope, mask, deep=deep)
        return hs[-1]

    def accuracy(f, split):
        return masked_mean(margins(f, split.y) > 0, split.mask)

    targets = train.y if n_classes == 2 else class_onehot(train.y, n_classes, train.mask)
    h_test = features(data.test.x)
    id_acc = accuracy(forward(params, data.test.x, activation, slope, mask, deep=deep)[0], data.test)

    def variant(rng, o, q, lam):
        x_ood = ood_inputs(data.M, core_dim, sizes, x_core, u, refit, rng, o, bg_train, data.spurious).x
        x_fit = jnp.where(((q >= 1) | even)[:, None], x_ood, refit.x)
        w, b = ridge_readout(features(x_fit), targets, refit.mask, lam)
        ood = ood_split(data, core_dim, sizes, rng, o)
        ood_acc = accuracy(forward(params, ood.x, activation, slope, mask, deep=deep)[0], ood)
        id_r = accuracy(h_test @ w + b, data.test)
        ood_r = accuracy(features(ood.x) @ w + b, ood)
        lost = id_acc - ood_acc
        enough = lost >= 2.0 / sizes.n_test
        recovered = jnp.where(enough, (ood_r - ood_acc) / jnp.where(enough, lost, 1.0), jnp.nan)
        out = {"id_acc_retrained": id_r, "ood_acc_retrained": ood_r, "retrain_recovered": recovered}
        return {k: jnp.where(q < 0, jnp.nan, v) for k, v in out.items()}

    return jax.vmap(variant)(bg_ood, orth, share, ridge)
