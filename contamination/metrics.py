"""The quantities of PAPER.md section 4, measured on a network's parameters.

Means over neurons, samples and features are taken over the true ones only (padding excluded).
Metrics of the OOD set are measured once per evaluation variant (`bg_ood`, one row each); the
others once per network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .data import Data, Sizes, Split, ood_split
from .model import Params, activate, forward, loss_values

METRICS = (
    "train_loss", "id_loss", "id_acc", "ood_loss", "ood_acc", "id_margin", "ood_margin",
    "core_norm", "bg_norm", "bg_signed", "act_asym", "bg_mean_proj", "bg_shift_rms", "contaminated_frac",
    "bg_grad_balance",
)
# Above this many times its own spread over neurons at step 0, a neuron's projection on the
# training background's mean direction counts as contaminated (`contaminated_frac`).
CONTAMINATED_SPREADS = 3.0


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


def activation_derivative(pre: jax.Array, activation: str, slope: jax.Array) -> jax.Array:
    """act'(pre), elementwise: the gate the activation puts on each sample's gradient."""
    return jax.jvp(lambda p: activate(p, activation, slope), (pre,), (jnp.ones_like(pre),))[1]


def activation_asymmetry(pre: jax.Array, y: jax.Array, mask: jax.Array, activation: str,
                         slope: jax.Array) -> jax.Array:
    """Mean over neurons of |E[act'(pre) | y=+1] - E[act'(pre) | y=-1]| (PAPER.md section 4.1).

    For ReLU this is |P(active | +) - P(active | -)|; for a linear network 0 (nothing is
    gated); for LeakyReLU (1 - slope) times the ReLU value. Padded samples carry y = 0 and so
    count in neither class.
    """
    gate = activation_derivative(pre, activation, slope)
    pos, neg = (y > 0).astype(jnp.float32), (y < 0).astype(jnp.float32)
    n_pos, n_neg = jnp.sum(pos), jnp.sum(neg)
    # over a common denominator, so that a constant gate (linear network) gives exactly 0
    return masked_mean(jnp.abs((pos @ gate) * n_neg - (neg @ gate) * n_pos) / (n_pos * n_neg), mask)


def range_mean(rng: jax.Array) -> jax.Array:
    return 0.5 * (rng[..., 0] + rng[..., 1])


def mean_sign(bg_train: jax.Array) -> jax.Array:
    """The sign of the training background mean (+1 for a zero mean)."""
    return jnp.where(range_mean(bg_train) < 0, -1.0, 1.0)


def bg_direction(M: jax.Array, core_dim: int, true_bg: jax.Array, bg_train: jax.Array) -> jax.Array:
    """The unit direction of the training background mean in input space, (d,): every background
    coefficient has the same mean, so it is sum_j m_j / sqrt(d_bg), signed as the mean (a
    zero-mean background takes the + sign)."""
    return mean_sign(bg_train) * jnp.sum(M[core_dim:], axis=0) / jnp.sqrt(true_bg.astype(jnp.float32))


def mean_direction_projections(w: jax.Array, u: jax.Array) -> jax.Array:
    """Each neuron's first-layer weight projected on the unit direction `u`, (m,)."""
    return w @ u


def init_spread(w0: jax.Array, u: jax.Array, mask: jax.Array) -> jax.Array:
    """The spread (standard deviation over true neurons) of the step-0 projections on `u`."""
    p = mean_direction_projections(w0, u)
    mu = masked_mean(p, mask)
    return jnp.sqrt(masked_mean((p - mu) ** 2, mask))


def mean_direction_metrics(w: jax.Array, u: jax.Array, spread0: jax.Array, mask: jax.Array,
                           true_bg: jax.Array, bg_train: jax.Array, bg_ood: jax.Array) -> dict[str, jax.Array]:
    """`bg_mean_proj` and `contaminated_frac` (per network) and `bg_shift_rms` (per OOD range of
    `bg_ood`, (n_evals,)): the drift along the background mean, and what it does to each
    neuron's pre-activation when the background moves from the training to the OOD mean."""
    p = mean_direction_projections(w, u)
    # The mean moves by (ood mean - train mean) on each of d_bg coefficients: sqrt(d_bg) times
    # that along the unit direction (whose sign follows the training mean).
    delta = (range_mean(bg_ood) - range_mean(bg_train)) * jnp.sqrt(true_bg.astype(jnp.float32)) * mean_sign(bg_train)
    shift_rms = jax.vmap(lambda dl: jnp.sqrt(masked_mean((p * dl) ** 2, mask)))(delta)
    return {
        "bg_mean_proj": masked_mean(p, mask),
        "contaminated_frac": masked_mean((p > CONTAMINATED_SPREADS * spread0).astype(jnp.float32), mask),
        "bg_shift_rms": shift_rms,
    }


def gradient_balance(f: jax.Array, pre: jax.Array, split: Split, a: jax.Array, u: jax.Array, activation: str,
                     slope: jax.Array, loss: str, mask: jax.Array) -> jax.Array:
    """The paper's Figure 2, measured: sum_k |g+_k + g-_k| / sum_k (|g+_k| + |g-_k|), where g+-_k
    is neuron k's loss gradient (on its first-layer weight) summed over the split's y = +-1
    samples and projected on the unit background direction `u`. Near 0 the two classes cancel
    (a linear network); well above 0 they do not (gated ReLU). NaN where the loss has no
    gradient at all (every hinge margin above 1)."""
    dloss = jax.jvp(lambda g: loss_values(g, split.y, loss), (f,), (jnp.ones_like(f),))[1]  # dl_i/df_i
    # d l_i / d w_k projected on u: dl_i/df_i * a_k * act'(pre_ik) * <x_i, u>
    per_sample = (dloss * (split.x @ u))[:, None] * activation_derivative(pre, activation, slope) * a[None, :]
    pos, neg = (split.y > 0).astype(jnp.float32), (split.y < 0).astype(jnp.float32)
    g_pos, g_neg = pos @ per_sample, neg @ per_sample
    num = jnp.sum(jnp.abs(g_pos + g_neg) * mask)
    den = jnp.sum((jnp.abs(g_pos) + jnp.abs(g_neg)) * mask)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def split_metrics(params, split: Split, activation, slope, mask, loss):
    """Mean loss, accuracy and margin y f over the split's true samples; the outputs and pre-activations."""
    f, pre = forward(params, split.x, activation, slope, mask)
    yf = split.y * f
    return (masked_mean(loss_values(f, split.y, loss), split.mask), masked_mean(yf > 0, split.mask),
            masked_mean(yf, split.mask), f, pre)


def evaluate(params: Params, data: Data, *, core_dim: int, sizes: Sizes, bg_train: jax.Array, bg_ood: jax.Array,
             u: jax.Array, spread0: jax.Array, activation: str, loss: str, slope: jax.Array,
             mask: jax.Array) -> dict[str, jax.Array]:
    """All of METRICS for one network on one dataset, each (n_evals,): one per OOD range of `bg_ood`.

    `u` is `bg_direction` of the run and `spread0` `init_spread` of its step-0 weights along it
    (both fixed for the run: computed once, not at every measurement).
    """
    train_loss, _, _, f_train, pre_train = split_metrics(params, data.train, activation, slope, mask, loss)
    id_loss, id_acc, id_margin, _, pre = split_metrics(params, data.test, activation, slope, mask, loss)

    def ood(rng):
        return split_metrics(params, ood_split(data, core_dim, sizes, rng), activation, slope, mask, loss)[:3]

    ood_loss, ood_acc, ood_margin = jax.vmap(ood)(bg_ood)
    out = {
        "train_loss": train_loss, "id_loss": id_loss, "id_acc": id_acc, "ood_loss": ood_loss,
        "ood_acc": ood_acc, "id_margin": id_margin, "ood_margin": ood_margin,
        "act_asym": activation_asymmetry(pre, data.test.y, mask, activation, slope),
        **projection_metrics(params.w, data.M, core_dim, mask, sizes.bg),
        **mean_direction_metrics(params.w, u, spread0, mask, sizes.bg, bg_train, bg_ood),
        "bg_grad_balance": gradient_balance(f_train, pre_train, data.train, params.a, u, activation, slope, loss,
                                            mask),
    }
    n_evals = bg_ood.shape[0]
    return {k: jnp.broadcast_to(out[k], (n_evals,)) for k in METRICS}
