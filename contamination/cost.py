"""Static cost model of one run: FLOPs and peak memory, from its static spec alone."""

from __future__ import annotations

from .cnn import side_of
from .config import log_steps
from .spec import Static
from .distill import DISTILL_METRICS
from .metrics import METRICS

F32 = 4


def deep_products(s: Static) -> tuple[int, int]:
    """sum over layers 2..L of m_l m_(l-1), and the extra output units past one (K > 2 logits)."""
    widths = (s.width, *s.hidden)
    return sum(a * b for a, b in zip(widths[1:], widths[:-1])), (s.n_classes if s.n_classes > 2 else 1) - 1


def trains_teacher(s: Static) -> bool:
    """Whether a run trains a distillation teacher first (`trained` on the core, `standard` on the
    whole input: `distill.trained_teacher`), for `teacher_steps` steps."""
    return s.experiment == "distill" and s.teacher in ("trained", "standard")


def step_flops(s: Static) -> float:
    """FLOPs of one classifier training step (checked against XLA's cost analysis in the tests)."""
    d0, d, m = s.core_dim + s.bg_dim, s.input_dim, s.width
    nb = s.batch_size or s.n_train
    if s.model == "cnn":
        return cnn_step_flops(s, nb)
    mm, extra_out = deep_products(s)
    units = sum(s.hidden)
    # forward x W^T (2ndm) and the weight gradient dpre^T x (2ndm); no gradient flows to the data
    step = 4 * nb * d * m + 12 * nb * m + 10 * m * d
    # deeper layers: forward, weight and input gradients (6 n m_l m_(l-1)), elementwise, updates
    step += 6 * nb * mm + 12 * nb * units + 10 * mm
    # K logits: the read-out's three products and the softmax
    step += 6 * nb * s.width_last * extra_out + 10 * nb * (extra_out + 1) * (extra_out > 0)
    if s.online:
        step += 2 * nb * d0 * d  # a fresh batch each step
    return float(step)


def cnn_step_flops(s: Static, nb: int) -> float:
    """FLOPs of one CNN training step (`contamination/cnn.py`) on `nb` samples: per pixel and filter
    the 3 x 3 product forward and its weight gradient (4 x 9) and about 12 elementwise operations
    (bias, activation and its derivative, pooling and back); the read-out's three products over the
    pooled positions; the updates. Within 1% of XLA's count (tests/test_cost.py)."""
    side = side_of(s.input_dim)
    pixels, pooled = side ** 2, (side // 2) ** 2
    outputs = s.n_classes if s.n_classes > 2 else 1
    return float(nb * pixels * s.width * 48 + 6 * nb * pooled * s.width * outputs + 10 * s.width * (9 + pooled * outputs))


def flops(s: Static) -> float:
    """Floating-point operations of one run (matmuls of training, data generation and metrics)."""
    d0, d, m = s.core_dim + s.bg_dim, s.input_dim, s.width
    nb = s.batch_size or s.n_train
    n_eval = s.n_train + (1 + s.n_evals) * s.n_test  # the OOD set once per evaluation variant
    step = step_flops(s)
    mm, extra_out = deep_products(s)
    if s.model == "cnn":  # forward passes on every set, and the input gradient on the test set
        log = (n_eval + 2 * s.n_test) * cnn_step_flops(s, 1) / 2
    else:
        log = 2 * n_eval * d * m + 2 * m * d * d0 + 8 * n_eval * m
        # deeper layers and K logits on every set; the gradient balance backpropagates on the training set
        log += 2 * n_eval * (mm + s.width_last * extra_out) + 8 * n_eval * sum(s.hidden)
        if s.hidden or extra_out:
            log += 4 * s.n_train * (mm + s.width_last * (extra_out + 1))
    setup = 2 * n_eval * d0 * d + 4 * d * d0 * d0
    if s.experiment == "distill":
        p = s.rep_dim
        # the read-out (forward and backward), the teacher's targets of a fresh batch
        step += 6 * nb * m * p + (2 * nb * d * p if s.batch_size else 0)
        # student read-out on the three sets, the student's ridge probe (p x p solve)
        log += 2 * n_eval * m * p + 2 * s.n_train * p * p + p ** 3
        setup += 2 * n_eval * d * p + 2 * s.n_train * p * p + p ** 3  # teacher reps and probe
        if trains_teacher(s):  # forward, weight gradient and update of the teacher's first layer
            setup += s.teacher_steps * 6 * s.n_train * (s.input_dim if s.teacher == "standard" else s.core_dim) * p
    return float(s.steps * step + len(log_steps(s.steps, s.log_every, s.log_schedule)) * log + setup)


def memory_bytes(s: Static) -> int:
    """Estimated peak bytes one run holds on a device (data, parameters, optimizer, activations).

    Fitted to XLA's buffer assignment (`memory_analysis()` of compiled chunks) over the
    reference sizes varied one at a time (n_train, n_test, width, input_dim, batch, optimizer;
    `tests/test_cost.py` checks it within 25%). XLA reuses buffers between the training step
    and the metrics, so the activation term is one term over the evaluation sets rather than a
    sum of the step's and the metrics' tensors; with online batches they overlap less. Refitted
    with the gate metrics (gates and per-sample gradients on the training set).
    """
    d0, d = s.core_dim + s.bg_dim, s.input_dim
    # deeper layers count as more units (their activations) and their weights as parameters
    # (a deeper layer's activations weigh 0.4 of the first's: XLA frees them sooner; fitted)
    m = s.width + 0.4 * sum(s.hidden)
    mm, extra_out = deep_products(s)
    nb = s.batch_size or s.n_train
    full_batch = s.full_batch
    n_eval = s.n_train + (1 + s.n_evals) * s.n_test
    # the three sets and the dictionary; full batch: the training inputs transposed (train.py)
    data = n_eval * d + d0 * d + (s.n_train * d if full_batch else nb * d)
    params = s.width * d + 3 * (s.width + sum(s.hidden)) + 1 + mm + s.width_last * extra_out
    opt_copies = {"sgd": 1, "adam": 2, "adamw": 2}[s.optimizer]
    param_mem = params * (1 + opt_copies)
    minibatch = s.minibatches
    # (full batch: + 0.25 for the classifier's gates and per-sample gradients of bg_grad_balance)
    grad_balance = 0.25 if s.experiment == "classify" else 0.0
    if s.experiment == "distill":  # no classifier metrics on the training set
        acts = 1.5 * n_eval * m if full_batch else 1.2 * n_eval * m + 2 * nb * m
    elif full_batch:
        acts = (1.5 + grad_balance) * n_eval * m
    else:
        acts = (1.8 if minibatch else 2.75) * n_eval * m + 2 * nb * m
    if s.hidden or extra_out:  # the gradient balance by autodiff on the training set
        acts += 2 * s.n_train * s.width
    # the critical shift (shift.py), at the end: a shifted copy of the test set, inputs and
    # activations (fitted to the XLA buffers like the rest)
    acts += s.n_test * (d + s.width)
    if s.experiment == "classify":  # the test-set metrics: the gate's class-pair statistics
        # and range, the learned weights' class responses (refitted: 4 activation-sized tensors)
        acts += 4 * s.n_test * m
    n_metrics = len(METRICS) + s.depth
    if s.experiment == "distill":
        p = s.rep_dim
        n_metrics = len(DISTILL_METRICS)
        param_mem += (p * m + p) * (1 + opt_copies) + p * d  # read-out, and the teacher
        acts += 2 * nb * p + 1.5 * n_eval * p + 3 * p * p  # teacher and student reps, probe
    curves = len(log_steps(s.steps, s.log_every, s.log_schedule)) * n_metrics * s.n_evals
    return int(F32 * (data + param_mem + acts + curves))
