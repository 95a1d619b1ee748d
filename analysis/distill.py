"""Figures of the distillation experiment (`experiment = "distill"`, contamination/distill.py).

Pure functions of the runs table (one row per run, as `pd.read_parquet(results/NAME/runs)`):

- `effective_robustness_figure`: OOD against ID linear-probe accuracy, teacher and students
  (the paper's effective-robustness view: a representation that generalizes sits on the
  diagonal; feature contamination puts the students below it).
- `ood_gap_phase_figure`: a phase diagram of the student's OOD gap (probe accuracy ID minus
  OOD, or any other metric) over two axes, drawn by `analysis.phase`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .aggregate import t_halfwidth
from .phase import phase_figure, phase_table
from .select import values_of
from .style import fmt_value, new_figure

PROBE = ("teacher_probe_id_acc", "teacher_probe_ood_acc", "student_probe_id_acc", "student_probe_ood_acc")
GAP = "student_ood_gap"
POOLABLE = ("activation", "teacher", "teacher_bias", "rep_dim", "width", "core_dim", "bg_dim", "input_dim", "core",
            "features", "lr", "steps")


def with_gap(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with `student_ood_gap` = student probe accuracy ID minus OOD (and the teacher's)."""
    out = runs.copy()
    out[GAP] = out["student_probe_id_acc"] - out["student_probe_ood_acc"]
    out["teacher_ood_gap"] = out["teacher_probe_id_acc"] - out["teacher_probe_ood_acc"]
    return out


def _live(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[~runs["diverged"].astype(bool)] if "diverged" in runs else runs


def _groups(df: pd.DataFrame, col: str | None) -> list:
    return values_of(df, col) if col and col in df else [None]


def effective_robustness_figure(runs: pd.DataFrame, facet: str | None = "core", hue: str | None = "activation",
                                size: str | None = "width"):
    """OOD against ID probe accuracy: a point per config (seed mean, 95% CI bars), teacher and student.

    Students are coloured by `hue` (the student's activation: ReLU vs the linear control) and
    sized by `size`; teachers are black crosses. One panel per value of `facet`.
    """
    df = _live(runs)
    missing = [c for c in PROBE if c not in df]
    if missing:
        raise ValueError(f"not a distill runs table: missing {', '.join(missing)}")
    facets = _groups(df, facet)
    hues = _groups(df, hue)
    sizes = values_of(df, size) if size and size in df else []
    fig = new_figure(4.0 * len(facets) + 2.6, 4.8)
    axes = fig.subplots(1, len(facets), squeeze=False)[0]
    colours = {h: f"C{i}" for i, h in enumerate(hues)}
    for ax, f in zip(axes, facets):
        sub = df if f is None else df[df[facet] == f]
        stats = sub.groupby("config_id", observed=True).agg(
            **{f"{c}_mean": (c, "mean") for c in PROBE}, **{f"{c}_std": (c, "std") for c in PROBE},
            n=("config_id", "size"), **({hue: (hue, "first")} if hue in sub else {}),
            **({size: (size, "first")} if size in sub else {}))
        for h in hues:
            part = stats if h is None else stats[stats[hue] == h]
            if part.empty:
                continue
            s = 25.0
            if sizes:
                rank = part[size].map({v: i for i, v in enumerate(sizes)}).astype(float)
                s = 15 + 60 * rank / max(len(sizes) - 1, 1)
            ax.errorbar(part["student_probe_id_acc_mean"], part["student_probe_ood_acc_mean"],
                        xerr=np.nan_to_num(t_halfwidth(part["student_probe_id_acc_std"], part["n"])),
                        yerr=np.nan_to_num(t_halfwidth(part["student_probe_ood_acc_std"], part["n"])),
                        fmt="none", ecolor=colours[h], alpha=0.4, lw=0.8)
            ax.scatter(part["student_probe_id_acc_mean"], part["student_probe_ood_acc_mean"], s=s,
                       color=colours[h], alpha=0.8, label=f"student, {hue} = {fmt_value(h)}" if h is not None
                       else "student")
        ax.scatter(stats["teacher_probe_id_acc_mean"], stats["teacher_probe_ood_acc_mean"], marker="x", s=40,
                   color="black", label="teacher", zorder=3)
        ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="OOD = ID")
        ax.axhline(0.5, color="0.8", ls=":", lw=1)
        ax.set_xlim(0.45, 1.02)
        ax.set_ylim(0.3, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("ID probe accuracy")
        ax.set_ylabel("OOD probe accuracy")
        if f is not None:
            ax.set_title(f"{facet} = {fmt_value(f)}")
    note = f"marker size: {size}\n({', '.join(fmt_value(v) for v in sizes)})" if sizes else None
    axes[-1].legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), title=note,
                    title_fontsize=8)
    fig.suptitle("Linear probes on teacher and distilled students\n"
                 "a point per config: mean over seeds ± 95% CI")
    return fig


def ood_gap_phase_figure(runs: pd.DataFrame, x: str = "width", y: str = "core_dim", facet: str | None = "core",
                         metric: str = GAP):
    """Phase diagram of the student's OOD gap (default: probe accuracy ID minus OOD) over `x` x `y`.

    `metric` may be any runs column or a derived one of `with_gap` (`student_ood_gap`,
    `teacher_ood_gap`); e.g. `student_rep_err_ood` for the representation error.
    Axes not named are pooled (averaged over), as `analysis.phase` does.
    """
    df = with_gap(runs)
    facet = facet if facet and facet in df and len(values_of(df, facet)) > 1 else None
    table = phase_table(df, x, y, metric, facet)
    cells = [c for c in (facet, y, x) if c]
    # Axes pooled into a cell: those that still vary inside one (not, e.g., a label set with y).
    averaged = [c for c in POOLABLE if c in df and c not in cells
                and df.groupby(cells, observed=True)[c].nunique().max() > 1]
    title = ("Student's OOD gap: probe accuracy ID − OOD" if metric == GAP else f"{metric}") + \
        f" over {x} × {y}" + (f", by {facet}" if facet else "")
    return phase_figure(table, x, y, metric, facet, averaged=averaged, title=title)
