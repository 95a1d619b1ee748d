"""Phase diagrams: a metric's seed mean over two grid axes as an annotated heatmap (faceted
over a third), and metrics against a single axis as lines with 95% CI error bars."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .aggregate import aggregate, long_stats
from .select import values_of
from .style import (NOISE_CAPTION, ACCURACY, bounds, LOGARITHMIC, SIGNED, axis_label, fmt, fmt_value, group_label, is_geometric, label, new_figure, short, text_colour,
                    clipped_err, noise_note, plain_log_ticks, tick_labels, wide_positive, wrap)

DEFAULT_PANELS = (("id_acc", "ood_acc"), ("id_loss", "ood_loss"), ("bg_mean_proj",), ("act_asym",))
# A cell that does not fit its ID data says little about contamination: below this mean ID
# accuracy, phase diagrams of every other metric hatch the cell (its value still shown).
ID_FIT = 0.97
UNDER_FIT_NOTE = f"hatched: mean ID accuracy < {ID_FIT:g} (under-fitting, not contamination)"
# Metrics whose value is a lower bound for some runs (the ladder's top): metric -> its 0/1 flag column
CENSORED = {"critical_shift": "critical_shift_censored"}
CENSORED_NOTE = ("> x: every run of the cell held its accuracy up to the ladder's top x; ≥ x: some did, so the "
                 "mean is a lower bound")


def phase_table(runs: pd.DataFrame, x: str, y: str, metric: str, facet: str | None = None) -> pd.DataFrame:
    """One row per (facet, y, x) cell: n_runs, n_diverged, n, mean, std, ci95 of `metric`.

    Runs at every value of the axes not named are pooled, i.e. averaged over. Where the runs
    have `id_acc`, also the cell's `id_acc_mean` and `under_fit` (id_acc_mean < ID_FIT; False
    where no run is left to say).
    """
    by = [a for a in (facet, y, x) if a]
    fit = "id_acc" in runs and metric != "id_acc"
    censor = CENSORED.get(metric)
    extra = (["id_acc"] if fit else []) + ([censor] if censor in runs else [])
    agg = aggregate(runs, by, [metric, *extra])
    out = long_stats(agg, metric)
    if "id_acc" in runs:
        out["id_acc_mean"] = agg["id_acc_mean"].to_numpy(dtype=float)
        out["under_fit"] = out["id_acc_mean"] < ID_FIT  # NaN (all diverged) compares False
    if censor in runs:  # the share of the cell's runs whose value is only a lower bound
        out["censored"] = agg[f"{censor}_mean"].to_numpy(dtype=float)
    return out


def _norm(metric: str, values: np.ndarray) -> tuple[Normalize, str]:
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if metric in LOGARITHMIC and lo > 0:
        return LogNorm(lo, max(hi, lo * 1.01)), "viridis"
    if metric in ACCURACY:
        return Normalize(min(lo, 0.5), max(hi, 1.0)), "viridis"
    if metric in SIGNED and lo < 0 < hi:
        m = max(-lo, hi)
        return Normalize(-m, m), "RdBu_r"
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 0.5 * max(abs(lo), 1e-3), hi + 0.5 * max(abs(hi), 1e-3)
    return Normalize(lo, hi), "viridis"


def _subtitle(table: pd.DataFrame, averaged: list[str], where: dict | None) -> str:
    n = table.loc[table["n_runs"] > 0, "n_runs"]
    if n.empty:
        return "no runs"
    per = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}–{int(n.max())}"
    parts = [f"mean ± 95% CI of {per} runs per cell (seeds"
             + (f", pooled over {', '.join(averaged)})" if averaged else ")")]
    if where:
        parts.append("at " + ", ".join(f"{k} = {fmt_value(v)}" for k, v in where.items()))
    return "; ".join(parts)


def diverged_note(n_diverged: int, what: str = "means") -> str:
    """The sentence every figure and table with diverged runs carries."""
    s = "" if n_diverged == 1 else "s"
    return f"{n_diverged} diverged run{s} excluded from the {what}"


def phase_figure(table: pd.DataFrame, x: str, y: str, metric: str, facet: str | None = None, *,
                 averaged: list[str] = (), where: dict | None = None, title: str | None = None):
    """An annotated heatmap per facet value, one shared colour bar; cells with diverged runs marked '†',
    cells that under-fit their ID data (`under_fit` of `phase_table`) hatched grey unless `metric` is id_acc."""
    xs, ys = values_of(table, x), values_of(table, y)
    facets = values_of(table, facet) if facet else [None]
    ncols = min(len(facets), 4)
    nrows = math.ceil(len(facets) / ncols)
    xt, yt = tick_labels(xs, 12), tick_labels(ys, 18)
    x_lines = max(t.count("\n") + 1 for t in xt)
    y_chars = max(len(line) for t in yt for line in t.split("\n"))
    # Inches: cells big enough for two lines of text, room for the y tick labels of the first column.
    panel_w = max(2.4, 0.95 * len(xs) + 0.5)
    panel_h = max(2.2, max(0.6, 0.16 * max(t.count("\n") + 1 for t in yt)) * len(ys) + 0.9 + 0.15 * x_lines)
    w = ncols * panel_w + 0.07 * y_chars + 0.6 + 1.4
    h = nrows * panel_h + 1.0
    fig = new_figure(w, h)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    norm, cmap_name = _norm(metric, table["mean"].to_numpy(dtype=float))
    cmap = colormaps[cmap_name].with_extremes(bad="#d9d9d9")
    fontsize = 9 if len(xs) <= 6 else 7
    hatch = "under_fit" in table and metric != "id_acc"
    n_hatched = 0
    im = None
    for k, ax in enumerate(axes.flat):
        if k >= len(facets):
            ax.set_visible(False)
            continue
        f = facets[k]
        im, hatched = _heatmap(ax, table if f is None else table[table[facet] == f], x, y, xs, ys, cmap, norm,
                               fontsize, hatch)
        n_hatched += hatched
        ax.set_xticks(range(len(xs)), xt)
        ax.set_yticks(range(len(ys)), yt)
        ax.tick_params(length=0)
        ax.set_xlabel(axis_label(x, xs))
        if k % ncols == 0:
            ax.set_ylabel(axis_label(y, ys))
        ax.spines[:].set_visible(False)
        if f is not None:
            ax.set_title(f"{facet} = {fmt_value(f)}")
    cbar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9, aspect=25)
    cbar.set_label(wrap(short(metric), 22))
    if hasattr(cbar.formatter, "set_useOffset"):
        cbar.formatter.set_useOffset(False)
    lines = [title or f"{label(metric)} over {x} × {y}" + (f", by {facet}" if facet else ""),
             _subtitle(table, list(averaged), where)]
    n_div = int(table["n_diverged"].sum())
    if n_div:
        lines.append(f"† {diverged_note(n_div)} (grey: every run of the cell diverged)")
    if n_hatched:
        lines.append(UNDER_FIT_NOTE)
    if "censored" in table and (table["censored"].fillna(0) > 0).any():
        lines.append(CENSORED_NOTE)
    fig.suptitle("\n".join(lines))
    return fig


def _heatmap(ax, sub: pd.DataFrame, x: str, y: str, xs, ys, cmap, norm, fontsize: int, hatch: bool):
    """One facet of `phase_figure`: the cells' seed means as colours, their text, under-fit cells
    hatched; returns the image (for the colour bar) and how many cells were hatched."""
    n_hatched = 0
    cells = {(r[y], r[x]): r for _, r in sub.iterrows()}
    z = np.full((len(ys), len(xs)), np.nan)
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            r = cells.get((yv, xv))
            if r is not None:
                z[i, j] = r["mean"]
    im = ax.imshow(np.ma.masked_invalid(z), origin="lower", aspect="auto", cmap=cmap, norm=norm,
                   interpolation="nearest")
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            r = cells.get((yv, xv))
            under = hatch and r is not None and bool(r["under_fit"])
            if under:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=(0.85, 0.85, 0.85, 0.75),
                                       edgecolor="0.45", hatch="//", lw=0, zorder=2))
                n_hatched += 1
            ax.text(j, i, _cell_text(r), ha="center", va="center", fontsize=fontsize, zorder=3,
                    color="black" if under or not np.isfinite(z[i, j]) else text_colour(cmap(norm(z[i, j]))))
    return im, n_hatched


def _cell_text(r) -> str:
    if r is None or r["n_runs"] == 0:
        return "no runs"
    if r["n"] == 0:
        return f"all {int(r['n_runs'])}\ndiverged †"
    dag = f" †{int(r['n_diverged'])}" if r["n_diverged"] else ""
    censored = float(r.get("censored", 0.0) or 0.0)
    if censored >= 1.0:
        return f"> {fmt(r['mean'])}{dag}"
    ci = f"\n±{fmt(r['ci95'])}" if np.isfinite(r["ci95"]) else ""
    return f"{'≥ ' if censored > 0 else ''}{fmt(r['mean'])}{dag}{ci}"


def line_figure(runs: pd.DataFrame, x: str, panels=DEFAULT_PANELS, *, hue: str | None = None,
                averaged: list[str] = (), title: str | None = None):
    """Metrics against one axis: a panel per group of metrics, seed mean with 95% CI error bars; a
    line style per metric of a group and, with `hue`, a colour per value of that axis."""
    panels = [[m for m in p if m in runs] for p in panels]
    panels = [p for p in panels if p]
    metrics = [m for p in panels for m in p]
    table = aggregate(runs, [x] + ([hue] if hue else []), metrics)
    xs = values_of(table, x)
    hues = values_of(table, hue) if hue else [None]
    numeric = pd.api.types.is_numeric_dtype(table[x]) and not pd.api.types.is_bool_dtype(table[x])
    pos = np.asarray(xs, dtype=float) if numeric else np.arange(len(xs))
    fig = new_figure(3.4 * len(panels) + (1.6 if hue else 0.4), 3.3)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    rows = {h: (table if h is None else table[table[hue] == h]).set_index(x).reindex(xs) for h in hues}
    lost = pos[np.all([(r["n"].fillna(0) == 0).to_numpy() for r in rows.values()], axis=0)]
    colours = [f"C{i}" for i in range(len(hues))]
    noted = False
    for ax, group in zip(axes, panels):
        drawn, halves = [], []
        for c, h in zip(colours, hues):
            row = rows[h]
            for k, m in enumerate(group):
                err = clipped_err(row[f"{m}_mean"], row[f"{m}_ci95"], m)
                ax.errorbar(pos, row[f"{m}_mean"], yerr=err, marker="o", capsize=3, color=c,
                            linestyle="-" if k == 0 else "--", label=short(m) if h == hues[0] else None)
                drawn.append(row[f"{m}_mean"])
                halves.append(err.sum(axis=0) / 2)
        noted |= noise_note(ax, drawn, halves)
        log = _line_axes(ax, group, pos, xs, lost, numeric)
        ax.set_xlabel(f"{x} (log scale)" if log else x)
        ax.set_ylabel(short(group[0]) if len(group) == 1 else group_label(group))
        if len(group) > 1:
            ax.legend([Line2D([], [], color="0.3", ls="-" if k == 0 else "--") for k in range(len(group))],
                      [short(m) for m in group], frameon=False, fontsize=8)
    if hue:
        fig.legend([Line2D([], [], color=c, lw=2) for c in colours], [fmt_value(v) for v in hues], title=hue,
                   loc="outside right center", frameon=False)
    n = table["n_runs"]
    lines = [title or f"Final metrics against {x}",
             f"mean ± 95% CI of {int(n.min())} runs per point"
             + (f", pooled over {', '.join(averaged)}" if averaged else "")]
    if noted:
        lines.append(NOISE_CAPTION)
    n_div = int(table["n_diverged"].sum())
    if n_div:
        lines.append(diverged_note(n_div))
    fig.suptitle("\n".join(lines))
    return fig


def _line_axes(ax, group: list[str], pos, xs, lost, numeric: bool) -> bool:
    """The axes of one `line_figure` panel: y-limits of shares, the lost values marked, a log x
    axis where the values are geometric or span decades (returned), ticks at the grid's values."""
    lo, hi = np.max([bounds(m)[0] for m in group]), np.min([bounds(m)[1] for m in group])
    if np.isfinite(lo) and np.isfinite(hi):  # shares: their whole range, so that 1.00 reads as the top
        ax.set_ylim(lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo))
    for p in lost:  # every run at this value diverged: say so where the point would be
        ax.axvline(p, color="0.75", ls=":", lw=1)
        ax.text(p, 0.5, "all diverged", transform=ax.get_xaxis_transform(), rotation=90, ha="right",
                va="center", color="0.45", fontsize=8)
    log = numeric and (is_geometric(xs) or wide_positive(xs))
    if log:
        ax.set_xscale("log")
        plain_log_ticks(ax, xs)
    if not numeric or is_geometric(xs):  # label every grid value where they are evenly spaced
        ax.set_xticks(pos, [fmt_value(v) for v in xs])
        ax.minorticks_off()
    if numeric:
        ax.margins(x=0.08)
    if not numeric:
        ax.set_xlim(-0.5, len(xs) - 0.5)
    return log
