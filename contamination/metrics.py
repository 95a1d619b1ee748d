"""The quantities the theory predicts (docs/simulator.md, "Metrics"), measured on a network's parameters.

Means over neurons, samples and features are taken over the true ones only (padding excluded).
Metrics of the OOD set are measured once per evaluation variant (`bg_ood`, one row each); the
others once per network.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .numerics import float_dtype

from .data import Data, Sizes, Split, ood_split, orthogonal_pattern
from .model import Deep, Params, activate, deeper_layers, loss_values, margins, representations

METRICS = (
    "train_loss", "id_loss", "id_acc", "ood_loss", "ood_acc", "id_margin", "ood_margin",
    "core_norm", "bg_norm", "bg_signed", "act_asym", "bg_mean_proj", "bg_shift_rms", "contaminated_frac",
    "bg_grad_balance", "bg_grad_net", "bg_grad_total", "contamination_sign", "contamination_ratio",
)
# Per hidden layer l = 1..L (`layer_metrics`): the OOD shift of its representation relative to its
# class separation, and `contamination_ratio` on its learned weights (`layer_ratios`); NaN for
# layers a run does not have (a shallower run in a deeper program).
REP_SHIFT = "rep_shift_{}"
LAYER_RATIO = "contamination_ratio_{}"


def layer_metrics(static) -> tuple[str, ...]:
    """The per-layer metric names of a program of `static.depth` hidden layers (and, on real data,
    the input gradient's share on the background pixels)."""
    extra = ("bg_grad_share",) if static.dataset != "synthetic" else ()
    layers = range(1, static.depth + 1)
    return tuple(REP_SHIFT.format(l) for l in layers) + tuple(LAYER_RATIO.format(l) for l in layers) + extra


def input_gradient_share(params: Params, split: Split, activation: str, slope: jax.Array, loss: str,
                         mask: jax.Array, deep: Deep, bg_basis: jax.Array) -> jax.Array:
    """The share of the input gradient's mass on the directions the background varies along, mean
    over the split's samples: |P_bg grad_x l|^2 / |grad_x l|^2 (the stand-in for the paper's
    Grad-CAM pictures). On digits P_bg is the border's unit mean direction (`bg_basis`)."""

    def outputs(x):
        hs, _ = representations(params, x, activation, slope, mask, deep=deep)
        return hs[-1] @ params.a + params.c

    return gradient_share(outputs, split, loss, bg_basis)


def gradient_share(outputs, split: Split, loss: str, M_bg: jax.Array) -> jax.Array:
    """`input_gradient_share` for any network `outputs(x) -> f`: the mean over the split's samples
    of the share of each sample's input gradient of its loss on the (orthonormal) rows of `M_bg`."""
    g = jax.grad(lambda x: jnp.sum(loss_values(outputs(x), split.y, loss) * split.mask))(split.x)  # (n, d)
    bg = jnp.sum((g @ M_bg.T) ** 2, axis=1)
    tot = jnp.sum(g ** 2, axis=1)
    share = jnp.where(tot > 0, bg / jnp.where(tot > 0, tot, 1.0), jnp.nan)
    return jnp.nansum(share * split.mask) / jnp.sum(split.mask * (tot > 0))


# A neuron counts as contaminated (`contaminated_frac`) where its projection on the training
# background's unit mean direction is, in absolute value, above this share of the step-0 neuron
# weight norm (RMS over neurons). The init norm does not move with the input dimension d (1/sqrt(3)
# for `torch` init, 1 for `theory`), unlike the init projection's spread (1/sqrt(d) of it, which the
# former threshold, 3 spreads, followed): 0.375 = 3 / sqrt(64) is that threshold at d = 64, the
# dimension of the quickstart and the tests, held fixed for every d.
CONTAMINATED_LENGTH = 0.375


def masked_mean(v: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    return jnp.sum(v * mask, axis=axis) / jnp.sum(mask)


def feature_projections(w: jax.Array, M: jax.Array, core_dim: int):
    """<w_k, m_j> split into core (m, core_dim) and background (m, bg_dim) parts (padding: zero)."""
    P = w @ M.T
    return P[:, :core_dim], P[:, core_dim:]


class Reference(NamedTuple):
    """What a run's first-layer metrics measure against, fixed for the run (`reference`)."""

    w0: jax.Array  # (m, d) the step-0 first-layer weights
    u: jax.Array  # (d,) the unit direction of the training background mean (`bg_direction`)
    scale0: jax.Array  # () RMS over true neurons of the step-0 weight norms |w_k(0)|
    bg_basis: jax.Array  # (r, d) orthonormal rows: the directions the background varies along
    bg_mean: jax.Array  # (d,) the training background mean in input space
    core_means: jax.Array  # (K, d) the class-conditional means of the core part of the input
    core_defined: bool  # False where the class means of the core are zero (the non-linear core)
    # (d,) the unit direction of the orthogonal OOD shift, sum_j s_j m_j / sqrt(d_bg) with s
    # the zero-sum `data.orthogonal_pattern` (synthetic data; zero for real data)
    v_orth: jax.Array | None = None
    deep_w0: tuple = ()  # the step-0 weights W_l(0) of layers 2..L (for `layer_ratios`)


def reference(w0: jax.Array, M: jax.Array, core_dim: int, sizes: Sizes, bg_train: jax.Array, mask: jax.Array,
              train: Split, *, n_classes: int = 2, core: str = "linear", dataset: str = "synthetic",
              deep_w0: tuple = ()) -> Reference:
    """The run's `Reference`. Synthetic data: the background varies along every background
    feature; real data (digits): the border is one intensity per image, so it varies along its
    mean direction only. The means (`input_means`) weight `contamination_ratio`; `deep_w0` holds
    the step-0 weights of layers 2..L for the per-layer ratios."""
    u = bg_direction(M, core_dim, sizes.bg, bg_train)
    scale0 = jnp.sqrt(masked_mean(jnp.sum(w0 ** 2, axis=1), mask))
    M_bg = M[core_dim:]
    bg_mean, core_means, defined = input_means(M, core_dim, bg_train, train, n_classes=n_classes, core=core,
                                               dataset=dataset)
    if dataset != "synthetic":
        bg_basis, v_orth = u[None, :], jnp.zeros_like(u)
    else:
        bg_basis = M_bg
        v_orth = orthogonal_pattern(M_bg.shape[0], sizes.bg) @ M_bg / jnp.sqrt(sizes.bg.astype(float_dtype()))
    return Reference(w0, u, scale0, bg_basis, bg_mean, core_means, defined, v_orth, tuple(deep_w0))


def input_means(M: jax.Array, core_dim: int, bg_train: jax.Array, train: Split, *, n_classes: int = 2,
                core: str = "linear", dataset: str = "synthetic"):
    """The training background mean in input space (d,), the class-conditional means of the core
    part of the input (K, d), and whether those are defined (`reference`). Synthetic data: known
    (linear core: E[z_j | y] = y/2 for two classes, 1/2 on a class's own features for K; zero for
    the non-linear core, where `defined` is False); real data: the training set's mean images of
    each class on the digit pixels."""
    M_core, M_bg = M[:core_dim], M[core_dim:]
    bg_mean = range_mean(bg_train) * jnp.sum(M_bg, axis=0)
    if dataset != "synthetic":
        onehot = class_onehot(train.y, n_classes, train.mask)
        core_x = (train.x @ M_core.T) @ M_core
        return bg_mean, (onehot.T @ core_x) / jnp.sum(onehot, axis=0)[:, None], True
    if n_classes == 2:
        half = 0.5 * jnp.sum(M_core, axis=0)
        core_means = jnp.stack([half, -half])
    else:
        owned = (jnp.arange(core_dim)[None, :] % n_classes == jnp.arange(n_classes)[:, None]).astype(M.dtype)
        core_means = 0.5 * owned @ M_core
    if core != "linear":
        return bg_mean, jnp.zeros_like(core_means), False
    return bg_mean, core_means, True


def projection_metrics(w: jax.Array, M: jax.Array, core_dim: int, mask: jax.Array,
                       true_bg: jax.Array, ref: Reference | None = None) -> dict[str, jax.Array]:
    """The reference script's 'average feature correlations' and the signed background projection.

    With `ref`, `bg_norm` is net of init: the norm of the learned background weights
    P_bg (w_k - w_k(0)), on the directions the background varies along (`ref.bg_basis`); without
    it (a fixed teacher), the norm of P_bg w_k on every background feature."""
    core, bg = feature_projections(w, M, core_dim)
    bg_learned = bg if ref is None else (w - ref.w0) @ ref.bg_basis.T
    return {
        "core_norm": masked_mean(jnp.linalg.norm(core, axis=1), mask),
        "bg_norm": masked_mean(jnp.linalg.norm(bg_learned, axis=1), mask),
        "bg_signed": masked_mean(jnp.sum(bg, axis=1) / true_bg, mask),
    }


def activation_derivative(pre: jax.Array, activation: str, slope: jax.Array) -> jax.Array:
    """act'(pre), elementwise: the gate the activation puts on each sample's gradient."""
    return jax.jvp(lambda p: activate(p, activation, slope), (pre,), (jnp.ones_like(pre),))[1]


def class_onehot(y: jax.Array, n_classes: int, rows: jax.Array) -> jax.Array:
    """(n, K) membership of each true row (`rows` = 1) in classes 0..K-1; for two classes,
    column 0 is y = +1 and column 1 is y = -1."""
    if n_classes == 2:
        return jnp.stack([(y > 0), (y < 0)], axis=1).astype(float_dtype()) * rows[:, None]
    return jax.nn.one_hot(y.astype(jnp.int32), n_classes) * rows[:, None]


def activation_asymmetry(pre: jax.Array, y: jax.Array, mask: jax.Array, activation: str,
                         slope: jax.Array, n_classes: int = 2, rows: jax.Array | None = None) -> jax.Array:
    """The gate's class selectivity (docs/simulator.md, "`act_asym`"), on one scale for every activation and K.

    Per neuron k, the gate g_ik = act'(pre_ik) in units of its range over the test samples
    r_k = max_i g_ik - min_i g_ik, and its class means m_kc and their sampling variances v_kc:

        act_asym = sqrt(max(0, mean_k mean_{c < c'} [(m_kc - m_kc')^2 - v_kc - v_kc'] / r_k^2))

    A neuron whose gate is open on one class and shut on the other scores 1 whatever the
    activation (for ReLU m_k+ - m_k- = P(active | +) - P(active | -)); a constant gate (a linear
    network, a dead or always-open unit) 0. Subtracting the class means' sampling variances makes
    a gate independent of the class read ~0 at every K and test-set size (max - min over K class
    means, the former K-class value, grew with K under that null). Padded samples (y = 0 for two
    classes, `rows` = 0) count in no class.
    """
    gate = activation_derivative(pre, activation, slope)
    if rows is None:
        rows = (y != 0).astype(float_dtype())
    onehot = class_onehot(y, n_classes, rows)  # (n, K)
    counts = jnp.sum(onehot, axis=0)  # (K,)
    lo = jnp.min(jnp.where(rows[:, None] > 0, gate, jnp.inf), axis=0)
    hi = jnp.max(jnp.where(rows[:, None] > 0, gate, -jnp.inf), axis=0)
    rng = hi - lo  # (m,)
    # gates relative to their minimum, so that a constant gate gives exactly zero
    g = jnp.where(rows[:, None] > 0, gate - lo[None, :], 0.0)
    means = (onehot.T @ g) / counts[:, None]  # (K, m)
    var = (onehot.T @ g ** 2 - counts[:, None] * means ** 2) / jnp.maximum(counts[:, None] - 1, 1)  # unbiased
    v = var / counts[:, None]  # the class means' sampling variances
    k = means.shape[0]
    centred = means - jnp.mean(means, axis=0)
    # mean over the K (K - 1) / 2 pairs of (m_c - m_c')^2 = 2 / (K - 1) sum_c (m_c - mean)^2
    pair_sq = 2.0 / (k - 1) * jnp.sum(centred ** 2, axis=0)
    pair_v = 2.0 / k * jnp.sum(v, axis=0)
    gated = rng > 0
    per_neuron = jnp.where(gated, (pair_sq - pair_v) / jnp.where(gated, rng, 1.0) ** 2, 0.0)
    return jnp.sqrt(jnp.maximum(masked_mean(per_neuron, mask), 0.0))


def range_mean(rng: jax.Array) -> jax.Array:
    return 0.5 * (rng[..., 0] + rng[..., 1])


def mean_sign(bg_train: jax.Array) -> jax.Array:
    """The sign of the training background mean (+1 for a zero mean)."""
    return jnp.where(range_mean(bg_train) < 0, -1.0, 1.0)


def bg_direction(M: jax.Array, core_dim: int, true_bg: jax.Array, bg_train: jax.Array) -> jax.Array:
    """The unit direction of the training background mean in input space, (d,): every background
    coefficient has the same mean, so it is sum_j m_j / sqrt(d_bg), signed as the mean (a
    zero-mean background takes the + sign)."""
    return mean_sign(bg_train) * jnp.sum(M[core_dim:], axis=0) / jnp.sqrt(true_bg.astype(float_dtype()))


def mean_direction_projections(w: jax.Array, u: jax.Array) -> jax.Array:
    """Each neuron's first-layer weight projected on the unit direction `u`, (m,)."""
    return w @ u


def contamination_count(p: jax.Array, scale0: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """`contaminated_frac`, the share of neurons with |p_k| > CONTAMINATED_LENGTH * scale0 (either
    sign), and `contamination_sign`, the mean sign of p_k among them (NaN where none counts)."""
    hit = (jnp.abs(p) > CONTAMINATED_LENGTH * scale0).astype(float_dtype()) * mask
    n_hit = jnp.sum(hit)
    return {"contaminated_frac": n_hit / jnp.sum(mask),
            "contamination_sign": jnp.where(n_hit > 0, jnp.sum(hit * jnp.sign(p)) / jnp.maximum(n_hit, 1.0), jnp.nan)}


def response_ratio(bg_resp: jax.Array, class_resp: jax.Array, mask: jax.Array) -> jax.Array:
    """sum_k |B_k| / sum_k C_k over the true units (`mask`): B_k (n,) a unit's learned response to
    the background mean, C_k the RMS over classes of its centred learned responses to the class
    means (`class_resp`, (n, K)). NaN where no unit learned a class difference (step 0)."""
    centred = class_resp - jnp.mean(class_resp, axis=1, keepdims=True)
    core = jnp.sqrt(jnp.mean(centred ** 2, axis=1))
    num, den = jnp.sum(jnp.abs(bg_resp) * mask), jnp.sum(core * mask)
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), jnp.nan)


def contamination_ratio(w: jax.Array, ref: Reference, mask: jax.Array) -> jax.Array:
    """Theorem 2's scale-free ratio on the learned first-layer weights dw_k = w_k - w_k(0):
    sum_k |<dw_k, mu_bg>| / sum_k C_k, where mu_bg is the training background mean in input space
    (sum_bg mu_j m_j) and C_k = RMS over classes c of <dw_k, mu_c> - mean_c' <dw_k, mu_c'>, with mu_c
    the class-conditional mean of the core part of the input (two classes, linear core: +-1/2 sum_core
    m_j, so C_k = |sum_core mu_j y <dw_k, m_j>|). NaN where the core's class means are zero (the
    non-linear core) and where nothing was learned (step 0)."""
    dw = w - ref.w0
    ratio = response_ratio(dw @ ref.bg_mean, dw @ ref.core_means.T, mask)
    return ratio if ref.core_defined else jnp.full_like(ratio, jnp.nan)


def layer_ratios(params: Params, ref: Reference, mask: jax.Array, deep: Deep, hs: list, hs_centred: list,
                 y: jax.Array, rows: jax.Array, n_classes: int) -> dict[str, jax.Array]:
    """`contamination_ratio_l` per hidden layer l: layer 1's is `contamination_ratio`; layer l >= 2
    reads its learned weights dW_l = W_l - W_l(0) against what its input h_(l-1) carries, measured
    on the ID test samples (`rows`): the background mean's part of the mean input, mean h_(l-1)(x) -
    mean h_(l-1)(x - mu_bg) (`hs_centred`: the representations of the inputs with the training
    background mean removed; at l = 1 exactly mu_bg), and the class means of h_(l-1)(x). NaN for
    layers the run does not have."""
    out = {LAYER_RATIO.format(1): contamination_ratio(params.w, ref, mask)}
    onehot = class_onehot(y, n_classes, rows)
    for l, ((w, _), w0, m, active) in enumerate(zip(params.deep, ref.deep_w0, deep.masks, deep.active), start=2):
        h, hc = hs[l - 2], hs_centred[l - 2]
        mu_bg = rows @ (h - hc) / jnp.sum(rows)
        class_means = (onehot.T @ h) / jnp.sum(onehot, axis=0)[:, None]  # (K, m_(l-1))
        dw = w - w0
        out[LAYER_RATIO.format(l)] = jnp.where(active, response_ratio(dw @ mu_bg, dw @ class_means.T, m), jnp.nan)
    return out


def mean_direction_metrics(w: jax.Array, ref: Reference, mask: jax.Array, true_bg: jax.Array,
                           bg_train: jax.Array, bg_ood: jax.Array, orth: jax.Array | None = None) -> dict[str, jax.Array]:
    """`bg_mean_proj`, `contaminated_frac`, `contamination_sign` and `contamination_ratio` (per
    network) and `bg_shift_rms` (per OOD range of `bg_ood`, (n_evals,)): the drift along the
    background mean, and what the learned weights do to each neuron's pre-activation when the
    background moves from the training to the OOD mean."""
    p = mean_direction_projections(w, ref.u)
    dp = mean_direction_projections(w - ref.w0, ref.u)  # exactly 0 at the initial weights
    # The mean moves by (ood mean - train mean) on each of d_bg coefficients: sqrt(d_bg) times
    # that along the unit direction (whose sign follows the training mean).
    delta = (range_mean(bg_ood) - range_mean(bg_train)) * jnp.sqrt(true_bg.astype(float_dtype())) * mean_sign(bg_train)
    shift_rms = jax.vmap(lambda dl: jnp.sqrt(masked_mean((dp * dl) ** 2, mask)))(delta)
    if orth is not None:  # an orthogonal OOD shift moves the input along ref.v_orth instead
        dv = (w - ref.w0) @ ref.v_orth
        delta_o = (range_mean(bg_ood) - range_mean(bg_train)) * jnp.sqrt(true_bg.astype(float_dtype()))
        orth_rms = jax.vmap(lambda dl: jnp.sqrt(masked_mean((dv * dl) ** 2, mask)))(delta_o)
        shift_rms = jnp.where(orth > 0, orth_rms, shift_rms)
    return {
        "bg_mean_proj": masked_mean(p, mask),
        **contamination_count(p, ref.scale0, mask),
        "contamination_ratio": contamination_ratio(w, ref, mask),
        "bg_shift_rms": shift_rms,
    }


def gradient_balance(f: jax.Array, pre: jax.Array, split: Split, a: jax.Array, u: jax.Array, activation: str,
                     slope: jax.Array, loss: str, mask: jax.Array) -> dict[str, jax.Array]:
    """The paper's Figure 2, measured (`balance_metrics`): sum_k |g+_k + g-_k| / sum_k (|g+_k| + |g-_k|), where g+-_k
    is neuron k's loss gradient (on its first-layer weight) summed over the split's y = +-1
    samples and projected on the unit background direction `u`. Near 0 the two classes cancel
    (a linear network); well above 0 they do not (gated ReLU). NaN where the loss has no
    gradient at all (every hinge margin above 1)."""
    dloss = jax.jvp(lambda g: loss_values(g, split.y, loss), (f,), (jnp.ones_like(f),))[1]  # dl_i/df_i
    # d l_i / d w_k projected on u: dl_i/df_i * a_k * act'(pre_ik) * <x_i, u>
    per_sample = (dloss * (split.x @ u))[:, None] * activation_derivative(pre, activation, slope) * a[None, :]
    pos, neg = (split.y > 0).astype(float_dtype()), (split.y < 0).astype(float_dtype())
    g_pos, g_neg = pos @ per_sample, neg @ per_sample
    num = jnp.sum(jnp.abs(g_pos + g_neg) * mask)
    den = jnp.sum((jnp.abs(g_pos) + jnp.abs(g_neg)) * mask)
    return balance_metrics(num, den, split)


def balance_metrics(num: jax.Array, den: jax.Array, split: Split) -> dict[str, jax.Array]:
    """The class gradient balance as its ratio and, per training sample (the gradient of the mean
    loss), its two terms: `bg_grad_net` = sum_k |sum_c g_ck| (what does not cancel) and
    `bg_grad_total` = sum_k sum_c |g_ck| (what there is to cancel)."""
    n = jnp.sum(split.mask)
    return {"bg_grad_balance": jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan),
            "bg_grad_net": num / n, "bg_grad_total": den / n}


def gradient_balance_general(params: Params, pre: jax.Array, split: Split, u: jax.Array, activation: str,
                             slope: jax.Array, loss: str, mask: jax.Array, deep: Deep, n_classes: int) -> dict:
    """`gradient_balance` for any depth and K classes: the per-sample gradient on the first-layer
    pre-activations by autodiff through the layers above, projected on `u` and summed per class:
    sum_k |sum_c g_ck| / sum_k sum_c |g_ck| (the two-class formula at K = 2)."""

    def total_loss(pre1):
        h = activate(pre1, activation, slope) * mask
        h = ([h] + deeper_layers(params, h, activation, slope, deep))[-1]
        return jnp.sum(loss_values(h @ params.a + params.c, split.y, loss) * split.mask)

    delta = jax.grad(total_loss)(pre)  # (n, m): d l_i / d pre_ik
    per_class = class_onehot(split.y, n_classes, split.mask).T @ (delta * (split.x @ u)[:, None])  # (K, m)
    num = jnp.sum(jnp.abs(jnp.sum(per_class, axis=0)) * mask)
    den = jnp.sum(jnp.sum(jnp.abs(per_class), axis=0) * mask)
    return balance_metrics(num, den, split)


def split_metrics(params, split: Split, activation, slope, mask, loss, deep: Deep = Deep()):
    """Mean loss, accuracy and margin (y f, or the true logit's lead for K classes) over the split's
    true samples; the outputs, first-layer pre-activations and every layer's representation."""
    hs, pre = representations(params, split.x, activation, slope, mask, deep=deep)
    f = hs[-1] @ params.a + params.c  # `model.forward`, keeping the representations
    return (*output_metrics(f, split, loss), f, pre, hs)


def output_metrics(f: jax.Array, split: Split, loss: str):
    """Mean loss, accuracy and margin over the split's true samples, from any network's outputs `f`."""
    yf = margins(f, split.y)
    return (masked_mean(loss_values(f, split.y, loss), split.mask), masked_mean(yf > 0, split.mask),
            masked_mean(yf, split.mask))


def rep_shifts(hs_id, y, rows, ood_means, n_classes: int, deep: Deep) -> dict[str, jax.Array]:
    """Per layer l: |mean OOD rep - mean ID rep| / class separation, where the separation is the
    RMS distance between class means of the ID reps (|mu_+ - mu_-| for two classes), each
    (n_evals,); NaN for layers the run does not have, and where the classes' means (nearly) coincide."""
    onehot = class_onehot(y, n_classes, rows)
    k = onehot.shape[1]
    active = (True,) + tuple(deep.active)
    out = {}
    for l, (h, mu_ood) in enumerate(zip(hs_id, ood_means)):
        mu_id = rows @ h / jnp.sum(rows)
        class_means = (onehot.T @ h) / jnp.sum(onehot, axis=0)[:, None]  # (K, m)
        centred = class_means - jnp.mean(class_means, axis=0)
        sep = jnp.sqrt(2.0 * jnp.sum(centred ** 2) / (k - 1))
        # NaN where the layer (nearly) does not separate the classes: every unit dead, or class means
        # within 1e-3 of their size of each other, where the ratio is float rounding over a tiny gap
        scale = jnp.sqrt(jnp.mean(jnp.sum(class_means ** 2, axis=1)))
        separated = sep > 1e-3 * scale
        shift = jnp.linalg.norm(mu_ood - mu_id, axis=-1) / jnp.where(separated, sep, 1.0)
        out[REP_SHIFT.format(l + 1)] = jnp.where(active[l] & separated, shift, jnp.nan)
    return out


def evaluate(params: Params, data: Data, *, core_dim: int, sizes: Sizes, bg_train: jax.Array, bg_ood: jax.Array,
             ref: Reference, activation: str, loss: str, slope: jax.Array,
             mask: jax.Array, deep: Deep = Deep(), n_classes: int = 2,
             input_grad: bool = False, orth: jax.Array | None = None) -> dict[str, jax.Array]:
    """All of METRICS and the per-layer metrics for one network on one dataset, each (n_evals,):
    one per OOD range of `bg_ood`.

    `ref` is the run's `reference` (its step-0 weights, background direction and class means:
    fixed for the run, computed once, not at every measurement). `deep` holds the true sizes of
    layers 2..L.
    """
    u = ref.u
    general = bool(params.deep) or n_classes > 2
    train_loss, _, _, f_train, pre_train, _ = split_metrics(params, data.train, activation, slope, mask, loss, deep)
    id_loss, id_acc, id_margin, _, pre, hs = split_metrics(params, data.test, activation, slope, mask, loss, deep)
    hs_centred = (representations(params, data.test.x - ref.bg_mean, activation, slope, mask, deep=deep)[0]
                  if params.deep else [])

    def ood(rng, o):
        split = ood_split(data, core_dim, sizes, rng, o)
        loss_, acc, margin, _, _, hs_ood = split_metrics(params, split, activation, slope, mask, loss, deep)
        return loss_, acc, margin, [split.mask @ h / jnp.sum(split.mask) for h in hs_ood]

    if orth is None:
        ood_loss, ood_acc, ood_margin, ood_means = jax.vmap(lambda rng: ood(rng, None))(bg_ood)
    else:
        ood_loss, ood_acc, ood_margin, ood_means = jax.vmap(ood)(bg_ood, orth)
    if general:
        balance = gradient_balance_general(params, pre_train, data.train, u, activation, slope, loss, mask, deep,
                                           n_classes)
    else:
        balance = gradient_balance(f_train, pre_train, data.train, params.a, u, activation, slope, loss, mask)
    out = {
        "train_loss": train_loss, "id_loss": id_loss, "id_acc": id_acc, "ood_loss": ood_loss,
        "ood_acc": ood_acc, "id_margin": id_margin, "ood_margin": ood_margin,
        "act_asym": activation_asymmetry(pre, data.test.y, mask, activation, slope, n_classes, data.test.mask),
        **projection_metrics(params.w, data.M, core_dim, mask, sizes.bg, ref),
        **mean_direction_metrics(params.w, ref, mask, sizes.bg, bg_train, bg_ood, orth),
        **balance,
        **rep_shifts(hs, data.test.y, data.test.mask, ood_means, n_classes, deep),
        **layer_ratios(params, ref, mask, deep, hs, hs_centred, data.test.y, data.test.mask, n_classes),
    }
    if input_grad:
        out["bg_grad_share"] = input_gradient_share(params, data.test, activation, slope, loss, mask, deep,
                                                    ref.bg_basis)
    n_evals = bg_ood.shape[0]
    names = list(METRICS) + [k for k in out if k not in METRICS]
    return {k: jnp.broadcast_to(out[k], (n_evals,)) for k in names}
