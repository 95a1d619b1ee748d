"""Static cost model of one run: FLOPs and peak memory, from its static spec alone: the network's
share every experiment builds on, and the dispatch to each experiment's own count."""

from __future__ import annotations

from . import experiments
from .cnn import side_of
from .config import log_steps
from .spec import Static
from .metrics import METRICS

F32 = 4


def deep_products(s: Static) -> tuple[int, int]:
    """sum over layers 2..L of m_l m_(l-1), and the extra output units past one (K > 2 logits)."""
    widths = (s.width, *s.hidden)
    return sum(a * b for a, b in zip(widths[1:], widths[:-1])), (s.n_classes if s.n_classes > 2 else 1) - 1


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


def eval_rows(s: Static) -> int:
    """Rows a run evaluates at each logged step: the training set, the ID test set and one OOD set per
    evaluation variant."""
    return s.n_train + (1 + s.n_evals) * s.n_test


def network_flops(s: Static, step: float = 0.0, log: float = 0.0, setup: float = 0.0) -> float:
    """Floating-point operations of one run of the classifier's network (matmuls of training, data
    generation and metrics), plus an experiment's own per `step`, per logged point (`log`) and once
    (`setup`)."""
    d0, d, m = s.core_dim + s.bg_dim, s.input_dim, s.width
    n_eval = eval_rows(s)  # the OOD set once per evaluation variant
    own_step, own_log, own_setup = step, log, setup
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
    step, log, setup = step + own_step, log + own_log, setup + own_setup
    return float(s.steps * step + len(log_steps(s.steps, s.log_every, s.log_schedule)) * log + setup)


def classifier_flops(s: Static) -> float:
    """The `classify` experiment's FLOPs: its network's."""
    return network_flops(s)


def flops(s: Static) -> float:
    """Floating-point operations of one run, as its experiment counts them."""
    return experiments.get(s.experiment).fn("flops")(s)


def units(s: Static) -> float:
    """The first layer's units, a deeper layer's counted as 0.4 of one (its activations: XLA frees
    them sooner; fitted)."""
    return s.width + 0.4 * sum(s.hidden)


def optimizer_copies(s: Static) -> int:
    return {"sgd": 1, "adam": 2, "adamw": 2}[s.optimizer]


def network_memory(s: Static, acts: float, n_metrics: int, more_acts: float = 0.0, more_params: float = 0.0) -> int:
    """Estimated peak bytes one run holds on a device (data, parameters, optimizer, activations):
    the classifier's network with an experiment's activations over the evaluation sets (`acts`,
    float32 words), its curves of `n_metrics` metrics, and its own further words.

    Fitted to XLA's buffer assignment (`memory_analysis()` of compiled chunks) over the
    reference sizes varied one at a time (n_train, n_test, width, input_dim, batch, optimizer;
    `tests/test_cost.py` checks it within 25%). XLA reuses buffers between the training step
    and the metrics, so the activation term is one term over the evaluation sets rather than a
    sum of the step's and the metrics' tensors; with online batches they overlap less.
    """
    d0, d = s.core_dim + s.bg_dim, s.input_dim
    mm, extra_out = deep_products(s)
    nb = s.batch_size or s.n_train
    # the three sets and the dictionary; full batch: the training inputs transposed (train.py)
    data = eval_rows(s) * d + d0 * d + (s.n_train * d if s.full_batch else nb * d)
    params = s.width * d + 3 * (s.width + sum(s.hidden)) + 1 + mm + s.width_last * extra_out
    param_mem = params * (1 + optimizer_copies(s)) + more_params
    if s.hidden or extra_out:  # the gradient balance by autodiff on the training set
        acts += 2 * s.n_train * s.width
    # the critical shift (shift.py), at the end: a shifted copy of the test set, inputs and
    # activations (fitted to the XLA buffers like the rest)
    acts += s.n_test * (d + s.width)
    acts += more_acts
    curves = len(log_steps(s.steps, s.log_every, s.log_schedule)) * n_metrics * s.n_evals
    return int(F32 * (data + param_mem + acts + curves))


def classifier_memory_bytes(s: Static) -> int:
    """The `classify` experiment's peak bytes: its network's activations over the evaluation sets
    (full batch: + 0.25 for the gates and per-sample gradients of bg_grad_balance on the training
    set), and the test-set metrics (the gate's class-pair statistics and range, the learned
    weights' class responses: 4 activation-sized tensors). Refitted with the gate metrics."""
    m, nb, n_eval = units(s), s.batch_size or s.n_train, eval_rows(s)
    if s.full_batch:
        acts = (1.5 + 0.25) * n_eval * m
    else:
        acts = (1.8 if s.minibatches else 2.75) * n_eval * m + 2 * nb * m
    return network_memory(s, acts, len(METRICS) + s.depth, 4 * s.n_test * m)


def memory_bytes(s: Static) -> int:
    """Estimated peak bytes one run holds on a device, as its experiment estimates them."""
    return experiments.get(s.experiment).fn("memory_bytes")(s)


def total_steps(s: Static) -> int:
    """Optimizer steps of one run: its own and its experiment's others (e.g. a teacher's)."""
    return s.steps + experiments.get(s.experiment).extra_steps(s)
