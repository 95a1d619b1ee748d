"""Training curves from the long `curves` table: seed means with 95% CI bands against steps
(or against the rescaled time eta * t / m, where the theory predicts a collapse)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.lines import Line2D

from .aggregate import aggregate
from .phase import diverged_note
from .select import values_of
from .style import NOISE_CAPTION, clipped_band, fmt, group_label, fmt_value, new_figure, noise_note, plain_log_ticks, short

PAPER_PANELS = (("id_loss", "ood_loss"), ("core_norm", "bg_norm"))
BG_PANELS = (("bg_mean_proj",), ("bg_grad_net", "bg_grad_total"), ("bg_grad_balance",))
# The ratio bg_grad_balance is drawn only where its denominator, bg_grad_total, is at least this
# share of the largest total in the figure: a ratio of two near-zero terms is noise, not imbalance.
RATIO_FLOOR = 0.05
STYLES = ("-", "--", ":", "-.")
RESCALED = "eta_t_over_m"
BAND_WORDS = {"std": "± 1 std over seeds", "ci95": "95% CI of the mean"}


def curve_table(curves: pd.DataFrame, by: list[str], metrics: list[str], x: str = "step") -> pd.DataFrame:
    """Seed statistics per (by..., x): as `aggregate`, diverged runs excluded and counted per point."""
    return aggregate(curves, [*by, x], metrics)


def rescaled_time(curves: pd.DataFrame) -> pd.Series:
    """eta * t / m: the theory's time scales are linear in m / eta (needs lr, width and step columns)."""
    return curves["lr"] * curves["step"] / curves["width"]


def _spread(xs: list[np.ndarray], ys: list[np.ndarray], end: float, n_points: int) -> float:
    """Std across curves (x ascending), linearly interpolated on n_points evenly spaced in (0, end], averaged."""
    grid = np.linspace(0.0, end, n_points + 1)[1:]
    at = np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys)])
    return float(at.std(axis=0).mean())


def collapse_score(curves: pd.DataFrame, metric: str, n_points: int = 50) -> float:
    """How much rescaling time to eta * t / m brings the (lr, width) curves of `metric` together.

    Per (lr, width) config the seed-mean curve (diverged runs excluded, other axes pooled, as
    `curve_table`). The spread of the curves at a time is their standard deviation across configs
    (linear interpolation between logged points), averaged over `n_points` times evenly spaced in
    (0, end]:

    - at equal steps t, end = T, the largest step every config reaches;
    - at equal rescaled time s = lr * t / width, end = S, the smallest final s over the configs
      (the range every config covers).

    Returns spread at equal s / spread at equal t: below 1 the rescaling collapses the curves
    (near 0: onto one curve), above 1 it separates them. NaN with fewer than 2 configs left or
    when the curves do not differ at equal steps. Needs lr, width and step columns.
    """
    table = curve_table(curves, ["lr", "width"], [metric])
    steps, s_times, means = [], [], []
    for (lr, width), g in table.groupby(["lr", "width"], sort=True):
        g = g.sort_values("step")
        ok = np.isfinite(g[f"{metric}_mean"].to_numpy(dtype=float))
        if not ok.any():  # every run of the config diverged
            continue
        t = g["step"].to_numpy(dtype=float)[ok]
        steps.append(t)
        s_times.append(float(lr) * t / float(width))
        means.append(g[f"{metric}_mean"].to_numpy(dtype=float)[ok])
    if len(means) < 2:
        return float("nan")
    t_end = min(t[-1] for t in steps)
    s_end = min(s[-1] for s in s_times)
    if not (t_end > 0 and s_end > 0):
        return float("nan")
    at_steps = _spread(steps, means, t_end, n_points)
    at_s = _spread(s_times, means, s_end, n_points)
    return at_s / at_steps if at_steps > 0 else float("nan")


def _colours(n: int, sequential: bool):
    if sequential and n > 2:
        cmap = colormaps["viridis"]
        return [cmap(0.8 * i / (n - 1)) for i in range(n)]  # stop short of viridis' pale yellow
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _n_diverged_runs(curves: pd.DataFrame) -> int:
    if "diverged" not in curves:
        return 0
    return int(curves.loc[curves["diverged"].astype(bool), "run_id"].nunique())


def curves_figure(curves: pd.DataFrame, panels=PAPER_PANELS, *, hue: str | None = None, row: str | None = None,
                  x: str = "step", xlabel: str | None = None, averaged: list[str] = (), title: str | None = None,
                  band: str = "std", logx: bool = False):
    """A column per panel (a group of metrics told apart by line style), a row per value of `row`,
    a colour per value of `hue`; lines are seed means, shaded bands ± 1 std (or `band="ci95"`)."""
    panels = [[m for m in p if m in curves] for p in panels]
    panels = [p for p in panels if p]
    metrics = [m for p in panels for m in p]
    by = [a for a in (row, hue) if a]
    ratio_floor = "bg_grad_balance" in metrics and "bg_grad_total" in curves
    table = curve_table(curves, by, metrics + (["bg_grad_total"] if ratio_floor and "bg_grad_total" not in metrics
                                               else []), x)
    floor = RATIO_FLOOR * np.nanmax(table["bg_grad_total_mean"].to_numpy(dtype=float)) if ratio_floor else None
    rows = values_of(table, row) if row else [None]
    hues = values_of(table, hue) if hue else [None]
    numeric_hue = hue is not None and pd.api.types.is_numeric_dtype(table[hue])
    colours = _colours(len(hues), numeric_hue)
    fig = new_figure(3.9 * len(panels) + (1.6 if hue else 0.3), 2.9 * len(rows) + 0.8)
    axes = fig.subplots(len(rows), len(panels), squeeze=False, sharex=True)
    noted = False
    for i, rv in enumerate(rows):
        sub = table if rv is None else table[table[row] == rv]
        for j, group in enumerate(panels):
            ax = axes[i, j]
            noted |= _draw_panel(ax, sub, group, x, hue, hues, colours, band, logx, floor)
            if not np.isfinite(sub[[f"{m}_mean" for m in group]].to_numpy(dtype=float)).any():
                ax.text(0.5, 0.5, "no runs left: every run diverged", transform=ax.transAxes, ha="center",
                        va="center", color="0.4")
                ax.set_yticks([])
            if logx:
                ax.set_xscale("log")
                plain_log_ticks(ax, table[x])
            ax.set_ylabel(group_label(group))
            if i == len(rows) - 1:
                ax.set_xlabel(xlabel or x)
            head = f"{row} = {fmt_value(rv)}" if rv is not None else ""
            ax.set_title(head if j == 0 or not head else "", loc="left")
            if len(group) > 1:
                ax.legend([Line2D([], [], color="0.3", ls=STYLES[k % len(STYLES)]) for k in range(len(group))],
                          [short(m) for m in group], frameon=False, fontsize=8)
    for j in range(len(panels)):  # one scale per metric: every row of a column shares its y-limits
        lows, highs = zip(*(axes[i, j].get_ylim() for i in range(len(rows))))
        for i in range(len(rows)):
            axes[i, j].set_ylim(min(lows), max(highs))
    if hue:
        fig.legend([Line2D([], [], color=c, lw=2) for c in colours], [fmt_value(v) for v in hues], title=hue,
                   loc="outside right center", frameon=False)
    fig.suptitle(_caption(table, curves, band, averaged, title, floor, noted))
    return fig


def _draw_panel(ax, sub: pd.DataFrame, group: list[str], x: str, hue, hues, colours, band: str, logx: bool,
                floor) -> bool:
    """One panel of `curves_figure`: each metric of `group` (line styles) per hue value (colours),
    seed means with their bands; True where a band outgrows the lines' range (a noise note)."""
    drawn, halves = [], []
    for c, hv in zip(colours, hues):
        h = sub if hv is None else sub[sub[hue] == hv]
        h = h.sort_values(x)
        xs = h[x].to_numpy(dtype=float)
        keep = xs > 0 if logx else np.ones_like(xs, dtype=bool)
        for k, m in enumerate(group):
            mean = h[f"{m}_mean"].to_numpy(dtype=float)
            spread = h[f"{m}_{band}"].fillna(0).to_numpy(dtype=float)
            if m == "bg_grad_balance" and floor is not None:  # a ratio of near-zero terms: not drawn
                mean = np.where(h["bg_grad_total_mean"].to_numpy(dtype=float) >= floor, mean, np.nan)
                if not np.isfinite(mean).any() and not ax.texts:
                    ax.text(0.5, 0.5, "not drawn: the total class gradient\nis under the floor (nothing "
                            "to cancel)", transform=ax.transAxes, ha="center", va="center", color="0.4",
                            fontsize=8)
            ax.plot(xs[keep], mean[keep], STYLES[k % len(STYLES)], color=c, lw=1.6)
            lo, hi = clipped_band(mean, spread, m)
            ax.fill_between(xs[keep], lo[keep], hi[keep], color=c, lw=0, alpha=0.18 if len(hues) <= 4 else 0.1)
            drawn.append(mean[keep])
            halves.append(np.where(np.isfinite(mean), (hi - lo) / 2, np.nan)[keep])
    return noise_note(ax, drawn, halves)


def _caption(table: pd.DataFrame, curves: pd.DataFrame, band: str, averaged, title, floor, noted: bool) -> str:
    """The title lines of `curves_figure`: what lines and bands are, the floor, notes."""
    what = BAND_WORDS[band]
    n_seeds = int(table["n_runs"].min()) if len(table) else 0
    sub_line = f"lines: mean of {n_seeds} runs (seeds" + (f", pooled over {', '.join(averaged)}" if averaged else "") \
        + f"); bands: {what}"
    lines = [title or "Training curves", sub_line]
    if floor is not None:
        lines.append(f"class gradient imbalance drawn where the total class gradient is at least {fmt(floor)} "
                     f"({RATIO_FLOOR:.0%} of its largest value here): below it there is nothing to cancel")
    if noted:
        lines.append(NOISE_CAPTION)
    n_div = _n_diverged_runs(curves)
    if n_div:
        lines.append(diverged_note(n_div, "curves"))
    return "\n".join(lines)


def collapse_figure(curves: pd.DataFrame, metrics=("bg_mean_proj",), *, averaged: list[str] = (),
                    title: str | None = None, band: str = "std"):
    """Each metric against raw steps (left) and against eta * t / m (right), a line per (lr, width):
    if time scales are linear in m / eta, the right-hand curves fall on one another."""
    metrics = [m for m in metrics if m in curves]
    curves = curves.assign(**{RESCALED: rescaled_time(curves)})
    configs = curves[["lr", "width"]].drop_duplicates()
    configs = configs.assign(ratio=configs["lr"] / configs["width"]).sort_values(["ratio", "lr"])
    key = [f"η={fmt_value(lr)}, m={fmt_value(w)}" for lr, w in zip(configs["lr"], configs["width"])]
    label_of = dict(zip(zip(configs["lr"], configs["width"]), key))
    curves = curves.assign(config=pd.Categorical([label_of[(a, b)] for a, b in zip(curves["lr"], curves["width"])],
                                                 categories=key, ordered=True))
    colours = _colours(len(key), sequential=True)
    span = configs["ratio"].max() / configs["ratio"].min()
    logx = bool(span >= 10)
    fig = new_figure(8.6 + 1.8, 2.9 * len(metrics) + 0.9)
    axes = fig.subplots(len(metrics), 2, squeeze=False)
    noted = False
    for i, m in enumerate(metrics):
        for j, x in enumerate(("step", RESCALED)):
            table = curve_table(curves, ["config"], [m], x)
            ax = axes[i, j]
            drawn, halves = [], []
            for c, cfg in zip(colours, key):
                h = table[table["config"] == cfg].sort_values(x)
                xs = h[x].to_numpy(dtype=float)
                keep = xs > 0 if logx and j == 1 else np.ones_like(xs, dtype=bool)
                mean, sp = h[f"{m}_mean"].to_numpy(dtype=float), h[f"{m}_{band}"].fillna(0).to_numpy(dtype=float)
                ax.plot(xs[keep], mean[keep], color=c, lw=1.6)
                lo, hi = clipped_band(mean, sp, m)
                ax.fill_between(xs[keep], lo[keep], hi[keep], color=c, lw=0, alpha=0.15 if len(key) <= 4 else 0.08)
                drawn.append(mean[keep])
                halves.append((hi - lo)[keep] / 2)
            noted |= noise_note(ax, drawn, halves)
            if logx and j == 1:
                ax.set_xscale("log")
                plain_log_ticks(ax, table[x])
            ax.set_ylabel(short(m))
            ax.set_xlabel("step t" if j == 0 else "η t / m  (lr × step / width)")
            if i == 0:
                ax.set_title("raw steps" if j == 0 else "rescaled time η t / m")
    fig.legend([Line2D([], [], color=c, lw=2) for c in colours], key, title="lr η, width m",
               loc="outside right center", frameon=False, fontsize=8)
    pooled = f" pooled over {', '.join(averaged)}" if averaged else ""
    lines = [title or "Time-scale collapse: curves against η t / m",
             f"lines: seed means{pooled}; bands: {BAND_WORDS[band]}"
             + ("; rescaled time on a log axis (step 0 not shown)" if logx else "")]
    if noted:
        lines.append(NOISE_CAPTION)
    n_div = _n_diverged_runs(curves)
    if n_div:
        lines.append(diverged_note(n_div, "curves"))
    fig.suptitle("\n".join(lines))
    return fig
