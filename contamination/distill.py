"""Representation distillation, simulated (docs/distillation.md), as one pure function per run.

- Teacher `phi_T(x) = ReLU(W_T x + b_T)`, `rep_dim` units whose weight rows lie in the core
  subspace, so no background shift can move it. `teacher = "core"`: constructed, rows
  `g_i @ M_core` with `g_i ~ N(0, I_core_dim)`, biases `teacher_bias * N(0, 1)`, times each
  unit's pre-activation spread with `teacher_bias_unit = "spread"` (a teacher without offsets
  barely contaminates its student; docs/distillation.md). `teacher = "trained"`: learned, the
  hidden layer of a two-layer ReLU network of width `rep_dim` trained on the labels from the
  core coordinates `<x, m_j>` (j in core) only, i.e. with the background projected out
  (full batch on the training set, or with `teacher_data = "student"` the student's batch mode;
  the config's optimizer, loss, weight decay and momentum,
  at `teacher_lr` for `teacher_steps` steps; PyTorch-default init, biases if `bias`).
  `teacher = "linear"`: the `core` teacher without the ReLU, `W_T x + b_T`, which a linear
  student can represent exactly (with a linear core its probe reads the labels): the linear
  student is then a control for the probe as well as for the error ratio.
  `teacher = "standard"`: not OOD-robust by construction, the effective-robustness baseline:
  trained as `trained` but on the whole input, background included (any network trained on the
  labels); its probe accuracies, over widths (`rep_dim`) and `teacher_steps`, give the line of
  OOD against ID accuracy that standard training follows.
- Student `phi_S(x) = V act(W x + b) + c`: the config's two-layer network (width, activation,
  init, biases) with a linear read-out `V` (rep_dim x width) in place of the scalar output,
  random init, trained on ID inputs only (the config's batch mode and optimizer) to minimise
  the mean squared error to `phi_T(x)`. No labels. `activation = "linear"` is the control.
  The contamination metrics (core_norm, bg_norm, bg_signed, act_asym, bg_mean_proj, bg_shift_rms,
  contaminated_frac, contamination_sign, contamination_ratio) are measured on `W`; bg_grad_balance is the classifier's only (it needs labels' loss).
- Probes: closed-form ridge regression on +-1 ID training labels (with intercept) on top of
  each representation, evaluated by accuracy on the ID test set and the paired OOD set.

On real digits (`dataset = "digits"`, a digit pair) the dictionary is the standard basis with the
64 digit pixels as the core: a `core` or `trained` teacher sees the digit only, the student the
bordered image, and the OOD sets redraw the border (docs/real-data.md).

`distill_training(static, traced)` builds one run as a `loop.Training` (the `distill`
experiment of `experiments/distill.py`); a teacher that diverged voids the run. Padding is exact as the classifier's: padded neurons have zero first-layer
rows and read-out columns, are masked and never train; padded samples and features are
masked out of every mean. Each evaluation variant (`bg_ood`, `probe_ridge`) gets its own OOD
set and probes; the student trains once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .numerics import float_dtype

from .spec import Static, Traced
from .data import Data, first, minibatch, online_batch, ood_split, per_row
from .metrics import (activation_asymmetry, masked_mean, mean_direction_metrics, projection_metrics,
                      reference)
from .model import Params, activate, forward, init_params, loss_values
from .experiments.distill import METRICS as DISTILL_METRICS, trains_teacher
from .shift import SHIFT_METRICS, ablate, shift_metrics
from . import cost
from .loop import Training, init_carry, make_optimizer, make_step, train_for
from .setup import make_get_batch, prepare, run_key

# fold_in constants: one stream per purpose, derived from the run's data or init key.
TEACHER_STREAM = 1001
READOUT_STREAM = 1002
TEACHER_BATCH_STREAM = 1003


class Teacher(NamedTuple):
    w: jax.Array  # (rep_dim, d), rows in the core subspace
    b: jax.Array  # (rep_dim,)


class Student(NamedTuple):
    w: jax.Array  # (m, d) first layer
    b: jax.Array  # (m,) first-layer bias
    v: jax.Array  # (rep_dim, m) linear read-out
    c: jax.Array  # (rep_dim,) read-out bias


def teacher_rep(t: Teacher, x: jax.Array, linear: bool = False) -> jax.Array:
    """phi_T(x) = ReLU(W_T x + b_T), or W_T x + b_T for the `linear` teacher."""
    pre = x @ t.w.T + t.b
    return pre if linear else jax.nn.relu(pre)


def student_rep(p: Student, x: jax.Array, activation: str, slope: jax.Array, mask: jax.Array):
    """The student's representation (n, rep_dim) and its first-layer pre-activations (n, m)."""
    pre = x @ p.w.T + p.b
    return (activate(pre, activation, slope) * mask) @ p.v.T + p.c, pre


def core_teacher(key: jax.Array, M: jax.Array, core_dim: int, true_core: jax.Array, rep_dim: int,
                 bias_scale: jax.Array, train=None) -> Teacher:
    """Rows `g_i @ M_core` and biases `bias_scale * n_i`, `g_i ~ N(0, I)`, `n_i ~ N(0, 1)`, drawn
    per unit (a wider teacher extends a narrower one).

    With `train` (a Split: `teacher_bias_unit = "spread"`) the bias is in units of each unit's
    spread: `bias_scale * n_i * sd_i`, sd_i the standard deviation of `<w_i, x>` over the rows of
    `train` (the ID training inputs), so a scale means the same share of a unit's range at every
    core type and dimension. The draws are the same as without it.
    """
    k_g, k_n = jax.random.split(key)
    g = per_row(k_g, rep_dim, lambda k: jax.random.normal(k, (core_dim,))) * first(core_dim, true_core)
    n = per_row(k_n, rep_dim, lambda k: jax.random.normal(k, ()))
    w = g @ M[:core_dim]
    if train is None:
        return Teacher(w, bias_scale * n)
    return Teacher(w, bias_scale * n * pre_activation_spread(w, train))


def pre_activation_spread(w: jax.Array, split) -> jax.Array:
    """Each unit's standard deviation of `<w_i, x>` over the (masked) rows of `split`: (rep_dim,)."""
    pre = split.x @ w.T
    n = jnp.sum(split.mask)
    mu = split.mask @ pre / n
    return jnp.sqrt(split.mask @ (pre - mu) ** 2 / n)


def trained_teacher(key: jax.Array, s: Static, data: Data, sizes, traced: Traced):
    """A ReLU network of width rep_dim trained on the labels; its hidden layer.

    `trained`: from the core coordinates only (the background projected out), so it cannot see
    the background. `standard`: from the whole input, background included, as any network
    trained on the labels (the effective-robustness baseline). Returns the teacher and whether
    its training diverged.
    """
    if s.teacher == "standard":
        basis, n_in, true_in = jnp.eye(s.input_dim), s.input_dim, sizes.d
    else:
        basis, n_in, true_in = data.M[: s.core_dim], s.core_dim, sizes.core
    z = data.train.x @ basis.T  # the inputs in the teacher's coordinates
    rep = s.rep_dim
    params = init_params(key, rep, n_in, jnp.int32(rep), true_in, init="torch", output="train",
                         bias=s.bias, init_scale=jnp.asarray(1.0, float_dtype()))
    trainable = Params(w=jnp.ones((rep, 1)), b=jnp.full((rep,), float(s.bias)), a=jnp.ones((rep,)),
                       c=jnp.asarray(float(s.bias)))
    tx = make_optimizer(s.optimizer, traced.teacher_lr, traced.weight_decay, traced.momentum)
    ones = jnp.ones((rep,))

    def objective(p, batch):
        f, _ = forward(p, batch[0], "relu", jnp.zeros((), float_dtype()), ones)
        return masked_mean(loss_values(f, batch[1], s.loss), batch[2])

    if s.teacher_data == "student" and (s.online or s.batch_size):
        # The student's batch mode (fresh batches or minibatches of the fixed set), on a stream
        # of its own: the baseline trains as the students it is compared with.
        k_batch = jax.random.fold_in(key, TEACHER_BATCH_STREAM)

        def get_batch(t):
            if s.online:
                b = online_batch(k_batch, t, data.M, s.batch_size, s.core_dim, s.core, sizes, traced.bg_train)
            else:
                b = minibatch(k_batch, t, data.train, s.batch_size)
            return b.x @ basis.T, b.y, b.mask
    else:
        def get_batch(t):
            return z, data.train.y, data.train.mask

    step = make_step(objective, tx, trainable, get_batch)

    def own_steps_only(carry, x):
        # A program padded to more teacher steps than the run's own: the steps past them leave
        # the carry (parameters, optimizer state, step, divergence flag) exactly as it was.
        new, _ = step(carry, x)
        live = carry.step < traced.true_teacher_steps
        return jax.tree_util.tree_map(lambda old, upd: jnp.where(live, upd, old), carry, new), None

    carry = train_for(own_steps_only, init_carry(params, tx), s.teacher_steps)
    p = carry.params
    return Teacher(p.w @ basis, p.b), carry.diverged


def init_student(key: jax.Array, s: Static, true_width: jax.Array, true_d: jax.Array, mask: jax.Array,
                 init_scale: jax.Array) -> Student:
    """First layer exactly as the classifier's (`model.init_params`); read-out per neuron.

    Read-out: `torch`, U(+-1/sqrt(m)) for V and c (PyTorch's Linear(m, rep_dim)); `theory`,
    V ~ N(0, 1/m) and c = 0. m is the true width.
    """
    layer = init_params(key, s.width, s.input_dim, true_width, true_d, init=s.init, output="train", bias=s.bias,
                        init_scale=init_scale)
    k_v, k_c = jax.random.split(jax.random.fold_in(key, READOUT_STREAM))
    inv_sqrt_m = 1.0 / jnp.sqrt(true_width.astype(float_dtype()))
    if s.init == "torch":
        v = per_row(k_v, s.width, lambda k: jax.random.uniform(k, (s.rep_dim,), minval=-1.0, maxval=1.0)).T
        c = jax.random.uniform(k_c, (s.rep_dim,), minval=-1.0, maxval=1.0) * inv_sqrt_m
    else:
        v = per_row(k_v, s.width, lambda k: jax.random.normal(k, (s.rep_dim,))).T
        c = jnp.zeros((s.rep_dim,))
    v = v * inv_sqrt_m * mask[None, :]
    return Student(layer.w, layer.b, v, c if s.bias else jnp.zeros((s.rep_dim,)))


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """Solve `a x = b` for a symmetric positive definite `a` by Cholesky, in plain JAX ops.

    Not `jnp.linalg.solve`: vmapped, it becomes a batched LAPACK call that, on a CPU with few
    cores, can deadlock XLA's thread pool when two such calls run at once (seen on 2 cores).
    """
    p = a.shape[0]
    idx = jnp.arange(p)

    def column(j, low):  # column j of the Cholesky factor; columns < j are done
        lj = low[j]
        d = jnp.sqrt(a[j, j] - lj @ lj)
        col = jnp.where(idx > j, (a[:, j] - low @ lj) / d, 0.0)
        return low.at[:, j].set(col.at[j].set(d))

    low = jax.lax.fori_loop(0, p, column, jnp.zeros_like(a))

    def fwd_sub(i, z):  # low z = b
        return z.at[i].set((b[i] - low[i] @ z) / low[i, i])

    def back_sub(k, x):  # low^T x = z
        i = p - 1 - k
        return x.at[i].set((z[i] - low[:, i] @ x) / low[i, i])

    z = jax.lax.fori_loop(0, p, fwd_sub, jnp.zeros_like(b))
    return jax.lax.fori_loop(0, p, back_sub, jnp.zeros_like(b))


def ridge_probe(h: jax.Array, y: jax.Array, mask: jax.Array, ridge: jax.Array):
    """Least squares of +-1 labels on features `h` (n, p) with an unpenalised intercept, over the
    rows where `mask` is 1.

    The ridge is relative: `ridge * trace(C) / p` for the feature covariance C, so it does not
    depend on the representation's scale.
    """
    p = h.shape[1]
    n = jnp.sum(mask)
    mu = mask @ h / n
    hc = (h - mu) * mask[:, None]
    ybar = mask @ y / n
    cov = hc.T @ hc / n
    lam = ridge * jnp.trace(cov) / p + 1e-12
    w = spd_solve(cov + lam * jnp.eye(p), hc.T @ (y - ybar) / n)
    return w, ybar - mu @ w


def probe_accuracy(probe, h: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    w, b = probe
    return masked_mean(y * (h @ w + b) > 0, mask)


class TeacherSide(NamedTuple):
    """A distillation run's teacher and what the student is measured against: its representations
    of the training, ID and OOD sets (one per evaluation variant), their ID variance, and the
    teacher's own probe accuracies and projections."""

    teacher: Any
    diverged: jax.Array
    linear: bool
    oods: jax.Array  # (n_evals, n_test, d): the OOD inputs of each variant
    train: jax.Array
    id: jax.Array
    ood: jax.Array
    var: jax.Array
    probe_id: jax.Array
    probe_ood: jax.Array
    proj: dict


def teacher_side(s: Static, traced: Traced, setup) -> TeacherSide:
    """The teacher (constructed or trained) of one run and its side of the measurements."""
    data, sizes = setup.data, setup.sizes
    k_teacher = jax.random.fold_in(run_key(traced.data_key), TEACHER_STREAM)
    if s.teacher in ("core", "linear"):
        teacher = core_teacher(k_teacher, data.M, s.core_dim, sizes.core, s.rep_dim, traced.teacher_bias,
                               train=data.train if s.teacher_bias_unit == "spread" else None)
        teacher_diverged = jnp.bool_(False)
    else:
        teacher, teacher_diverged = trained_teacher(k_teacher, s, data, sizes, traced)
    linear_teacher = s.teacher == "linear"
    train, test = data.train, data.test
    # One OOD set per evaluation variant; the teacher's representations of every set, once.
    oods = jax.vmap(lambda rng: ood_split(data, s.core_dim, sizes, rng).x)(traced.bg_ood)
    t_train, t_id = teacher_rep(teacher, train.x, linear_teacher), teacher_rep(teacher, test.x, linear_teacher)
    t_oods = jax.vmap(lambda x: teacher_rep(teacher, x, linear_teacher))(oods)
    t_var = masked_mean(jnp.sum((t_id - test.mask @ t_id / jnp.sum(test.mask)) ** 2, axis=1), test.mask)

    def teacher_probe(ridge, t_ood):
        probe = ridge_probe(t_train, train.y, train.mask, ridge)
        return probe_accuracy(probe, t_id, test.y, test.mask), probe_accuracy(probe, t_ood, test.y, test.mask)

    t_probe_id, t_probe_ood = jax.vmap(teacher_probe)(traced.probe_ridge, t_oods)
    t_proj = projection_metrics(teacher.w, data.M, s.core_dim, jnp.ones((s.rep_dim,)), sizes.bg)
    return TeacherSide(teacher, teacher_diverged, linear_teacher, oods, t_train, t_id, t_oods, t_var,
                       t_probe_id, t_probe_ood, t_proj)


def student_measure(s: Static, traced: Traced, setup, ts: TeacherSide, ref):
    """`measure(student) -> {metric: (n_evals,)}`: the student's representation error against its
    teacher (relative to the teacher's ID variance), its probe's accuracies, its projections."""
    data, mask, sizes, slope = setup.data, setup.mask, setup.sizes, traced.leaky_slope
    train, test = data.train, data.test

    def rel_err(h, target, rows):
        return masked_mean(jnp.sum((h - target) ** 2, axis=1), rows) / ts.var

    def measure(p: Student) -> dict:
        h_train, _ = student_rep(p, train.x, s.activation, slope, mask)
        h_id, pre = student_rep(p, test.x, s.activation, slope, mask)

        def variant(ridge, x_ood, t_ood):
            h_ood, _ = student_rep(p, x_ood, s.activation, slope, mask)
            probe = ridge_probe(h_train, train.y, train.mask, ridge)
            return (rel_err(h_ood, t_ood, test.mask), probe_accuracy(probe, h_id, test.y, test.mask),
                    probe_accuracy(probe, h_ood, test.y, test.mask))

        err_ood, probe_id, probe_ood = jax.vmap(variant)(traced.probe_ridge, ts.oods, ts.ood)
        out = {
            "student_rep_err_train": rel_err(h_train, ts.train, train.mask),
            "student_rep_err_id": rel_err(h_id, ts.id, test.mask),
            "student_rep_err_ood": err_ood,
            "student_probe_id_acc": probe_id,
            "student_probe_ood_acc": probe_ood,
            "teacher_probe_id_acc": ts.probe_id,
            "teacher_probe_ood_acc": ts.probe_ood,
            "act_asym": activation_asymmetry(pre, test.y, mask, s.activation, slope),
            **projection_metrics(p.w, data.M, s.core_dim, mask, sizes.bg, ref),
            **mean_direction_metrics(p.w, ref, mask, sizes.bg, traced.bg_train, traced.bg_ood),
            "teacher_core_norm": ts.proj["core_norm"],
            "teacher_bg_norm": ts.proj["bg_norm"],
        }
        return {k: jnp.broadcast_to(out[k], (s.n_evals,)) for k in DISTILL_METRICS}

    return measure


def distill_training(static: Static, traced: Traced) -> Training:
    """One distillation run: the teacher (`teacher_side`), the student's step, carry and measure."""
    s = static
    setup = prepare(s, traced)
    data, mask, sizes = setup.data, setup.mask, setup.sizes
    slope = traced.leaky_slope
    ts = teacher_side(s, traced, setup)
    teacher, linear_teacher, t_train = ts.teacher, ts.linear, ts.train
    student = init_student(run_key(traced.init_key), s, traced.true_width, sizes.d, mask, traced.init_scale)
    # Same masks as the classifier's: padded neurons never train; biases only with `bias`.
    trainable = Student(w=mask[:, None], b=mask * float(s.bias), v=mask[None, :],
                        c=jnp.full((s.rep_dim,), float(s.bias)))
    train = data.train
    ref = reference(student.w, data.M, s.core_dim, sizes, traced.bg_train, mask, train, core=s.core,
                    dataset=s.dataset)
    u = ref.u
    measure = student_measure(s, traced, setup, ts, ref)

    def probe_on(p: Student, split, ridge):
        """The student's probe (refitted on its own training representation) on a split: its mean
        squared error on the +-1 labels (the probe's loss) and accuracy."""
        probe = ridge_probe(student_rep(p, train.x, s.activation, slope, mask)[0], train.y, train.mask, ridge)
        h, _ = student_rep(p, split.x, s.activation, slope, mask)
        w, b = probe
        return masked_mean((split.y - (h @ w + b)) ** 2, split.mask), probe_accuracy(probe, h, split.y, split.mask)

    def final(p: Student):
        # the critical shift of the student's probe, and of the student with its first layer's
        # component along the background mean removed (folded into its biases, as the classifier's)
        ablated = ablate(p, u, masked_mean(train.x @ u, train.mask), s.bias)
        return shift_metrics(p, ablated, probe_on, data, core_dim=s.core_dim, sizes=sizes,
                             bg_train=traced.bg_train, bg_ood=traced.bg_ood,
                             critical_level=traced.critical_level, shift_range=traced.shift_range,
                             n_classes=2, per_variant=traced.probe_ridge)

    get_batch = make_get_batch(s, setup, traced.bg_train)
    full_batch = s.full_batch

    def objective(p: Student, batch):
        # Full batch: the teacher's targets are the precomputed t_train.
        target = t_train if full_batch else teacher_rep(teacher, batch.x, linear_teacher)
        h, _ = student_rep(p, batch.x, s.activation, slope, mask)
        return masked_mean(jnp.mean((h - target) ** 2, axis=1), batch.mask)

    tx = make_optimizer(s.optimizer, traced.lr, traced.weight_decay, traced.momentum,
                        traced.warmup_steps)
    step = make_step(objective, tx, trainable, get_batch)
    # A diverged teacher (kept at its last finite parameters) voids the run: flagged at step 0.
    # `stop = "converged"` tracks the student's training error with bg_mean_proj (`stop = "id_loss"`
    # reads the declared fit metric, its ID representation error: experiments/distill.py).
    return Training(step, init_carry(student, tx), measure, void=ts.diverged, final=final,
                    tracked=("student_rep_err_train", "bg_mean_proj"))


def spec_metrics(s: Static) -> tuple[str, ...]:
    return SHIFT_METRICS


def flops(s: Static) -> float:
    """The student's network (`cost.network_flops`) and what distillation adds: the read-out, the
    teacher's targets, both ridge probes, and a trained teacher's steps."""
    d, m, p = s.input_dim, s.width, s.rep_dim
    nb = s.batch_size or s.n_train
    n_eval = cost.eval_rows(s)
    # the read-out (forward and backward), the teacher's targets of a fresh batch
    step = 6 * nb * m * p + (2 * nb * d * p if s.batch_size else 0)
    # student read-out on the three sets, the student's ridge probe (p x p solve)
    log = 2 * n_eval * m * p + 2 * s.n_train * p * p + p ** 3
    setup = 2 * n_eval * d * p + 2 * s.n_train * p * p + p ** 3  # teacher reps and probe
    if trains_teacher(s):  # forward, weight gradient and update of the teacher's first layer
        setup += s.teacher_steps * 6 * s.n_train * (s.input_dim if s.teacher == "standard" else s.core_dim) * p
    return cost.network_flops(s, step, log, setup)


def memory_bytes(s: Static) -> int:
    """The student's network (`cost.network_memory`) with no classifier metrics on the training
    set, its read-out and the teacher, their representations and the probe."""
    m, nb, n_eval, p = cost.units(s), s.batch_size or s.n_train, cost.eval_rows(s), s.rep_dim
    acts = 1.5 * n_eval * m if s.full_batch else 1.2 * n_eval * m + 2 * nb * m
    params = (p * m + p) * (1 + cost.optimizer_copies(s)) + p * s.input_dim  # read-out, and the teacher
    more_acts = 2 * nb * p + 1.5 * n_eval * p + 3 * p * p  # teacher and student reps, probe
    return cost.network_memory(s, acts, len(DISTILL_METRICS), more_acts, params)
