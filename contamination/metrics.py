"""The quantities of PAPER.md section 4, measured on a network's parameters.

Means over neurons, samples and features are taken over the true ones only (padding excluded).
Metrics of the OOD set are measured once per evaluation variant (`bg_ood`, one row each); the
others once per network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .data import Data, Sizes, Split, ood_split
from .model import Params, forward, loss_values

METRICS = (
    "train_loss", "id_loss", "id_acc", "ood_loss", "ood_acc", "id_margin", "ood_margin",
    "core_norm", "bg_norm", "bg_signed", "act_asym",
)


def masked_mean(v: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    return jnp.sum(v * mask, axis=axis) / jnp.sum(mask)


def feature_projections(w: jax.Array, M: jax.Array, core_dim: int):
    """<w_k, m_j> split into core (m, core_dim) and background (m, bg_dim) parts (padding: zero)."""
    P = w @ M.T
    return P[:, :core_dim], P[:, core_dim:]


def projection_metrics(w: jax.Array, M: jax.Array, core_dim: int, mask: jax.Array,
                       true_bg: jax.Array) -> dict[str, jax.Array]:
    """The reference script's 'average feature correlations' and the signed background projection."""
    core, bg = feature_projections(w, M, core_dim)
    return {
        "core_norm": masked_mean(jnp.linalg.norm(core, axis=1), mask),
        "bg_norm": masked_mean(jnp.linalg.norm(bg, axis=1), mask),
        "bg_signed": masked_mean(jnp.sum(bg, axis=1) / true_bg, mask),
    }


def activation_asymmetry(pre: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over neurons of |P(active | y=+1) - P(active | y=-1)|, active meaning pre-activation > 0.

    Padded samples carry y = 0 and so count in neither class.
    """
    active = (pre > 0).astype(jnp.float32)
    pos, neg = (y > 0).astype(jnp.float32), (y < 0).astype(jnp.float32)
    p_pos = pos @ active / jnp.sum(pos)
    p_neg = neg @ active / jnp.sum(neg)
    return masked_mean(jnp.abs(p_pos - p_neg), mask)


def split_metrics(params, split: Split, activation, slope, mask, loss):
    """Mean loss, accuracy and margin y f over the split's true samples, and the pre-activations."""
    f, pre = forward(params, split.x, activation, slope, mask)
    yf = split.y * f
    return (masked_mean(loss_values(f, split.y, loss), split.mask), masked_mean(yf > 0, split.mask),
            masked_mean(yf, split.mask), pre)


def evaluate(params: Params, data: Data, *, core_dim: int, sizes: Sizes, bg_ood: jax.Array, activation: str,
             loss: str, slope: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """All of METRICS for one network on one dataset, each (n_evals,): one per OOD range of `bg_ood`."""
    train_loss, _, _, _ = split_metrics(params, data.train, activation, slope, mask, loss)
    id_loss, id_acc, id_margin, pre = split_metrics(params, data.test, activation, slope, mask, loss)

    def ood(rng):
        return split_metrics(params, ood_split(data, core_dim, sizes, rng), activation, slope, mask, loss)[:3]

    ood_loss, ood_acc, ood_margin = jax.vmap(ood)(bg_ood)
    out = {
        "train_loss": train_loss, "id_loss": id_loss, "id_acc": id_acc, "ood_loss": ood_loss,
        "ood_acc": ood_acc, "id_margin": id_margin, "ood_margin": ood_margin,
        "act_asym": activation_asymmetry(pre, data.test.y, mask),
        **projection_metrics(params.w, data.M, core_dim, mask, sizes.bg),
    }
    n_evals = bg_ood.shape[0]
    return {k: jnp.broadcast_to(out[k], (n_evals,)) for k in METRICS}
