"""A small convolutional network for image data (`model = "cnn"`, `dataset = "digits"`).

    f(x) = <a, pool(act(conv(img(x); K) + b))> + c

- `img(x)`: the input vector laid out as its S x S picture (`digits.layout`), one channel;
- `conv`: `width` filters of 3 x 3, stride 1, zero padding ("SAME"), a bias per filter;
- `pool`: 2 x 2 average pooling (S = 8 + 2 border is even), flattened to width x (S/2)^2 features;
- the output: one logit (two classes, labels +-1) or K logits, trained with the config's loss.

Init as PyTorch's `Conv2d(1, width, 3)` and `Linear`: kernels and biases U(+-1/3) (fan-in 9, the
kernels times `init_scale`), output weights and bias U(+-1/sqrt(fan-in)) with fan-in the true
width x (S/2)^2. Every draw is per filter (`data.per_row`), so a run padded with extra filters
(masked, never trained) is the same run.

Metrics (`CNN_METRICS`): the classifier's losses, accuracies and margins, and the filters'
analogues of the MLP's border metrics. A border region of intensity z gives a filter's
pre-activation z sum(K_c) + b_c, so a filter's weight on the border's mean direction is its
projection on the uniform patch, <K_c, 1/3> (times the sign of the training mean): `bg_mean_proj`
is its mean over filters, `contaminated_frac` the share of filters whose projection is above
`metrics.CONTAMINATED_LENGTH` times the step-0 filter norm (RMS over filters) in absolute value,
`contamination_sign` their mean sign, `bg_shift_rms` the RMS change of that pre-activation from the
training to the OOD mean made by the learned filters (net of their step-0 values).
`contamination_ratio` is the MLP's with every (filter, position) pair as a unit (`conv_ratio`).
`bg_grad_share` is the input gradient's squared mass along the border's unit mean direction (the one
direction the border varies along).

Batching: runs are vmapped as every other program. A `vmap` of `lax.conv` over per-run filters
becomes a grouped convolution; `benchmarks/cnn_batching.py` measures it, and the patch form, against
`lax.map` (BENCHMARKS.md); `CONV` holds the faster convolution.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .numerics import float_dtype
import numpy as np

from .data import first, ood_split, per_row
from .digits import layout
from .loop import Training, init_carry, make_optimizer, make_step
from .shift import shift_metrics
from .metrics import (bg_direction, contamination_count, gradient_share, input_means, masked_mean, mean_sign,
                      output_metrics, range_mean, response_ratio)
from .model import activate, loss_values
from .setup import make_get_batch, prepare, run_key
from .spec import Static, Traced

CNN_METRICS = ("train_loss", "id_loss", "id_acc", "ood_loss", "ood_acc", "id_margin", "ood_margin",
               "bg_mean_proj", "bg_shift_rms", "contaminated_frac", "contamination_sign", "bg_grad_share",
               "contamination_ratio")
KERNEL = 3
# How the convolution is computed: "lax" (`lax.conv_general_dilated`) or "patches" (one matrix
# product of the 3 x 3 patches, gathered once, with the filters): the faster under both `vmap` and
# `lax.map` in benchmarks/cnn_batching.py (BENCHMARKS.md).
CONV = "patches"


class ConvParams(NamedTuple):
    k: jax.Array  # (C, 3, 3) filters
    b: jax.Array  # (C,)
    a: jax.Array  # (C, P) output weights, (C, P, K) for K classes; P = (S/2)^2 pooled positions
    c: jax.Array  # () or (K,)


def side_of(d: int) -> int:
    """The side S of an S x S picture of d pixels."""
    return int(round(np.sqrt(d)))


def raster(border: int) -> np.ndarray:
    """The input index of each pixel of the S x S picture, row-major: `x[..., raster]` is the image."""
    core, bg = layout(border)
    order = np.empty(len(core) + len(bg), dtype=np.int32)
    order[core] = np.arange(len(core))
    order[bg] = len(core) + np.arange(len(bg))
    return order


def init_conv(key: jax.Array, s: Static, true_width: jax.Array, init_scale: jax.Array) -> ConvParams:
    c, side = s.width, side_of(s.input_dim)
    p = (side // 2) ** 2
    k_k, k_b, k_a, k_c = jax.random.split(key, 4)
    mask = first(c, true_width)
    bound = 1.0 / KERNEL  # 1 / sqrt(fan-in 9)
    kern = per_row(k_k, c, lambda k: jax.random.uniform(k, (KERNEL, KERNEL), minval=-bound, maxval=bound))
    bias = per_row(k_b, c, lambda k: jax.random.uniform(k, (), minval=-bound, maxval=bound))
    out_shape = (p,) if s.n_classes == 2 else (p, s.n_classes)
    bound_out = 1.0 / jnp.sqrt(true_width.astype(float_dtype()) * p)
    a = per_row(k_a, c, lambda k: jax.random.uniform(k, out_shape, minval=-1.0, maxval=1.0)) * bound_out
    c_out = jax.random.uniform(k_c, out_shape[1:], minval=-1.0, maxval=1.0) * bound_out
    expand = (slice(None),) + (None,) * len(out_shape)
    return ConvParams(kern * init_scale * mask[:, None, None], bias * mask * float(s.bias), a * mask[expand],
                      c_out * float(s.bias))


def trainable(s: Static, mask: jax.Array) -> ConvParams:
    expand = (slice(None), None) if s.n_classes == 2 else (slice(None), None, None)
    return ConvParams(mask[:, None, None], mask * float(s.bias), mask[expand],
                      jnp.asarray(float(s.bias)) if s.n_classes == 2 else jnp.full((s.n_classes,), float(s.bias)))


def patch_index(border: int) -> np.ndarray:
    """(S^2, 9): for each pixel of the S x S picture (row-major), the input index of each of its 3 x 3
    neighbours (row-major, as the kernel), or d (a zero appended to the input) outside the picture."""
    order = raster(border)
    side = side_of(len(order))
    img = np.full((side + 2, side + 2), len(order), dtype=np.int32)
    img[1:-1, 1:-1] = order.reshape(side, side)
    return np.stack([img[i:i + side, j:j + side].reshape(-1) for i in range(KERNEL) for j in range(KERNEL)],
                    axis=1)


def patches(x: jax.Array, border: int) -> jax.Array:
    """Every pixel's 3 x 3 neighbourhood, (n, S^2, 9) (zero padding): one static gather of the input."""
    x_ext = jnp.concatenate([x, jnp.zeros((x.shape[0], 1), x.dtype)], axis=1)
    return x_ext[:, patch_index(border)]


def pre_activations(p: ConvParams, x: jax.Array, border: int, conv: str | None = None,
                    x_patches: jax.Array | None = None) -> jax.Array:
    """The filters' pre-activations (n, S, S, C) on inputs `x` (n, d): a "SAME" 3 x 3
    cross-correlation, as `lax.conv_general_dilated` (`conv = "lax"`) or as one matrix product of
    the input's patches with the flattened filters (`"patches"`; `x_patches` if precomputed)."""
    conv = conv or CONV
    n, side = x.shape[0], side_of(x.shape[1])
    if conv == "lax":
        img = x[:, raster(border)].reshape(n, 1, side, side)
        out = jax.lax.conv_general_dilated(img, p.k[:, None], (1, 1), "SAME",
                                           dimension_numbers=("NCHW", "OIHW", "NHWC"))
    else:
        xp = patches(x, border) if x_patches is None else x_patches
        out = (xp @ p.k.reshape(p.k.shape[0], -1).T).reshape(n, side, side, -1)
    return out + p.b


def logits(p: ConvParams, x: jax.Array, activation: str, slope: jax.Array, mask: jax.Array, border: int,
           conv: str | None = None, x_patches: jax.Array | None = None):
    """The network's output: (n,) for two classes, (n, K) for K."""
    pre = pre_activations(p, x, border, conv, x_patches)
    n, side, _, c = pre.shape
    h = activate(pre, activation, slope) * mask
    pooled = h.reshape(n, side // 2, 2, side // 2, 2, c).mean(axis=(2, 4)).reshape(n, -1, c)
    if p.a.ndim == 2:
        return jnp.einsum("npc,cp->n", pooled, p.a) + p.c
    return jnp.einsum("npc,cpk->nk", pooled, p.a) + p.c


def patch_projections(k: jax.Array, bg_train: jax.Array) -> jax.Array:
    """Each filter's projection on the unit uniform patch, signed as the training border's mean, (C,)."""
    return mean_sign(bg_train) * jnp.sum(k, axis=(1, 2)) / KERNEL


def conv_ratio(dk: jax.Array, mean_patches: jax.Array, mask: jax.Array) -> jax.Array:
    """`contamination_ratio` of the learned filters dk = K - K(0), (C, 3, 3): every filter c at every
    position p of the S x S picture is a unit with the linear response <dk_c, patch_p(x)> (the
    learned part of its pre-activation). `mean_patches` (1 + K, S^2, 9) are the patches of the
    training border's mean image (border pixels at the training mean, digit pixels 0) and of the
    K class-mean digit images (digit pixels only); the ratio is sum_(c,p) |B_cp| / sum_(c,p) C_cp as
    for the MLP's first layer (`metrics.response_ratio`), NaN at step 0."""
    resp = mean_patches @ dk.reshape(dk.shape[0], -1).T  # (1 + K, S^2, C)
    units = jnp.broadcast_to(mask, resp.shape[1:]).reshape(-1)
    return response_ratio(resp[0].reshape(-1), resp[1:].reshape(resp.shape[0] - 1, -1).T, units)


def cnn_training(s: Static, traced: Traced) -> Training:
    """One CNN classifier run as a `Training` (step, initial carry, measure)."""
    setup = prepare(s, traced)
    data, mask, sizes = setup.data, setup.mask, setup.sizes
    init_key = run_key(traced.init_key)
    params = init_conv(init_key, s, traced.true_width, traced.init_scale)
    slope, bg_train, bg_ood = traced.leaky_slope, traced.bg_train, traced.bg_ood
    act = s.activation

    def f(p, x, x_patches=None):
        return logits(p, x, act, slope, mask, s.border, x_patches=x_patches)

    p0 = patch_projections(params.k, bg_train)
    scale0 = jnp.sqrt(masked_mean(jnp.sum(params.k ** 2, axis=(1, 2)), mask))  # RMS step-0 filter norm
    border_u = bg_direction(data.M, s.core_dim, sizes.bg, bg_train)[None, :]  # the border's one direction
    bg_mean, class_means, _ = input_means(data.M, s.core_dim, bg_train, data.train, n_classes=s.n_classes,
                                          dataset=s.dataset)
    mean_patches = patches(jnp.concatenate([bg_mean[None, :], class_means]), s.border)

    def split_metrics(p, split):
        return output_metrics(f(p, split.x), split, s.loss)

    def measure(p: ConvParams) -> dict:
        train_loss, _, _ = split_metrics(p, data.train)
        id_loss, id_acc, id_margin = split_metrics(p, data.test)
        ood_loss, ood_acc, ood_margin = jax.vmap(lambda rng: split_metrics(p, ood_split(data, s.core_dim, sizes,
                                                                                        rng)))(bg_ood)
        proj = patch_projections(p.k, bg_train)
        delta = (range_mean(bg_ood) - range_mean(bg_train)) * KERNEL * mean_sign(bg_train)
        out = {"train_loss": train_loss, "id_loss": id_loss, "id_acc": id_acc, "ood_loss": ood_loss,
               "ood_acc": ood_acc, "id_margin": id_margin, "ood_margin": ood_margin,
               "bg_mean_proj": masked_mean(proj, mask),
               "bg_shift_rms": jax.vmap(lambda dl: jnp.sqrt(masked_mean(((proj - p0) * dl) ** 2, mask)))(delta),
               **contamination_count(proj, scale0, mask),
               "bg_grad_share": gradient_share(lambda x: f(p, x), data.test, s.loss, border_u),
               "contamination_ratio": conv_ratio(p.k - params.k, mean_patches, mask)}
        return {k: jnp.broadcast_to(out[k], (s.n_evals,)) for k in CNN_METRICS}

    full_batch = s.full_batch
    # The full training set is the batch of every step: its patches are gathered once, outside the loop.
    train_patches = patches(data.train.x, s.border) if full_batch and CONV == "patches" else None

    def objective(p, batch):
        return masked_mean(loss_values(f(p, batch.x, train_patches), batch.y, s.loss), batch.mask)

    def final(p: ConvParams):
        # the critical shift and its curve; the mean-direction ablation is the MLP's only (NaN here)
        return shift_metrics(p, None, lambda q, split, _: split_metrics(q, split)[:2], data, core_dim=s.core_dim,
                             sizes=sizes, bg_train=bg_train, bg_ood=bg_ood, critical_level=traced.critical_level,
                             shift_range=traced.shift_range, n_classes=s.n_classes)

    tx = make_optimizer(s.optimizer, traced.lr, traced.weight_decay, traced.momentum,
                        traced.warmup_steps)
    step = make_step(objective, tx, trainable(s, mask), make_get_batch(s, setup, bg_train))
    return Training(step, init_carry(params, tx), measure, final=final)
