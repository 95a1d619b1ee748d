"""The `distill` experiment: a student trained on a teacher's representation, then both probed
(docs/distillation.md; the training is `contamination/distill.py`, the figures `analysis/distill.py`)."""

from __future__ import annotations

from ..fields import ConfigError, Field
from . import Experiment

F = Field
# The distillation fields: every one but the last two hashed into a distill run's ids whatever its
# value (they existed from its first run; `fields.Field.hashed`).
FIELDS = (
    F("rep_dim", "int", 64, "the teacher's representation width p (the student's read-out: p x width)",
      hashed="always"),
    F("teacher", "str", "core", "`core` (constructed on the core subspace), `trained` (a ReLU network trained on "
      "the core coordinates), `linear` (`core` without its ReLU) or `standard` (trained on the whole input: the "
      "effective-robustness baseline); contamination/distill.py", hashed="always",
      choices=("core", "trained", "linear", "standard")),
    F("teacher_bias", "float", 3.0, "the scale of the core teacher's biases", compiled="traced", hashed="always"),
    F("teacher_bias_unit", "str", "absolute", "the unit of `teacher_bias`: `absolute` (the biases are "
      "teacher_bias * N(0, 1), whatever the pre-activations' scale: the first rounds' teacher) or `spread` "
      "(times each unit's standard deviation of W_T x over the ID training inputs: the same share of a unit's "
      "range at every core type and dimension). The `distill` preset uses `spread`",
      choices=("absolute", "spread")),
    F("teacher_steps", "int", 2000, "a trained teacher's steps (padded: the steps past a run's own leave its "
      "teacher as it was)", pad="always", hashed="always"),
    F("teacher_lr", "float", 1e-2, "a trained teacher's learning rate", compiled="traced", hashed="always"),
    F("teacher_data", "str", "full", "how a `trained` or `standard` teacher sees its data: `full` (full batch on "
      "the fixed training set, whatever the student does: the first rounds') or `student` (the student's batch "
      "mode), so an effective-robustness baseline trains as the students it is compared with",
      choices=("full", "student")),
    F("probe_ridge", "float", 1e-4, "the relative ridge of the linear probes (and of `retrain_output`'s refit)",
      compiled="traced", eval_only=True, hashed="always"),
)

METRICS = (
    "student_rep_err_train", "student_rep_err_id", "student_rep_err_ood",
    "teacher_probe_id_acc", "teacher_probe_ood_acc", "student_probe_id_acc", "student_probe_ood_acc",
    "core_norm", "bg_norm", "bg_signed", "act_asym", "bg_mean_proj", "bg_shift_rms", "contaminated_frac",
    "contamination_sign", "contamination_ratio", "teacher_core_norm", "teacher_bg_norm",
)


def trains_teacher(s) -> bool:
    """Whether a run trains its teacher first (`trained` on the core, `standard` on the whole
    input: `distill.trained_teacher`), for `teacher_steps` steps."""
    return s.teacher in ("trained", "standard")


def teacher_steps(s) -> int:
    return s.teacher_steps if trains_teacher(s) else 0


def validate(cfg) -> None:
    if cfg.depth > 1 or cfg.n_classes > 2:
        raise ConfigError("experiment: distill trains a one-hidden-layer student on a binary task; "
                          "depth and n_classes must stay 1 and 2")


def check_fields(cfg) -> None:
    for name in ("rep_dim", "teacher_steps"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}: must be a positive integer, got {getattr(cfg, name)}")
    if cfg.teacher_bias < 0:
        raise ConfigError(f"teacher_bias: must be >= 0 (scale of the core teacher's biases), got {cfg.teacher_bias}")
    if cfg.teacher_lr <= 0:
        raise ConfigError(f"teacher_lr: must be > 0, got {cfg.teacher_lr}")
    if cfg.probe_ridge <= 0:
        raise ConfigError(f"probe_ridge: must be > 0 (relative ridge of the linear probes), got {cfg.probe_ridge}")


def describe(s) -> str:
    return f"{s.teacher} teacher p={s.rep_dim} " + (f"teacher_steps={s.teacher_steps} " if trains_teacher(s) else "")


EXPERIMENT = Experiment(
    "distill", METRICS,
    fields=FIELDS,
    validate=validate,
    check_fields=check_fields,
    training="contamination.distill:distill_training",
    flops="contamination.distill:flops",
    memory_bytes="contamination.distill:memory_bytes",
    describe=describe,
    extra_steps=teacher_steps,
    spec_metrics="contamination.distill:spec_metrics",
    # the student's fit to its teacher: its ID representation error
    fit_metric="student_rep_err_id",
    compared=("student_rep_err_id", "student_rep_err_ood", "student_err_ratio", "student_probe_ood_acc",
              "teacher_probe_ood_acc", "bg_mean_proj", "bg_shift_rms", "contaminated_frac"),
    panels="analysis.distill:distill_panels",
)
