"""Comparisons at matched in-distribution fit: per arm (e.g. optimizer), the learning rate whose
ID loss reaches a target, so that two arms are compared where they fit equally well.

An optimizer that fits less in the same number of steps also drifts less: comparing SGD and Adam
at one learning rate each compares two fits as much as two optimizers. Given a grid with a rate
axis inside each arm, `matched_rates` picks per arm the rate whose seed-mean ID metric reaches the
target and lies closest to it (the largest mean at or under the target), and `matched_runs` keeps
the runs at those rates. Pure functions of the runs table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contamination import experiments

# The columns that tell one optimizer arm from another (the rate aside).
ARM_COLUMNS = ("optimizer", "momentum", "weight_decay")


def experiments_in(runs: pd.DataFrame) -> list[experiments.Experiment]:
    """The experiments the runs ran, in registry order: by their `experiment` column, or in a table
    without one, those whose fit metric is a column."""
    if "experiment" in runs:
        names = set(runs["experiment"].astype(str))
        return [e for e in experiments.REGISTRY.values() if e.name in names]
    return [e for e in experiments.REGISTRY.values() if e.fit_metric in runs]


def experiment_of(runs: pd.DataFrame) -> experiments.Experiment:
    """The runs' experiment (`Experiment.fit_metric`, `compared`): the one they all ran, else the
    default experiment."""
    present = experiments_in(runs)
    return present[0] if len(present) == 1 else experiments.get(experiments.DEFAULT)


def fit_metric(runs: pd.DataFrame) -> str:
    """The ID fit metric of the runs' experiment (e.g. `id_loss`, or a student's ID error)."""
    return experiment_of(runs).fit_metric


def rate_varies_within_arm(runs: pd.DataFrame, rate: str = "lr", arm=ARM_COLUMNS) -> bool:
    """Whether some arm (optimizer settings) was trained at more than one rate."""
    arm = [c for c in arm if c in runs]
    if rate not in runs or not arm:
        return False
    return bool(runs.groupby(arm, observed=True, dropna=False)[rate].nunique().max() > 1)


def _means(runs: pd.DataFrame, metric: str, keys: list[str]) -> pd.DataFrame:
    df = runs
    if "diverged" in df:
        df = df[~df["diverged"].astype(bool)]
    g = df.groupby(keys, observed=True, dropna=False)
    out = g[metric].agg(["mean", "size"]).reset_index().rename(columns={"mean": metric, "size": "n"})
    # a rate with a diverged (or non-finite) seed is not a rate that fits
    total = runs.groupby(keys, observed=True, dropna=False).size().rename("n_all").reset_index()
    out = out.merge(total, on=keys, how="left")
    return out[(out["n"] == out["n_all"]) & np.isfinite(out[metric])].drop(columns="n_all")


def matched_rates(runs: pd.DataFrame, metric: str | None = None, target: float | None = None, *,
                  rate: str = "lr", arm=ARM_COLUMNS, by=()) -> pd.DataFrame:
    """Per group of `by` and per arm, the rate whose seed-mean `metric` reaches `target`.

    `metric` (default `fit_metric`) is an ID loss or error, lower is better. The chosen rate is the
    one whose seed mean is the largest at or under the target: the closest match from below the
    grid allows. `target` defaults, per group of `by`, to the loosest fit every arm reaches: the
    largest over arms of each arm's best (smallest) seed mean, so every arm has a rate and the arm
    that fits least is taken at its best. Rates with a diverged seed are left out.

    Returns a row per group and arm: the `by` and arm columns, `rate` (the chosen value, NaN where
    no rate reaches the target), the seed mean of `metric` there, `target`, `n` (seeds) and
    `reached`.
    """
    metric = metric or fit_metric(runs)
    arm, by = [c for c in arm if c in runs], [c for c in by if c in runs]
    means = _means(runs, metric, by + arm + [rate])
    rows = []
    groups = means.groupby(by, observed=True, dropna=False, sort=True) if by else [((), means)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        best = g.groupby(arm, observed=True, dropna=False)[metric].min()
        tgt = float(best.max()) if target is None else float(target)
        for arm_key, a in g.groupby(arm, observed=True, dropna=False, sort=True):
            arm_key = arm_key if isinstance(arm_key, tuple) else (arm_key,)
            ok = a[a[metric] <= tgt * (1 + 1e-9)]
            row = {**dict(zip(by, key)), **dict(zip(arm, arm_key)), "target": tgt}
            if len(ok):
                pick = ok.loc[ok[metric].idxmax()]
                row.update({rate: pick[rate], metric: pick[metric], "n": int(pick["n"]), "reached": True})
            else:
                row.update({rate: np.nan, metric: float(a[metric].min()), "n": 0, "reached": False})
            rows.append(row)
    return pd.DataFrame(rows)


def matched_runs(runs: pd.DataFrame, selection: pd.DataFrame, *, rate: str = "lr") -> pd.DataFrame:
    """The runs at the rates `matched_rates` chose (its rows with `reached`)."""
    keys = [c for c in selection.columns if c in runs and c != rate and c not in ("n",)]
    keys = [c for c in keys if c not in (fit_metric(runs),)]
    chosen = selection[selection["reached"]][keys + [rate]]
    return runs.merge(chosen, on=keys + [rate], how="inner")


def label_axes(runs: pd.DataFrame, axes, rate: str = "lr", arm=ARM_COLUMNS) -> list[str]:
    """The axes among `axes` that only name an arm and rate (e.g. a `training` table axis whose
    entries set optimizer and lr): constant at each (arm, rate) and varying across them."""
    keys = [c for c in (*arm, rate) if c in runs]
    out = []
    for a in axes:
        if a in keys or a not in runs:
            continue
        if runs.groupby(keys, observed=True, dropna=False)[a].nunique(dropna=False).max() <= 1:
            out.append(a)
    return out


def matched_table(runs: pd.DataFrame, axes, target: float | None = None, rate: str = "lr",
                  arm=ARM_COLUMNS) -> tuple[pd.DataFrame, str, list[str]]:
    """The matched comparison of a grid: per group of the other varying axes and per arm, the chosen
    rate (`matched_rates`) and the seed means (min-max over seeds in brackets) of COMPARED there.
    Returns the table, the fit metric and the grouping axes."""
    metric = fit_metric(runs)
    df = runs
    if "student_rep_err_id" in runs and "student_rep_err_ood" in runs:
        df = runs.assign(student_err_ratio=runs["student_rep_err_ood"] / runs["student_rep_err_id"])
    names = label_axes(df, axes, rate, arm)
    by = [a for a in axes if a not in names and a not in (*arm, rate) and a in df]
    sel = matched_rates(df, metric, target, rate=rate, arm=arm, by=by)
    chosen = matched_runs(df, sel, rate=rate)
    keys = [c for c in (*by, *[c for c in arm if c in df]) if c in chosen]
    # what a matched comparison reports (the experiment's `compared`): the fit, then the OOD side
    compared = [c for c in experiment_of(runs).compared if c in chosen]
    rows = []
    for key, g in chosen.groupby(keys, observed=True, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = {**dict(zip(keys, key)), rate: g[rate].iloc[0], "n": len(g)}
        for c in compared:
            v = g[c].to_numpy(float)
            row[c] = v.mean()
            row[f"{c}_min"], row[f"{c}_max"] = v.min(), v.max()
        rows.append(row)
    out = pd.DataFrame(rows)
    missing = sel[~sel["reached"]]
    if len(missing):
        out = pd.concat([out, missing.drop(columns=["reached", "n"], errors="ignore")], ignore_index=True)
    if len(out):
        out["target"] = out[keys].merge(sel[keys + ["target"]], on=keys, how="left")["target"].to_numpy() \
            if keys else sel["target"].iloc[0]
    return out, metric, by


def matched_figure(runs: pd.DataFrame, metric: str, selection: pd.DataFrame, rate: str = "lr",
                   arm=ARM_COLUMNS, by=()):
    """The ID fit (seed mean, log scale) against the rate, a line per arm, one panel per group of
    `by` (up to 6); the target as a dashed line and the chosen rates circled."""
    from .style import new_figure, plain_log_ticks

    arm, by = [c for c in arm if c in runs], [c for c in by if c in runs]
    means = _means(runs, metric, by + arm + [rate])
    groups = list(means.groupby(by, observed=True, sort=True)) if by else [((), means)]
    groups = groups[:6]
    fig = new_figure(3.6 * len(groups) + 1.5, 3.6)
    axs = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (key, g) in zip(axs, groups):
        key = key if isinstance(key, tuple) else (key,)
        sel = selection
        for c, v in zip(by, key):
            sel = sel[sel[c] == v]
        for i, (arm_key, a) in enumerate(g.groupby(arm, observed=True, sort=True)):
            arm_key = arm_key if isinstance(arm_key, tuple) else (arm_key,)
            a = a.sort_values(rate)
            name = ", ".join(f"{c} {v:g}" if isinstance(v, (int, float, np.floating)) else str(v)
                             for c, v in zip(arm, arm_key))
            ax.plot(a[rate], a[metric], "o-", color=f"C{i}", ms=3, label=name)
            s = sel
            for c, v in zip(arm, arm_key):
                s = s[s[c] == v]
            s = s[s["reached"]]
            if len(s):
                ax.scatter(s[rate], s[metric], s=90, facecolors="none", edgecolors=f"C{i}", zorder=3)
        if len(sel):
            ax.axhline(float(sel["target"].iloc[0]), color="0.5", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax, g[rate])  # no minor labels: they overlapped the majors
        ax.set_xlabel(rate)
        ax.set_ylabel(f"{metric} (seed mean)")
        if by:
            ax.set_title(", ".join(f"{c} = {v}" for c, v in zip(by, key)), fontsize=9)
    axs[-1].legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"ID fit against {rate}, per optimizer: circled, the rate that reaches the target (dashed)")
    return fig
