"""The report of one results directory: figures chosen from the grid's axes, a headline table
and the manifest's provenance, written as `figures/*.png|svg`, `summary.csv` and `report.md`."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from .aggregate import aggregate
from .curves import BG_PANELS, PAPER_PANELS, collapse_figure, collapse_score, curves_figure
from .load import Results, attach, range_label
from .phase import diverged_note, line_figure, phase_figure, phase_table
from .style import fmt, fmt_value, label, save, short

from sweeps.storage import Location, location, staged

HEADLINE = ("id_acc", "ood_acc", "critical_shift", "id_loss", "ood_loss", "bg_mean_proj", "contaminated_frac",
            "act_asym", "bg_grad_net", "bg_grad_balance")
DISTILL_HEADLINE = ("student_rep_err_id", "student_rep_err_ood", "teacher_probe_ood_acc", "student_probe_id_acc",
                    "student_probe_ood_acc", "bg_signed")
BASELINE_HEADLINE = ("teacher_probe_id_acc", "teacher_probe_ood_acc")  # distill_baseline: standard networks only
PHASE_METRICS = ("ood_acc", "ood_minus_id_loss", "bg_mean_proj")
COLLAPSE_METRICS = ("bg_mean_proj", "ood_minus_id_loss")
MAX_ROWS = 6  # more values than this on an axis: pool it rather than draw a row per value


@dataclasses.dataclass
class Panel:
    """A figure of the report: file stem (under figures/), section, caption, the Figure and an
    optional markdown note printed after the caption."""

    stem: str
    section: str
    caption: str
    figure: object
    note: str = ""


def phase_stem(metric: str, x: str, y: str, facet: str | None = None) -> str:
    return f"phase_{metric}_{x}_{y}" + (f"_by_{facet}" if facet else "")


def varying_axes(results: Results) -> list[str]:
    """Grid axes (in grid order) that take more than one value in the runs table."""
    return [a for a in results.axes if a in results.runs and results.runs[a].nunique(dropna=True) > 1]


def _rest(axes: list[str], *used) -> list[str]:
    return [a for a in axes if a not in used]


def headline_runs(results: Results, table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """`table`'s rows at the grid's headline values (`headline = {axis = value}` in the grid file)."""
    where = {a: v for a, v in results.manifest.get("headline", {}).items() if a in table}
    for a, v in where.items():
        table = table[table[a].astype(str) == str(v)]
    return table, where


def shift_panels(results: Results, axes: list[str]) -> list[Panel]:
    """What the report leads with where runs measured the critical shift: the OOD-accuracy phase
    diagram at the headline shift, the critical-shift diagram, accuracy against the background
    shift (ReLU and controls side by side) and the mean-direction ablation's recovery."""
    runs, where = headline_runs(results, results.runs)
    if "critical_shift" not in runs or not runs["critical_shift"].notna().any():
        return []
    free = [a for a in axes if a not in where]
    at = (" at " + ", ".join(f"{a} = {fmt_value(v)}" for a, v in where.items())) if where else ""
    out: list[Panel] = []
    if len(free) >= 2:
        x, y = free[0], free[1]
        facet = free[2] if len(free) >= 3 else None
        averaged = _rest(free, x, y, facet)
        acc = "ood_acc" if "ood_acc" in runs else "student_probe_ood_acc"  # a distillation run: its probe
        for m, what in ((acc, "OOD accuracy"), ("critical_shift", "the background shift at which accuracy "
                                                                      "falls midway to chance")):
            if m not in runs:
                continue
            out.append(Panel(phase_stem(m, x, y, facet) + ("_headline" if where else ""), "OOD accuracy and the "
                             "critical shift", f"{what} over {x} × {y}" + (f", by {facet}" if facet else "") + at
                             + (f"; pooled over {', '.join(averaged)}" if averaged else ""),
                             phase_figure(phase_table(runs, x, y, m, facet), x, y, m, facet, averaged=averaged,
                                          where=where or None)))
    elif free:
        out.append(Panel("critical_shift_vs_" + free[0], "OOD accuracy and the critical shift",
                         f"OOD accuracy and the critical shift against {free[0]}{at}",
                         line_figure(runs, free[0], (("id_acc", "ood_acc", "ood_acc_ablated"), ("critical_shift",)))))
    shifts = results.shifts
    if len(shifts) and "shift" in shifts:
        shifts, _ = headline_runs(results, shifts)
        hue = "activation" if "activation" in free else (free[0] if free else None)
        others = _rest(free, hue)
        row = next((a for a in others if shifts[a].nunique() <= MAX_ROWS), None) if others else None
        out.append(Panel("ood_acc_vs_shift", "OOD accuracy and the critical shift",
                         "test accuracy (left) and loss (right) as the background moves from its training range "
                         "towards the OOD range by s (s = 1: the sign flip of U[0, 1]); solid: the network, dashed: "
                         "its first layer's component along the background mean removed" + at,
                         curves_figure(shifts, (("ood_acc", "ood_acc_ablated"), ("ood_loss", "ood_loss_ablated")),
                                       hue=hue, row=row, x="shift", xlabel="background shift s", logx=True,
                                       band="ci95", averaged=_rest(others, row),
                                       title="Accuracy and loss against the background shift")))
    by = [a for a in free if a in runs]
    cols = ("id_acc", "ood_acc", "id_acc_ablated", "ood_acc_ablated", "failure_explained", "critical_shift",
            "critical_shift_ablated")
    table = headline_table(runs, by, [c for c in cols if c in runs])
    out.append(Panel("ablation_recovery", "OOD accuracy and the critical shift",
                     "OOD accuracy of each network and of the same network with its first layer's component along "
                     "the background mean removed (the mean's contribution folded into the biases)" + at,
                     line_figure(runs, free[0], (("ood_acc", "ood_acc_ablated"), ("failure_explained",)),
                                 hue=free[1] if len(free) > 1 else None,
                                 averaged=_rest(free, *free[:2])) if free else None,
                     "The mean-direction ablation per config (mean ± 95% CI over seeds): `failure_explained` is the "
                     "share of the OOD accuracy loss it recovers (NaN: nothing lost).\n\n" + _md_table(table)))
    return [p for p in out if p.figure is not None]


TRAINED_ON = "training background"


def moves_training_background(curves: pd.DataFrame, axis: str) -> bool:
    """Whether the axis's values train on different background ranges (the set of training ranges
    differs from one value of the axis to another)."""
    cols = [c for c in ("bg_train_low", "bg_train_high") if c in curves]
    if not cols:
        return False
    pairs = curves[[axis, *cols]].drop_duplicates()
    sets = {frozenset(map(tuple, g[cols].to_numpy().tolist())) for _, g in pairs.groupby(axis, observed=True)}
    return len(sets) > 1


def training_rows(curves: pd.DataFrame, row: str | None, pooled: list[str]) -> tuple[pd.DataFrame, str | None, list[str]]:
    """Curves are the networks': where a pooled axis also moves the training background (an axis
    of (bg_train, bg_ood) pairs, e.g. activation_vs_shift's, whose zero-mean controls are other
    networks), pooling it would average a control into the contaminated networks. Then the
    training background becomes the rows (a derived column, TRAINED_ON) and the axis is pooled
    within each row only. Returns (curves, row, pooled)."""
    if row is not None or not any(moves_training_background(curves, a) for a in pooled):
        return curves, row, pooled
    if len(curves[["bg_train_low", "bg_train_high"]].drop_duplicates()) > MAX_ROWS:
        return curves, row, pooled
    names = [f"U[{fmt_value(lo)}, {fmt_value(hi)}]" for lo, hi in zip(curves["bg_train_low"], curves["bg_train_high"])]
    return curves.assign(**{TRAINED_ON: names}), TRAINED_ON, pooled


def build_figures(results: Results) -> list[Panel]:
    """Phase diagrams (or metric lines for a single axis) and training curves suited to the grid's axes."""
    runs, axes = results.runs, varying_axes(results)
    out: list[Panel] = shift_panels(results, axes)
    refined = "round" in runs and bool((runs["round"].fillna(0) > 0).any())
    if refined:  # phase diagrams on the grid's own lattice; the boundary figure shows every point
        out += boundary_panels(results)
        runs = runs[runs["round"].fillna(0) == 0]
    out += phase_panels(runs, axes, {p.stem for p in out})
    out += experiment_panels(results, axes)
    from .matched import rate_varies_within_arm

    if rate_varies_within_arm(runs):
        out.append(matched_panel(runs, axes))
    out += depth_class_panels(results, axes)
    out += exponent_panels(results)
    if "dataset" in runs and (runs["dataset"] == "digits").any():
        out += digits_panels(runs[runs["dataset"] == "digits"])
    if len(results.curves) and "step" in results.curves:
        out += curve_panels(results.curves, runs, axes)
    return out


def experiment_panels(results: Results, axes: list[str]) -> list[Panel]:
    """The panels each experiment of the runs declares (`Experiment.panels`), in registry order."""
    from contamination.experiments import resolve
    from .matched import experiments_in

    out: list[Panel] = []
    for exp in experiments_in(results.runs):
        if exp.panels:
            out += resolve(exp.panels)(results, axes)
    return out


def phase_panels(runs: pd.DataFrame, axes: list[str], drawn: set[str]) -> list[Panel]:
    """A phase diagram per metric over the first two axes (faceted by a third; the rest pooled),
    except those already `drawn`; metric lines against a single axis."""
    out = []
    if len(axes) >= 2:
        x, y = axes[0], axes[1]
        facet = axes[2] if len(axes) >= 3 else None
        averaged = _rest(axes, x, y, facet)
        for m in [m for m in PHASE_METRICS if m in runs]:
            if phase_stem(m, x, y, facet) in drawn:  # drawn first (shift_panels)
                continue
            table = phase_table(runs, x, y, m, facet)
            out.append(Panel(phase_stem(m, x, y, facet), "Phase diagrams",
                             f"{label(m)} over {x} × {y}" + (f", by {facet}" if facet else "")
                             + (f"; pooled over {', '.join(averaged)}" if averaged else ""),
                             phase_figure(table, x, y, m, facet, averaged=averaged)))
    elif len(axes) == 1:
        out.append(Panel(f"metrics_vs_{axes[0]}", "Final metrics", f"final metrics against {axes[0]}",
                         line_figure(runs, axes[0])))
    return out


def digits_panels(digits: pd.DataFrame) -> list[Panel]:
    """The bordered digits as the runs drew them, and first-layer weights as images."""
    from .images import examples_figure, weights_figure

    out = []
    out.append(Panel("digits_examples", "Data", "bordered digits as the runs drew them: training images, "
                     "and the same test digits ID and OOD (the border redrawn; blue negative, red positive)",
                     examples_figure(digits)))
    weights = weights_figure(digits)
    if weights is not None:
        out.append(Panel("digits_weights", "Data", "first-layer weights as images, retrained from the table's "
                         "configs (lowest seed): the unit average and the units with the largest border "
                         "weight", weights))
    return out


def curve_panels(curves: pd.DataFrame, runs: pd.DataFrame, axes: list[str]) -> list[Panel]:
    """Training curves: losses and norms, the background drift by activation, the eta t / m collapse."""
    out = []
    # a geometric schedule puts most logged points early: a log-step axis shows them
    logged = np.unique(curves.loc[curves["step"] > 0, "step"].to_numpy(dtype=float))
    log_steps = len(logged) >= 3 and float(np.median(logged)) < 0.1 * float(logged.max())
    hue = axes[0] if axes else None
    row = axes[1] if len(axes) >= 2 and curves[axes[1]].nunique() <= MAX_ROWS else None
    rowed, row, averaged = training_rows(curves, row, _rest(axes, hue, row))
    out.append(Panel("curves_loss_norm", "Training curves",
                     "ID and OOD loss (left) and core and background projection norms (right) against steps",
                     curves_figure(rowed, PAPER_PANELS, hue=hue, row=row, averaged=averaged, logx=log_steps,
                                   title="Losses and feature norms against steps")))
    bg = [m for p in BG_PANELS for m in p if m in curves]
    if "activation" in axes and bg:
        # rows: the axis that moves the training background first (its zero-mean control is
        # the figure's point), then the others in grid order
        others = sorted(_rest(axes, "activation"), key=lambda a: not moves_training_background(curves, a))
        row = others[0] if others and curves[others[0]].nunique() <= MAX_ROWS else None
        rowed, row, averaged = training_rows(curves, row, _rest(others, row))
        out.append(Panel("curves_background_by_activation", "Training curves",
                         bg_caption(bg) + " by activation",
                         curves_figure(rowed, BG_PANELS, hue="activation", row=row,
                                       averaged=averaged, logx=log_steps,
                                       title="The drift along the background mean and the class gradients "
                                       "behind it, by activation")))
    collapse = [m for m in COLLAPSE_METRICS if m in curves]
    if {"lr", "width"} & set(axes) and {"lr", "width"} <= set(runs) and collapse:
        c = attach(curves, runs, ["lr", "width"])
        out.append(Panel("collapse_eta_t_over_m", "Training curves",
                         "curves against raw steps and against η t / m (lr × step / width): the theory's time "
                         "scales are linear in m / η, so the right-hand curves should collapse",
                         collapse_figure(c, collapse, averaged=_rest(axes, "lr", "width")),
                         collapse_note(c, collapse)))
    return out


def exponent_panels(results: Results) -> list[Panel]:
    """Where runs differ only in d or d0 (three sizes or more, two seeds or more): the scaling
    exponents of `analysis/exponents.py`, a figure per fit with its table."""
    from .exponents import exponent_parts, summary

    runs = results.runs
    runs = runs[runs["round"].fillna(0) == 0] if "round" in runs else runs
    out = []
    for spec, fits, fig in exponent_parts(runs, results.curves):
        table = summary([(spec, fits, fig)])
        out.append(Panel(f"exponent_{spec.name}", "Scaling exponents",
                         f"{spec.claim}: {spec.y} against {spec.x} on log-log axes ({spec.activation}), the fit "
                         "per seed averaged, with its 95% interval over seeds", fig,
                         "Slope and 95% interval over seeds (t interval of the seeds' own fits), the seed "
                         "bootstrap's interval and the geometric-mean level (the measurement: the project's "
                         "docs/exponents.md).\n\n" + _md_table(table)))
    return out


def bg_caption(bg: list[str]) -> str:
    """The caption of the background figure's panels, left to right."""
    if bg == [m for p in BG_PANELS for m in p]:
        return ("the drift along the background mean (left), the net and total class gradients along it per "
                "training sample (middle) and their ratio (right)")
    return " (left) and ".join(short(m) for m in bg) + (" (right)" if len(bg) > 1 else "")


def depth_class_panels(results: Results, axes: list[str]) -> list[Panel]:
    """Grids over depth or the number of classes: contamination against each, a line per activation
    (or the next axis); with depth, every layer's rep_shift."""
    from .layers import contamination_figure, layer_figure, rep_shift_columns

    runs, out = results.runs, []
    for x in [a for a in ("depth", "n_classes") if a in axes]:
        others = _rest(axes, x)
        hue = "activation" if "activation" in others else (others[0] if others else None)
        averaged = _rest(others, hue)
        out.append(Panel(f"contamination_vs_{x}", "Depth and classes",
                         f"OOD loss gap, drift along the background mean, contaminated share and OOD margin kept "
                         f"against {x}" + (f", by {hue}" if hue else ""),
                         contamination_figure(runs, x, hue, averaged=averaged)))
    if "depth" in runs and len(rep_shift_columns(runs)) > 1:
        facet = "activation" if "activation" in axes else None
        out.append(Panel("rep_shift_by_layer", "Depth and classes",
                         "the OOD shift of each hidden layer's representation relative to its class separation, "
                         "a line per depth" + (f", by {facet}" if facet else ""),
                         layer_figure(runs, "depth", facet, averaged=_rest(axes, "depth", facet))))
    return out


def _varies(results: Results, col: str, axes: list[str]) -> bool:
    """`col` is a varying grid axis or a varying config column (e.g. set through a label axis)."""
    named = col in axes or col in results.manifest.get("axis_columns", [])
    return named and col in results.runs and results.runs[col].nunique(dropna=True) > 1


def boundary_panels(results: Results) -> list[Panel]:
    """The phase boundary that `sweeps refine` located (its metric and level, from refine.json):
    the figure over the first two refined axes and the crossings as a table."""
    from .boundary import boundary_figure, boundary_setting, boundary_table

    setting = boundary_setting(results)
    if setting is None or len(setting[0]) < 2:
        return []
    ax, facets, metric, level = setting
    table = boundary_table(results.runs, ax, facets, metric, level)
    rounds = results.runs["round"].fillna(0).astype(int).value_counts().sort_index()
    note = ("Runs per round: " + ", ".join(f"{r}: {n}" for r, n in rounds.items()) + f". {len(table)} crossings "
            f"of {metric} = {level:g} between neighbouring points (`python -m analysis boundary` prints them).")
    if len(table):
        shown = table.copy()
        for c in ("crossing", "low", "high", "from", "to"):
            shown[c] = [fmt(v) for v in shown[c]]
        note += "\n\n" + _md_table(shown.fillna("").astype(str))
    return [Panel(f"boundary_{metric}", "Phase boundary", f"where {metric} crosses {level:g}, over "
                  f"{ax[0].name} × {ax[1].name}: every point, the grid's and those refinement added",
                  boundary_figure(results.runs, ax, facets, metric, level), note)]


def _synthetic(runs: pd.DataFrame) -> bool:
    """Runs on the synthetic feature model only (real digits have no core type)."""
    return "dataset" not in runs or bool((runs["dataset"].astype(str) == "synthetic").all())


def matched_panel(runs: pd.DataFrame, axes: list[str]) -> Panel:
    """Optimizers compared at matched ID fit: per optimizer, the learning rate whose ID loss (the
    student's ID error) reaches the loosest fit every optimizer reaches (`analysis.matched`)."""
    from .matched import matched_figure, matched_rates, matched_table

    table, metric, by = matched_table(runs, axes)
    sel = matched_rates(runs, metric, None, by=by)
    fig = matched_figure(runs, metric, sel, by=by)

    def cell(row, c):
        v = row.get(c, np.nan)
        if not np.isfinite(v):
            return "–"
        lo, hi = row.get(f"{c}_min", np.nan), row.get(f"{c}_max", np.nan)
        return f"{fmt(v)} ({fmt(lo)}–{fmt(hi)})" if np.isfinite(lo) and lo != hi else fmt(v)

    arm = [c for c in ("optimizer", "momentum", "weight_decay") if c in table]
    shown = [c for c in table.columns if c not in (*by, *arm, "lr", "n", "target") and not c.endswith(("_min", "_max"))]
    rows = []
    for _, r in table.iterrows():
        rows.append({**{c: r[c] for c in (*by, *arm)}, "lr": fmt(r["lr"]) if np.isfinite(r["lr"]) else "not reached",
                     "target": fmt(r["target"]), **{c: cell(r, c) for c in shown}})
    note = (f"Matched on `{metric}`: per optimizer the learning rate whose seed mean is the largest at or under the "
            "target, the loosest fit every optimizer reaches (per group of the other axes). Seed means, min–max "
            "over seeds in brackets.\n\n" + _md_table(pd.DataFrame(rows)))
    return Panel("matched_fit_" + metric, "Optimizers at matched ID fit",
                 f"{metric} against the learning rate, per optimizer; circled: the rate each optimizer is "
                 "compared at", fig, note)


def no_baseline(results: Results) -> str:
    from .distill import baseline_name

    grid = baseline_name(results).split("-")[0]
    return (f"No effective-robustness baseline found: run `make sweep GRID={grid}` (same scale) "
            "and report again.")


def robustness_note(results: Results, baseline: pd.DataFrame | None) -> str:
    """The markdown under the effective-robustness figure: per config, the teacher's and the student's
    OOD accuracy above the standard networks' line and the share the student keeps."""
    from .distill import STANDARD, baseline_line, baseline_name, baseline_points, data_mode, robustness_kept

    if baseline is None:
        return no_baseline(results)
    n_cfg = len(baseline_points(baseline))
    head = (f"Effective robustness: OOD probe accuracy above the line that standard networks "
            f"({baseline_name(results)}, {n_cfg} configs) follow; `kept` is the share of the teacher's "
            "advantage the student keeps. Lines are fitted per core type, training background and data mode "
            "(a student is compared with standard networks that saw data as it did: fresh batches or batches "
            "of the fixed set, of one size), flat at "
            "the mean OOD accuracy where the standard networks' ID accuracies span under 0.05; `–` "
            "where a probe's ID accuracy lies more than 0.02 below the standard networks' ID range (no "
            "extrapolation) or the teacher is not above the line.")
    labels = varying_axes(results) or [c for c in ("teacher", "teacher_bias", "activation") if c in results.runs]
    runs = results.runs
    cores = (list(dict.fromkeys(runs["core"].astype(str))) if _synthetic(runs) and "core" in runs and "core" in baseline
             else [None])
    fits, parts = [], []
    for core in cores:
        base = baseline if core is None else baseline[baseline["core"].astype(str) == core]
        mine = runs if core is None else runs[runs["core"].astype(str) == core]
        mine = mine[~(mine["teacher"].astype(str) == STANDARD)] if "teacher" in mine else mine
        # each student against the line of standard networks trained in its own data mode
        modes, base_modes = data_mode(mine), data_mode(base, teacher=True)
        several = modes.nunique() > 1 or set(base_modes) != set(modes)
        for mode in dict.fromkeys(modes):
            b = base[base_modes == mode]
            m = mine[modes == mode]
            line = baseline_line(b)
            where = ", ".join(x for x in ((f"{core} core" if core else ""), (mode if several else "")) if x)
            fits += [(f"{where}, " if where else "") + f"bg_train {range_label(lo, hi)}: OOD = {fmt(a)} × ID "
                     f"{'+' if b_ >= 0 else '−'} {fmt(abs(b_))} ({n} configs)"
                     for (lo, hi), (a, b_, n) in line.items()]
            if not line:
                fits.append((f"{where}: " if where else "") + "no baseline trained in this data mode")
            part = robustness_kept(m, line, axes=labels)
            pts = baseline_points(b)
            if len(pts) and len(part):
                low = float(pts["id"].min()) - 0.02  # below the standard networks' ID range: no extrapolation
                outside = (part["student_probe_id_acc"] < low) | (part["teacher_probe_id_acc"] < low)
                part.loc[outside, "kept"] = np.nan
            parts.append(part)
    kept = pd.concat(parts, ignore_index=True)
    fits = "; ".join(fits)
    labels = [c for c in labels if c in kept]
    table = kept[labels].copy()
    def signed(v: float) -> str:
        return f"{round(v, 3) + 0.0:+.3f}" if np.isfinite(v) else "–"  # + 0.0: no "-0.000"

    table["teacher adv"] = [signed(v) for v in kept["teacher_adv"]]
    table["student adv"] = [signed(v) for v in kept["student_adv"]]
    table["kept"] = [f"{100 * v:.0f}%" if np.isfinite(v) else "–" for v in kept["kept"]]
    if labels:
        table = table.sort_values(labels).reset_index(drop=True)
    return "\n\n".join([head, "Lines: " + (fits or "none (fewer than two baseline configs per background)") + ".",
                         _md_table(table)])


COLLAPSE_HEADER = "Collapse score (spread at equal η t / m over spread at equal steps; below 1 collapses)"


def collapse_note(curves: pd.DataFrame, metrics) -> str:
    """A markdown table of `collapse_score` per metric (curves with lr, width and step columns)."""
    scores = pd.DataFrame({"metric": [label(m) for m in metrics],
                           "collapse score": [fmt(collapse_score(curves, m)) for m in metrics]})
    return f"{COLLAPSE_HEADER}:\n\n{_md_table(scores)}"


# --- markdown -------------------------------------------------------------------------

def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, str):
        return v.replace("|", "\\|")
    return fmt_value(v)


def headline_table(runs: pd.DataFrame, axes: list[str], metrics=HEADLINE) -> pd.DataFrame:
    """Per config: 'mean ± CI' strings of the headline metrics, then n and n_diverged."""
    metrics = [m for m in metrics if m in runs]
    agg = aggregate(runs, axes, metrics)
    out = agg[axes].copy() if axes else pd.DataFrame(index=agg.index)
    for m in metrics:
        mean, ci = agg[f"{m}_mean"], agg[f"{m}_ci95"]
        out[m] = [fmt(a) + (f" ± {fmt(b)}" if np.isfinite(b) else "") for a, b in zip(mean, ci)]
    out["n"] = agg["n"]
    out["n_diverged"] = agg["n_diverged"]
    return out


def _headline(runs: pd.DataFrame) -> tuple[str, ...]:
    if "student_probe_ood_acc" not in runs:
        return HEADLINE
    if "teacher" in runs and (runs["teacher"].astype(str) == "standard").all():
        return BASELINE_HEADLINE
    return DISTILL_HEADLINE


def _timing(manifest: dict) -> list[str]:
    lines = []
    for k, inv in enumerate(manifest.get("invocations", []), 1):
        buckets = inv.get("buckets", [])
        compile_s = sum(b.get("compile_s") or 0 for b in buckets)
        run_s = sum(b.get("run_s") or 0 for b in buckets)
        secs = inv.get("seconds")
        rate = inv.get("runs_per_s")
        lines.append(f"- invocation {k}: " + (f"{inv['writer']}, " if "writer" in inv else "")
                     + f"started {inv.get('started', '?')}, "
                     + (f"{secs:.1f} s wall, " if secs is not None else "unfinished, ")
                     + f"{inv.get('trained', 0)} runs trained"
                     + (f" by {inv['networks_trained']} networks" if "networks_trained" in inv else "")
                     + f" ({inv.get('already_done', 0)} already done), "
                     + f"{len(buckets)} compiled programs ({compile_s:.1f} s compiling"
                     + (f", {inv['compile_wait_s']:.1f} s of it waited for" if "compile_wait_s" in inv else "")
                     + f", {run_s:.1f} s running)"
                     + (f", {rate:.1f} runs/s" if rate else ""))
    return lines or ["- (no invocation recorded in the manifest)"]


def render(results: Results, panels: list[tuple[Panel, list[Path]]], out_dir: Path, summary_csv: Path | None) -> str:
    """The markdown of report.md; links are relative to `out_dir`."""
    m, runs = results.manifest, results.runs
    n_runs, n_cfg = len(runs), runs["config_id"].nunique() if "config_id" in runs else len(runs)
    n_div = results.n_diverged
    seeds = m.get("seeds") or sorted(runs["seed"].unique().tolist())
    scale = m.get("scale")
    lines = [f"# Report: {results.name}" + (f" ({scale} scale)" if scale not in (None, "default") else ""),
             "", m.get("description") or "", "", "## What was run", "",
             f"- grid: `{m.get('grid', results.name)}`" + (f", scale `{m.get('scale')}`" if m.get("scale") else "")
             + (f", preset `{m['preset']}`" if m.get("preset") else ""),
             f"- {n_cfg} configs × {len(seeds)} seeds ({', '.join(map(str, seeds))}) = {n_runs} runs in the tables"
             + (f"; **{diverged_note(n_div, 'statistics')}**" if n_div else "; none diverged")]
    for a, vals in results.axes.items():
        lines.append(f"- axis `{a}`: " + ", ".join(f"`{fmt_value(v)}`" for v in vals))
    if m.get("fixed"):
        lines.append("- fixed: " + ", ".join(f"`{k} = {v}`" for k, v in m["fixed"].items()))
    if m.get("device_kind"):
        lines.append(f"- device: {m.get('device_count', '?')} × {m['device_kind']} ({m.get('backend', '?')} backend)")
    lines += ["", "Timing:", "", *_timing(m), ""]
    if m.get("grid_text"):
        lines += ["<details><summary>Grid file</summary>", "", "```toml", m["grid_text"].rstrip(), "```", "",
                  "</details>", ""]
    lines += ["## Headline table", "",
              "Final metrics per config: mean ± 95% confidence half-width (t distribution) over seeds; "
              "`n` runs entered the statistics, `n_diverged` diverged and were left out.", "",
              _md_table(headline_table(runs, [a for a in results.axes if a in runs], _headline(runs))), ""]
    if summary_csv is not None:
        lines += [f"Every metric's mean, std, CI and counts per config: [{summary_csv.name}]"
                  f"({summary_csv.relative_to(out_dir).as_posix()}).", ""]
    if n_div:
        cols = [c for c in (*results.axes, "seed", "diverged_step") if c in runs]
        lines += ["Diverged runs (left out of every mean, band and table):", "",
                  _md_table(runs.loc[runs["diverged"].astype(bool), cols].head(50)), ""]
    section = None
    for panel, paths in panels:
        if panel.section != section:
            section = panel.section
            lines += [f"## {section}", ""]
        png = next(p for p in paths if p.suffix == ".png")
        rel = lambda p: p.relative_to(out_dir).as_posix()  # noqa: E731
        others = " · ".join(f"[{p.suffix[1:]}]({rel(p)})" for p in paths if p != png)
        lines += [f"![{panel.caption}]({rel(png)})", "", f"*{panel.caption}.* {others}".rstrip(), ""]
        if panel.note:
            lines += [panel.note, ""]
    v = m.get("versions", {})
    loc = results.location
    lines += ["## Provenance", "",
              f"- results: `{loc}` ({len(loc.files('runs', suffix='.parquet'))} runs files, "
              f"{len(loc.files('curves', suffix='.parquet'))} curves files)",
              f"- git commit: `{m.get('git_commit') or 'unknown'}`",
              f"- grid file: `{m.get('path', '?')}`, sha256 `{m.get('grid_sha256', '?')}`",
              "- versions: " + (", ".join(f"{k} {val}" for k, val in v.items()) or "unknown"),
              f"- randomness: {m.get('prng', 'unknown')}",
              f"- report written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} "
              "by `python -m analysis report`", ""]
    return "\n".join(lines)


def write_report(results: Results, out_dir=None, formats=("png", "svg")) -> Path | Location:
    """Write figures/*.{png,svg}, summary.csv and report.md into `out_dir` (a path or URI; default:
    the results directory, local or in an object store); return report.md's path (its Location
    in an object store)."""
    dest = location(out_dir) if out_dir is not None else results.location
    with staged(dest) as out_dir:
        fig_dir = out_dir / "figures"
        saved = [(p, save(p.figure, fig_dir / p.stem, formats)) for p in build_figures(results)]
        summary = out_dir / "summary.csv"
        axes = [a for a in results.axes if a in results.runs]
        aggregate(results.runs, axes, results.metrics).to_csv(summary, index=False)
        (out_dir / "report.md").write_text(render(results, saved, out_dir, summary))
    return dest.local_path() / "report.md" if dest.local else dest / "report.md"
