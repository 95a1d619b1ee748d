"""The quantities of PAPER.md section 4, measured on a network's parameters.

Means over neurons are taken over the true neurons only (padding excluded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .data import Data, Split
from .model import Params, forward, loss_values

METRICS = (
    "train_loss", "id_loss", "id_acc", "ood_loss", "ood_acc", "id_margin", "ood_margin",
    "core_norm", "bg_norm", "bg_signed", "act_asym",
)


def masked_mean(v: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(v * mask) / jnp.sum(mask)


def feature_projections(w: jax.Array, M: jax.Array, core_dim: int):
    """<w_k, m_j> split into core (m, core_dim) and background (m, bg_dim) parts."""
    P = w @ M.T
    return P[:, :core_dim], P[:, core_dim:]


def projection_metrics(w: jax.Array, M: jax.Array, core_dim: int, mask: jax.Array) -> dict[str, jax.Array]:
    """The reference script's 'average feature correlations' and the signed background projection."""
    core, bg = feature_projections(w, M, core_dim)
    return {
        "core_norm": masked_mean(jnp.linalg.norm(core, axis=1), mask),
        "bg_norm": masked_mean(jnp.linalg.norm(bg, axis=1), mask),
        "bg_signed": masked_mean(jnp.mean(bg, axis=1), mask),
    }


def activation_asymmetry(pre: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over neurons of |P(active | y=+1) - P(active | y=-1)|, active meaning pre-activation > 0."""
    active = (pre > 0).astype(jnp.float32)
    pos = (y > 0).astype(jnp.float32)
    p_pos = pos @ active / jnp.sum(pos)
    p_neg = (1.0 - pos) @ active / jnp.sum(1.0 - pos)
    return masked_mean(jnp.abs(p_pos - p_neg), mask)


def _split_metrics(params, split: Split, activation, slope, mask, loss):
    f, pre = forward(params, split.x, activation, slope, mask)
    yf = split.y * f
    return jnp.mean(loss_values(f, split.y, loss)), jnp.mean(yf > 0), jnp.mean(yf), pre


def evaluate(params: Params, data: Data, *, core_dim: int, activation: str, loss: str,
             slope: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """All of METRICS for one network on one dataset."""
    train_loss, _, _, _ = _split_metrics(params, data.train, activation, slope, mask, loss)
    id_loss, id_acc, id_margin, pre = _split_metrics(params, data.test, activation, slope, mask, loss)
    ood_loss, ood_acc, ood_margin, _ = _split_metrics(params, data.ood, activation, slope, mask, loss)
    out = {
        "train_loss": train_loss, "id_loss": id_loss, "id_acc": id_acc, "ood_loss": ood_loss,
        "ood_acc": ood_acc, "id_margin": id_margin, "ood_margin": ood_margin,
        "act_asym": activation_asymmetry(pre, data.test.y, mask),
        **projection_metrics(params.w, data.M, core_dim, mask),
    }
    return {k: out[k] for k in METRICS}
