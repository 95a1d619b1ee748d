"""Named presets: field values over `Config`'s defaults (`--preset`, a grid's `preset = ...`)."""

from __future__ import annotations

from typing import Any

from .config import Config, ConfigError, from_dict, suggest

PRESETS: dict[str, dict[str, Any]] = {
    # The reference script's defaults: non-linear core, logistic loss, AdamW, full batch.
    "toy": {},
    # The reference script's theory-matching variant: hinge, SGD (momentum 0.9), linear
    # core, output layer frozen at +1/m (first half) and -1/m (second half).
    "toy_theory": {"loss": "hinge", "optimizer": "sgd", "core": "linear", "output": "frozen_half"},
    # The paper's own setting (Theorems 1-4): online SGD without momentum, no biases,
    # N(0, 1/d) init, frozen random output signs +-1/m, hinge loss, linear core, weight
    # decay on W (the only trainable tensor). Sizes sit inside the theory's regime:
    # d0 = 16 and d = 1024 = d0^2.5, while width m = 256 >> d0. The per-neuron gradient
    # carries the 1/m of the output layer, so the time scales are T0 ~ m/(eta sqrt d) and
    # T1 ~ m/(eta d0): lr = 0.5 puts them at 16 and 32 steps, so the dynamics unfold over
    # hundreds of steps (bg_mean_proj reaches 90% of its final value after ~700 steps, the
    # ID hinge loss falls under 0.06 by ~1000; 40 logged points). The first round's lr = 8
    # ended them within the first two steps. lambda = 1e-3 is well under d0/m^1.01 ~ 0.06
    # and decays W by exp(-eta lambda t) = 0.37 over the 2000 steps: checks of cancellation
    # (linear network) set weight_decay = 0.
    "theory": {
        "width": 256, "core_dim": 8, "bg_dim": 8, "input_dim": 1024, "core": "linear",
        "n_train": 1000, "n_test": 1000, "batch_size": 64, "online": True,
        "bias": False, "output": "frozen_random", "init": "theory", "loss": "hinge",
        "optimizer": "sgd", "momentum": 0.0, "lr": 0.5, "weight_decay": 1e-3,
        "steps": 2000, "log_every": 50,
    },
    # Representation distillation, simulated (docs/distillation.md; contamination/distill.py).
    # Teacher (`core`, constructed): phi_T(x) = ReLU(W_T x + b_T), rep_dim = 64 units whose rows
    # lie in the core subspace, so it cannot see the background; biases 2 * N(0, 1) spreads (without
    # them, teacher_bias = 0, the student needs no offsets and is barely contaminated). The
    # `trained` teacher is learned instead: a ReLU network of width rep_dim trained on the
    # labels from the core coordinates only. Student: the config's two-layer network with a
    # linear read-out to R^rep_dim, trained by Adam (lr 1e-3, no weight decay) on the MSE to
    # phi_T over ID inputs, no labels; ridge probes on ID labels read both representations.
    # Reference data (non-linear core, 32 + 32 features in d = 256; n = 1000 points for the
    # probes and the training-set metrics). The student trains on **fresh batches** of 512 ID
    # inputs each step (`online`), the population setting of the theory: on a fixed training
    # set a student also fails OOD by fitting sample noise through background coordinates
    # (over-fitting, not contamination; `--set online=false --set batch_size=0` is that
    # control, `distill_controls` separates the two).
    # The teacher's biases are in units of each unit's pre-activation spread (`teacher_bias_unit =
    # "spread"`): 2 spreads is about the first rounds' absolute 3 on the non-linear core
    # (whose units' pre-activations have a standard deviation of ~1.55), and means the same share
    # of a unit's range on the linear core, whose spread grows with core_dim (1.5 at 8, 2.7 at 32).
    # A `trained` or `standard` teacher trains in the student's batch mode (`teacher_data =
    # "student"`), so the effective-robustness baseline sees data as the students do.
    "distill": {
        "experiment": "distill", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
        "online": True, "batch_size": 512, "steps": 5000, "log_every": 500,
        "teacher_bias": 2.0, "teacher_bias_unit": "spread", "teacher_data": "student",
    },
    # Real digits (contamination/digits.py): scikit-learn's 1,797 8x8 digits, 10 classes, each
    # framed by a 2-pixel border whose intensity is drawn per image from U[0, 1] (mean 0.5,
    # independent of the label); OOD borders U[-1, 0]. A stratified split of 1,200 training and
    # 597 test digits per seed; the `toy` network and optimizer (width 128, AdamW lr 1e-3, full
    # batch), 2000 steps.
    "digits": {
        "dataset": "digits", "n_classes": 10, "border": 2, "width": 128, "n_train": 1200, "n_test": 597,
        "steps": 2000, "log_every": 100,
    },
    # Distillation on real digits (contamination/distill.py with dataset = "digits"): the binary
    # pair 3 vs 8 (357 digits: 250 train, 107 test per seed), each framed by a 2-pixel border of
    # intensity U[0, 1] per image (OOD U[-1, 0]). The teacher (`trained`) is a ReLU network of
    # width rep_dim = 64 trained on the labels from the 64 digit pixels only, so the border cannot
    # move it; the student (width 128) sees the bordered image and is trained by Adam (lr 1e-3, no
    # weight decay, full batch on the training digits) on the MSE to the teacher's representation.
    # The digits are a finite set, so there are no fresh batches: the zero-mean border moved by
    # the same OOD shift is the control for over-fitting (grid digits_distill).
    "digits_distill": {
        "experiment": "distill", "dataset": "digits", "digit_classes": [3, 8], "n_classes": 2, "border": 2,
        "teacher": "trained", "rep_dim": 64, "width": 128, "n_train": 250, "n_test": 107,
        "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "steps": 2000, "log_every": 200,
    },
}


def preset(name: str, **overrides: Any) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'{suggest(name, PRESETS)}; allowed: {', '.join(PRESETS)}")
    return from_dict({**PRESETS[name], **overrides})
