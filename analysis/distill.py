"""Figures of the distillation experiment (`experiment = "distill"`, contamination/distill.py).

Pure functions of the runs table (one row per run, as `pd.read_parquet(results/NAME/runs)`):

- `effective_robustness_figure`: OOD against ID linear-probe accuracy, teacher and students
  (the paper's effective-robustness view: a representation that generalizes sits on the
  diagonal; feature contamination puts the students below it).
- `ood_gap_phase_figure`: a phase diagram of the student's OOD gap (probe accuracy ID minus
  OOD, or any other metric) over two axes, drawn by `analysis.phase`.
- `distill_panels`: the report's distillation panels (the `distill` experiment's `panels`).
- `baseline_line`, `robustness_kept`, `load_baseline`: the effective-robustness baseline of
  standard networks trained on the labels (grid distill_baseline, `teacher = "standard"`), and
  the share of the teacher's OOD advantage over it that the student keeps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .aggregate import t_halfwidth
from .load import Results, load, range_label
from .phase import phase_figure, phase_table
from .report import Panel, _synthetic, _varies, robustness_note
from .select import values_of
from .style import fmt_value, new_figure

PROBE = ("teacher_probe_id_acc", "teacher_probe_ood_acc", "student_probe_id_acc", "student_probe_ood_acc")
GAP = "student_ood_gap"
STANDARD = "standard"
BASELINE_GRID = "distill_baseline"
# The baseline grid of runs on another data set than the synthetic one.
BASELINE_GRIDS = {"digits": "digits_distill_baseline"}
BACKGROUND = ("bg_train_low", "bg_train_high")
# The data a baseline must share with the runs it is a baseline for.
DATA_COLUMNS = ("dataset", "digit_classes", "border", "core_dim", "bg_dim", "input_dim", "n_train", "core")
# Always kept by `robustness_kept` (where present), after the caller's axes.
KEPT_COLUMNS = ("teacher", "teacher_bias", "activation", *BACKGROUND)
MIN_ADVANTAGE = 0.01  # a teacher this close to the line has no advantage to keep
MIN_ID_SPREAD = 0.05  # standard networks whose ID accuracies span less get a flat line (`baseline_line`)
POOLABLE = ("activation", "teacher", "teacher_bias", "rep_dim", "width", "core_dim", "bg_dim", "input_dim", "core",
            "features", "lr", "steps")


ERR_RATIO = "student_err_ratio_log10"
# Which cells fail OOD (the first two) and with what background signature: a coherent drift along
# the background mean (`bg_mean_proj`, contamination) or large weights of no consistent sign
# (`bg_norm`, the learned background weights net of init, with `bg_mean_proj` ~ 0: over-fitting).
SIGNATURE = (ERR_RATIO, GAP, "bg_mean_proj", "bg_norm")


def with_gap(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with `student_ood_gap` = student probe accuracy ID minus OOD (and the teacher's), and
    `student_err_ratio_log10` = log10 of the student's OOD over ID representation error."""
    out = runs.copy()
    out[GAP] = out["student_probe_id_acc"] - out["student_probe_ood_acc"]
    out["teacher_ood_gap"] = out["teacher_probe_id_acc"] - out["teacher_probe_ood_acc"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out[ERR_RATIO] = np.log10(out["student_rep_err_ood"] / out["student_rep_err_id"])
    return out


def signature_figures(runs: pd.DataFrame, x: str, y: str, facet: str | None = None) -> list[tuple[str, object]]:
    """Phase diagrams over `x` x `y` (by `facet`) of SIGNATURE for the ReLU students (the linear
    control, where the grid has one, would be pooled in otherwise): which cells fail OOD and whether
    their background weights drift along the mean or are merely large. [(metric, figure)]."""
    df = with_gap(runs)
    df = df[~_is_standard(df)]
    if "activation" in df and df["activation"].nunique() > 1:
        df = df[df["activation"].astype(str) == "relu"]
    cells = [c for c in (facet, y, x) if c]
    averaged = [c for c in df.columns if c in POOLABLE + ("training", "teacher_kind", "data", "background")
                and c not in cells and df.groupby(cells, observed=True)[c].nunique().max() > 1]
    out = []
    for m in SIGNATURE:
        if m not in df:
            continue
        title = f"{m} over {x} × {y}" + (f", by {facet}" if facet else "") + ", ReLU students"
        out.append((m, phase_figure(phase_table(df, x, y, m, facet), x, y, m, facet, averaged=averaged,
                                    title=title)))
    return out


def _live(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[~runs["diverged"].astype(bool)] if "diverged" in runs else runs


def _groups(df: pd.DataFrame, col: str | None) -> list:
    return values_of(df, col) if col and col in df else [None]


def _is_standard(runs: pd.DataFrame) -> pd.Series:
    if "teacher" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["teacher"].astype(str) == STANDARD


def _bg_key(low, high) -> tuple[float, float]:
    return float(low), float(high)


def data_mode(runs: pd.DataFrame, teacher: bool = False) -> pd.Series:
    """How each run's student saw its data: "fresh B" (a fresh batch of B points each step) or
    "fixed B" (batches of B from the fixed training set; B = n_train for a full batch). With
    `teacher`, how its `trained` or `standard` teacher did: the student's mode with `teacher_data =
    "student"`, else (`full`, and tables from before the field) a full batch of the fixed set.
    An effective-robustness baseline compares only with students of its own mode."""
    idx = runs.index

    def col(name, default):
        return runs[name] if name in runs else pd.Series(default, index=idx)

    online = col("online", False).astype(bool)
    n = col("n_train", 0).astype(int)
    bs = col("batch_size", 0).astype(int)
    if teacher:
        follows = col("teacher_data", "full").astype(str) == "student"
        online, bs = online & follows, bs.where(follows, 0)
    size = bs.where(bs > 0, n)
    return pd.Series([f"{'fresh' if o else 'fixed'} {b}" for o, b in zip(online, size)], index=idx)


def baseline_points(baseline_runs: pd.DataFrame) -> pd.DataFrame:
    """Per config of the standard runs (diverged left out): the seed-mean ID and OOD probe accuracy
    (`id`, `ood`) and the training background (`bg_train_low`, `bg_train_high`)."""
    df = _live(baseline_runs)
    df = df[_is_standard(df)]
    cols = {"id": ("teacher_probe_id_acc", "mean"), "ood": ("teacher_probe_ood_acc", "mean")}
    cols.update({c: (c, "first") for c in BACKGROUND if c in df})
    out = df.groupby("config_id", observed=True, sort=True).agg(**cols).reset_index()
    return out[np.isfinite(out["id"]) & np.isfinite(out["ood"])]


def baseline_line(baseline_runs: pd.DataFrame) -> dict:
    """The effective-robustness line of standard training, per training background.

    From the runs whose `teacher` is "standard" (networks trained on the labels from the whole
    input, grid distill_baseline; diverged runs left out): the seed-mean linear-probe accuracy
    (ID, OOD) of each config, then the least-squares line OOD = slope * ID + intercept through
    the configs of each training background (`bg_train_low`, `bg_train_high`). The line is
    fitted to accuracies, not to logit-transformed accuracies as in the effective-robustness
    literature: the probe accuracies here stay well inside (0.5, 1), where the two agree closely.

    Where the standard networks' ID accuracies span less than MIN_ID_SPREAD (an easy task: they all
    fit), a least-squares slope is noise over a sliver of ID accuracy, so the line is flat at their
    mean OOD accuracy (slope 0): the OOD accuracy standard training reaches at that ID accuracy.

    Returns {(bg_train_low, bg_train_high): (slope, intercept, n_points)}; a background with
    fewer than two points has no line and is left out.
    """
    pts = baseline_points(baseline_runs)
    out = {}
    if pts.empty or not all(c in pts for c in BACKGROUND):
        return out
    for (lo, hi), g in pts.groupby(list(BACKGROUND), sort=True):
        if len(g) < 2:
            continue
        ids, oods = g["id"].to_numpy(float), g["ood"].to_numpy(float)
        if ids.max() - ids.min() < MIN_ID_SPREAD:
            slope, intercept = 0.0, float(oods.mean())
        else:
            slope, intercept = np.polyfit(ids, oods, 1)
        out[_bg_key(lo, hi)] = (float(slope), float(intercept), len(g))
    return out


def _config_columns(df: pd.DataFrame, axes) -> list[str]:
    """Columns named in `axes` (default: the label columns, i.e. string or categorical ones that
    vary across configs), then KEPT_COLUMNS, each kept only where constant within every config."""
    if axes is None:
        ids = {"run_id", "config_id", "network_id", "grid", "scale", "experiment"}
        axes = [c for c in df.columns if c not in ids and not pd.api.types.is_numeric_dtype(df[c])
                and not pd.api.types.is_bool_dtype(df[c]) and df[c].nunique() > 1]
    cols = [c for c in dict.fromkeys([*axes, *KEPT_COLUMNS]) if c in df]
    g = df.groupby("config_id", observed=True)
    return [c for c in cols if g[c].nunique(dropna=False).max() <= 1]


def robustness_kept(runs: pd.DataFrame, line: dict, axes: list[str] | None = None) -> pd.DataFrame:
    """Per config of the non-standard runs: how much of the teacher's effective robustness the student keeps.

    A row per config_id (diverged runs left out) with the config's columns (`axes`, default the
    label columns, then teacher, teacher_bias, activation, bg_train_low/high where constant
    within the config), the run count `n`, the seed means of the four probe accuracies, and,
    against the line (slope, intercept) of `line` (`baseline_line`) for the config's training
    background: `teacher_adv` = teacher OOD accuracy above the line at its ID accuracy,
    `student_adv` likewise for the student, and `kept` = student_adv / teacher_adv (NaN where
    teacher_adv <= 0.01 or there is no line for the background).
    """
    df = _live(runs)
    df = df[~_is_standard(df)]
    cols = _config_columns(df, axes) if len(df) else []
    agg = {c: (c, "first") for c in cols}
    agg["n"] = ("config_id", "size")
    agg.update({c: (c, "mean") for c in PROBE})
    out = df.groupby("config_id", observed=True, sort=True).agg(**agg).reset_index()
    if all(c in out for c in BACKGROUND):
        fits = [line.get(_bg_key(lo, hi)) for lo, hi in zip(out[BACKGROUND[0]], out[BACKGROUND[1]])]
    else:
        fits = [next(iter(line.values())) if len(line) == 1 else None] * len(out)  # one background: its line
    slope = np.array([f[0] if f else np.nan for f in fits], dtype=float)
    intercept = np.array([f[1] if f else np.nan for f in fits], dtype=float)
    out["teacher_adv"] = out["teacher_probe_ood_acc"] - (slope * out["teacher_probe_id_acc"] + intercept)
    out["student_adv"] = out["student_probe_ood_acc"] - (slope * out["student_probe_id_acc"] + intercept)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["kept"] = np.where(out["teacher_adv"] > MIN_ADVANTAGE, out["student_adv"] / out["teacher_adv"], np.nan)
    return out


def baseline_name(results: Results) -> str:
    """The baseline's results directory name for `results`' data set and scale:
    distill_baseline[-SCALE] for the synthetic data, digits_distill_baseline[-SCALE] for digits."""
    scale = results.manifest.get("scale")
    runs = results.runs
    datasets = set(runs["dataset"].astype(str)) if "dataset" in runs else set()
    grid = BASELINE_GRIDS.get(datasets.pop(), BASELINE_GRID) if len(datasets) == 1 else BASELINE_GRID
    return grid + (f"-{scale}" if scale not in (None, "default") else "")


def _data_key(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    def norm(v):
        return float(v) if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) else str(v)
    return pd.Series([tuple(norm(v) for v in row) for row in df[cols].itertuples(index=False)], index=df.index)


def load_baseline(results: Results) -> pd.DataFrame | None:
    """The standard networks' runs next to `results` (`baseline_name`) on the same data.

    Rows whose DATA_COLUMNS (data set, digit classes, border, sizes, core) match those of a run in `results`
    (columns absent from either table are not compared); None when the directory is absent or
    holds no matching run.
    """
    here = results.location
    there = here.parent / baseline_name(results)
    if there.root == here.root or not there.files("runs", suffix=".parquet"):
        return None
    base = load(there).runs
    cols = [c for c in DATA_COLUMNS if c in base and c in results.runs]
    if cols:
        base = base[_data_key(base, cols).isin(set(_data_key(results.runs, cols)))]
    base = base[_is_standard(base)]
    return base.reset_index(drop=True) if len(base) else None


def _draw_baseline(ax, base: pd.DataFrame) -> None:
    """The standard networks' seed-mean points (grey circles) and their fitted line per background."""
    pts = baseline_points(base)
    if pts.empty:
        return
    ax.scatter(pts["id"], pts["ood"], s=12, color="0.55", alpha=0.8, label="standard networks", zorder=2)
    lines = baseline_line(base)
    xs = np.array([0.45, 1.0])
    for k, ((lo, hi), (slope, intercept, n)) in enumerate(lines.items()):
        grey = "0.35" if len(lines) == 1 else str(0.25 + 0.4 * k / max(len(lines) - 1, 1))
        ax.plot(xs, slope * xs + intercept, color=grey, lw=1.2, zorder=2,
                label=f"standard fit, bg_train {range_label(lo, hi)}" if len(lines) > 1 else "standard fit")


def effective_robustness_figure(runs: pd.DataFrame, facet: str | None = "core", hue: str | None = "activation",
                                size: str | None = "width", baseline: pd.DataFrame | None = None):
    """OOD against ID probe accuracy: a point per config (seed mean, 95% CI bars), teacher and student.

    Students are coloured by `hue` (the student's activation: ReLU vs the linear control) and
    sized by `size`; teachers are black crosses. One panel per value of `facet`.

    `baseline` (runs with teacher "standard", e.g. `load_baseline`'s) and the standard runs of
    `runs` itself are drawn in every panel as grey circles (seed means) with their least-squares
    line per training background (`baseline_line`): the line standard training follows. Where
    the baseline has the panel's `facet` value, only those rows are drawn; otherwise all of them.
    Runs that are all standard (the baseline grid itself) give just the points and lines.
    """
    missing = [c for c in PROBE if c not in runs]
    if missing:
        raise ValueError(f"not a distill runs table: missing {', '.join(missing)}")
    everything = _live(runs)
    standard = everything[_is_standard(everything)]
    df = everything[~_is_standard(everything)]
    parts = [b for b in (_live(baseline) if baseline is not None else None, standard) if b is not None and len(b)]
    base = pd.concat(parts, ignore_index=True) if parts else None
    if base is not None:
        base = base[_is_standard(base)]
    facets = _groups(df if len(df) or base is None else base, facet)
    hues = _groups(df, hue)
    sizes = values_of(df, size) if size and size in df else []
    fig = new_figure(4.0 * len(facets) + 2.6, 4.8)
    axes = fig.subplots(1, len(facets), squeeze=False)[0]
    colours = {h: f"C{i}" for i, h in enumerate(hues)}
    for ax, f in zip(axes, facets):
        if base is not None:
            fb = base[base[facet] == f] if f is not None and facet in base else base
            _draw_baseline(ax, fb if len(fb) else base)
        _draw_probes(ax, df if f is None else df[df[facet] == f], hue, hues, colours, size, sizes)
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
    if len(df):
        title = "Linear probes on teacher and distilled students\na point per config: mean over seeds ± 95% CI"
        if base is not None:
            title += "; grey: standard networks trained on the labels and their line"
    else:
        title = ("Linear probes on standard networks\ntrained on the labels: a point per config\n"
                 "(seed mean), a line per training background")
    fig.suptitle(title)
    return fig


def _draw_probes(ax, sub: pd.DataFrame, hue, hues, colours: dict, size, sizes) -> None:
    """One panel of `effective_robustness_figure`: students' seed means with 95% CI bars (coloured
    by `hue`, sized by `size`), teachers as black crosses."""
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
    if len(stats):
        ax.scatter(stats["teacher_probe_id_acc_mean"], stats["teacher_probe_ood_acc_mean"], marker="x", s=40,
                   color="black", label="teacher", zorder=3)


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


def distill_panels(results: Results, axes: list[str]) -> list[Panel]:
    """The distillation figures: effective robustness (against the distill_baseline line when its
    results lie next to these) and phase diagrams of the student's OOD gap over the axes present."""
    runs = results.runs
    standard_only = "teacher" in runs and bool((runs["teacher"].astype(str) == STANDARD).all())
    if standard_only:  # the baseline grid itself: no student to speak of
        return [Panel("effective_robustness", "Distillation",
                      "OOD against ID probe accuracy of standard networks trained on the labels and the "
                      "least-squares line per training background: the effective-robustness baseline of "
                      "the distillation grids", effective_robustness_figure(runs))]
    baseline = load_baseline(results)
    facet = "core" if _synthetic(runs) else None  # real digits have no core type
    out = [Panel("effective_robustness", "Distillation",
                 "OOD against ID probe accuracy for the teacher and the distilled students "
                 "(the paper's effective-robustness view)"
                 + ("; grey: standard networks trained on the labels and their line" if baseline is not None else ""),
                 effective_robustness_figure(runs, facet=facet, baseline=baseline),
                 robustness_note(results, baseline))]
    if len(axes) >= 2:
        x, y = axes[0], axes[1]
        facet = axes[2] if len(axes) >= 3 else None
        words = {"student_err_ratio_log10": "log10 of the student's OOD / ID representation error (which cells fail)",
                 "student_ood_gap": "the student's probe accuracy ID minus OOD",
                 "bg_mean_proj": "the drift along the background mean (coherent: contamination)",
                 "bg_norm": "the learned background weights' norm, net of init (large with bg_mean_proj ~ 0: over-fitting)"}
        for m, fig in signature_figures(runs, x, y, facet):
            out.append(Panel(f"signature_{m}_{x}_{y}" + (f"_by_{facet}" if facet else ""), "Distillation",
                             f"{words.get(m, m)}, ReLU students, over {x} × {y}" + (f", by {facet}" if facet else ""),
                             fig))
    if _varies(results, "width", axes) and _varies(results, "core_dim", axes):
        out.append(Panel("phase_student_ood_gap", "Distillation",
                         "the student's OOD gap (probe accuracy ID minus OOD) over width × core_dim",
                         ood_gap_phase_figure(runs)))
    if _varies(results, "width", axes) and _varies(results, "teacher_bias", axes):
        out.append(Panel("phase_student_ood_gap_teacher_bias_width", "Distillation",
                         "the student's OOD gap (probe accuracy ID minus OOD) over width × teacher bias scale",
                         ood_gap_phase_figure(runs, x="width", y="teacher_bias", facet=None)))
        if "student_rep_err_ood" in runs:
            out.append(Panel("phase_student_rep_err_ood_teacher_bias_width", "Distillation",
                             "the student's OOD representation error over width × teacher bias scale",
                             ood_gap_phase_figure(runs, x="width", y="teacher_bias", facet=None,
                                                  metric="student_rep_err_ood")))
    return out
