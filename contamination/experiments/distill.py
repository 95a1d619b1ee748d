"""The `distill` experiment: a student trained on a teacher's representation, then both probed
(docs/distillation.md; the training is `contamination/distill.py`, the figures `analysis/distill.py`)."""

from __future__ import annotations

from . import Experiment

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


def describe(s) -> str:
    return f"{s.teacher} teacher p={s.rep_dim} " + (f"teacher_steps={s.teacher_steps} " if trains_teacher(s) else "")


EXPERIMENT = Experiment(
    "distill", METRICS,
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
