"""Scaling exponents of the theory (docs/exponents.md): the time scales T0 and T1 read from each
run's curves, log-log fits of a measured quantity against a size with 95% intervals over seeds,
and a figure per fit drawn with its data.

A fit uses one *family* of runs: those that differ only in the size it is fitted against (the
input dimension d, the number of features d0 = core_dim + bg_dim, or 1/sqrt(d)) and their seeds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator
from scipy import stats

from contamination import experiments
from contamination.config import FIELDS
from sweeps.results import RANGE_COLUMNS

from .style import fmt, fmt_value, new_figure, noise_note

# T1 is the first step at which the mean-weighted background projection sum_bg mu_j <w_k, m_j>,
# averaged over neurons, reaches this level (Theorem 2's Theta(1) quantity; its final values in
# the shipped grid lie between 0.74 and 1.09).
T1_LEVEL = 0.25
N_BOOT = 2000


@dataclasses.dataclass(frozen=True)
class Fit:
    """log y = intercept + slope log x, fitted per seed. `slope` and `intercept` are the means of
    the seeds' fits, `low`..`high` the 95% t interval of that mean over seeds, `boot_low`..
    `boot_high` the 95% percentile interval of the pooled fit over seeds resampled with
    replacement. `level` is the geometric mean of y over the family (its t interval over seeds)."""

    slope: float
    intercept: float
    low: float
    high: float
    boot_low: float
    boot_high: float
    level: float
    level_low: float
    level_high: float
    n_points: int
    n_seeds: int
    n_x: int
    n_dropped: int


def _t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t interval of the mean of `values` (NaN bounds for fewer than two)."""
    n, mean = len(values), float(np.mean(values)) if len(values) else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def _sums(lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """The sufficient statistics of a least-squares line: n, sum x, sum y, sum x^2, sum xy."""
    return np.array([len(lx), lx.sum(), ly.sum(), (lx * lx).sum(), (lx * ly).sum()])


def _line(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slope and intercept from (..., 5) sufficient statistics."""
    n, sx, sy, sxx, sxy = np.moveaxis(s, -1, 0)
    slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return slope, (sy - slope * sx) / n


def loglog_fit(x, y, seed, *, n_boot: int = N_BOOT, rng: int = 0, level: float = 0.95) -> Fit:
    """Fit y = c x^a on log-log axes, a line per seed (seeds with two distinct x or more), with
    95% intervals over seeds (see `Fit`). Points with a non-finite or non-positive x or y are
    left out and counted."""
    x, y, seed = (np.asarray(v) for v in (x, y, seed))
    ok = np.isfinite(x.astype(float)) & np.isfinite(y.astype(float)) & (x > 0) & (y > 0)
    lx, ly, seed = np.log(x[ok].astype(float)), np.log(y[ok].astype(float)), seed[ok]
    per_seed = [(lx[seed == s], ly[seed == s]) for s in pd.unique(seed)]
    per_seed = [(a, b) for a, b in per_seed if len(np.unique(a)) >= 2]
    if not per_seed:
        nan = math.nan
        return Fit(nan, nan, nan, nan, nan, nan, nan, nan, nan, 0, 0, len(np.unique(lx)), int((~ok).sum()))
    sums = np.stack([_sums(a, b) for a, b in per_seed])
    slopes, intercepts = _line(sums)
    slope, low, high = _t_interval(slopes, level)
    gm, gm_low, gm_high = _t_interval(np.array([b.mean() for _, b in per_seed]), level)
    k = len(per_seed)
    counts = np.random.default_rng(rng).multinomial(k, np.full(k, 1.0 / k), size=n_boot)
    boot, _ = _line(counts @ sums)
    tail = 100 * (1 - level) / 2
    b_low, b_high = np.percentile(boot, [tail, 100 - tail]) if k >= 2 else (math.nan, math.nan)
    used = np.concatenate([a for a, _ in per_seed])
    return Fit(float(slope), float(np.mean(intercepts)), low, high, float(b_low), float(b_high),
               math.exp(gm), math.exp(gm_low), math.exp(gm_high), len(used), k, len(np.unique(used)),
               int((~ok).sum()))


# --- time scales read from curves -----------------------------------------------------------

def crossing_step(steps, values, level: float) -> float:
    """The first step at which a logged curve reaches `level` from below, interpolated between the
    logged points around it (linearly in log step; in step where the earlier one is step 0). NaN
    where it never does, starts at or above it, or crosses within the first logging interval
    (there the logging cannot resolve when)."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(steps) < 2 or not np.isfinite(values[0]) or values[0] >= level:
        return math.nan
    above = np.flatnonzero(np.isfinite(values) & (values >= level))
    if not len(above) or above[0] < 2:
        return math.nan
    i = above[0]
    s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
    frac = (level - v0) / (v1 - v0)
    if s0 <= 0:
        return float(s0 + frac * (s1 - s0))
    return float(math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0))))


def half_rise_step(steps, values) -> float:
    """The first step at which a curve has risen half way from its step-0 value to its maximum."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2 or not np.isfinite(values).any():
        return math.nan
    top = float(np.nanmax(values))
    if not top > values[0]:
        return math.nan
    return crossing_step(steps, values, values[0] + 0.5 * (top - values[0]))


def mean_weighted_bg(df: pd.DataFrame) -> pd.Series:
    """Theorem 2's mean-weighted background projection sum_bg mu_j <w_k, m_j>, averaged over
    neurons: every background coefficient has mean mu = mean(bg_train), and bg_mean_proj is the
    projection on u = sum_bg m_j / sqrt(d_bg), so it is mu sqrt(d_bg) bg_mean_proj."""
    mu = 0.5 * (df["bg_train_low"] + df["bg_train_high"])
    return mu * np.sqrt(df["bg_dim"].astype(float)) * df["bg_mean_proj"]


def value_at(steps, values, step: float) -> float:
    """A positive logged curve at `step`, interpolated linearly in log step and log value (NaN
    outside the logged steps after 0)."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = (steps > 0) & (values > 0)
    steps, values = steps[keep], values[keep]
    if not len(steps) or not np.isfinite(step) or not steps[0] <= step <= steps[-1]:
        return math.nan
    return float(np.exp(np.interp(np.log(step), np.log(steps), np.log(values))))


def time_scales(curves: pd.DataFrame, runs: pd.DataFrame, t1_level: float = T1_LEVEL) -> pd.DataFrame:
    """Per run: T0, the half rise of the gates' class selectivity `act_asym` (Theorem 1); T1, the
    step at which the mean-weighted background projection reaches `t1_level` (Theorem 2); and
    `id_loss_3T1`, the ID loss at 3 T1, one point of each run's own dynamics (Theorem 3)."""
    cols = [c for c in ("bg_dim", "bg_train_low", "bg_train_high") if c not in curves]
    c = curves.merge(runs[["run_id", *cols]], on="run_id", how="left") if cols else curves
    c = c.assign(_mw=mean_weighted_bg(c)).sort_values(["run_id", "step"])
    rows = []
    for run_id, g in c.groupby("run_id", sort=False):
        steps = g["step"].to_numpy()
        t1 = crossing_step(steps, g["_mw"].to_numpy(), t1_level)
        rows.append({"run_id": run_id, "T0": half_rise_step(steps, g["act_asym"].to_numpy()), "T1": t1,
                     "id_loss_3T1": value_at(steps, g["id_loss"].to_numpy(), 3 * t1)})
    return pd.DataFrame(rows, columns=["run_id", "T0", "T1", "id_loss_3T1"])


def measure(runs: pd.DataFrame, curves: pd.DataFrame | None, t1_level: float = T1_LEVEL) -> pd.DataFrame:
    """The runs that did not diverge, with the sizes (d0, 1/sqrt(d)) and measured quantities the
    fits read: T0, T1, final losses, and `bg_per_feature`, the learned background weight per
    feature, bg_norm / sqrt(d_bg) (bg_norm: mean over neurons of |P_bg (w_k - w_k(0))|)."""
    keep = ~runs["diverged"].astype(bool) if "diverged" in runs else pd.Series(True, index=runs.index)
    m = runs[keep].copy()
    m["d0"] = m["core_dim"] + m["bg_dim"]
    m["inv_sqrt_d"] = 1.0 / np.sqrt(m["input_dim"].astype(float))
    m["bg_per_feature"] = m["bg_norm"] / np.sqrt(m["bg_dim"].astype(float))
    if curves is not None and len(curves) and {"act_asym", "bg_mean_proj"} <= set(curves):
        m = m.merge(time_scales(curves[curves["run_id"].isin(m["run_id"])], m, t1_level), on="run_id", how="left")
    else:
        m["T0"], m["T1"], m["id_loss_3T1"] = math.nan, math.nan, math.nan
    return m


# --- what is fitted ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Spec:
    """One exponent: `y` against the size `x` on the `activation`'s runs, and the paper's
    prediction (`predicted`, the slope; NaN where only a sign is predicted)."""

    name: str
    y: str
    x: str
    activation: str
    predicted: float
    claim: str
    ylabel: str
    no_decay: bool = False  # only runs without weight decay (it shrinks the init: 1/sqrt(d) built in)


SPECS = (
    Spec("T0_vs_d", "T0", "input_dim", "relu", -0.5, "Theorem 1: T0 ~ m / (eta sqrt d), slope -1/2",
         "T0 (steps to half the rise of act_asym)"),
    Spec("T0_vs_d0", "T0", "d0", "relu", 0.0, "Theorem 1: T0 ~ m / (eta sqrt d) has no d0, slope 0",
         "T0 (steps to half the rise of act_asym)"),
    Spec("T1_vs_d0", "T1", "d0", "relu", -1.0, "Theorem 2: T1 ~ m / (eta d0), slope -1",
         "T1 (steps to mean-weighted bg projection {level})"),
    Spec("T1_vs_d", "T1", "input_dim", "relu", 0.0, "Theorem 2: T1 ~ m / (eta d0) has no d, slope 0",
         "T1 (steps to mean-weighted bg projection {level})"),
    Spec("id_risk_vs_d0", "id_loss", "d0", "relu", math.nan, "Theorem 3: ID risk o(1), slope < 0",
         "final ID hinge loss"),
    Spec("id_risk_3T1_vs_d0", "id_loss_3T1", "d0", "relu", math.nan,
         "Theorem 3 at 3 T1 (each run's own T1): ID risk o(1), slope < 0", "ID hinge loss at 3 T1"),
    Spec("ood_risk_vs_d0", "ood_loss", "d0", "relu", 0.0, "Theorem 3: OOD risk Theta(1), slope 0 (a level)",
         "final OOD hinge loss"),
    Spec("linear_bg_vs_inv_sqrt_d", "bg_per_feature", "inv_sqrt_d", "linear", 1.0,
         "Theorem 4: background projections O~(1/sqrt d), slope >= 1 against 1/sqrt d",
         "learned background weight per feature", no_decay=True),
)
XLABELS = {"input_dim": "input dimension d", "d0": "features d0 = core_dim + bg_dim", "inv_sqrt_d": "1 / sqrt(d)"}
# The config fields a size is made of: a family holds every other config field fixed.
SIZE_FIELDS = {"input_dim": ("input_dim",), "inv_sqrt_d": ("input_dim",), "d0": ("core_dim", "bg_dim")}


# The theory's setting: a two-class MLP classifier on the synthetic feature model (a distillation
# student's or a digit classifier's losses are not the theorems' risks).
THEORY = {"experiment": experiments.DEFAULT, "dataset": "synthetic", "model": "mlp", "n_classes": 2}


def theory_runs(runs: pd.DataFrame) -> pd.DataFrame:
    keep = np.ones(len(runs), dtype=bool)
    for col, value in THEORY.items():
        if col in runs:
            keep &= (runs[col].astype(str) == str(value)).to_numpy()
    return runs[keep]


def families(meas: pd.DataFrame, spec: Spec, min_x: int = 3) -> list[tuple[dict, pd.DataFrame]]:
    """The families of `spec`: runs of its activation that differ only in its size (and seed),
    with at least `min_x` distinct sizes and two seeds; a d0 family also keeps core_dim / d0."""
    sel = theory_runs(meas)
    sel = sel[sel["activation"].astype(str) == spec.activation] if "activation" in sel else sel
    if spec.no_decay and "weight_decay" in sel:
        sel = sel[sel["weight_decay"] == 0]
    if spec.x == "d0":
        sel = sel.assign(core_share=sel["core_dim"] / sel["d0"])
    ranges = [col for pair in RANGE_COLUMNS.values() for col in pair]
    names = [c for c in (*FIELDS, *ranges, "core_share") if c in sel and c not in ("seed", *SIZE_FIELDS[spec.x])]
    keys = [c for c in names if sel[c].astype(str).nunique() > 1]
    groups = sel.groupby(keys, observed=True, sort=True, dropna=False) if keys else [((), sel)]
    out = []
    for values, g in groups:
        values = values if isinstance(values, tuple) else (values,)
        if g[spec.x].nunique() >= min_x and g["seed"].nunique() >= 2:
            out.append((dict(zip(keys, values)), g))
    return out


def family_label(fixed: dict, g: pd.DataFrame, spec: Spec) -> str:
    """What a family holds fixed, in words: the sizes it does not fit, width and learning rate."""
    shown = {"input_dim": "d", "d0": "d0"}
    parts = [f"{shown[c]} = {fmt_value(int(g[c].iloc[0]))}" for c in ("d0", "input_dim")
             if c not in SIZE_FIELDS[spec.x] and not (spec.x == "inv_sqrt_d" and c == "input_dim")
             and c != spec.x]
    parts += [f"m = {fmt_value(int(g['width'].iloc[0]))}", f"η = {fmt_value(float(g['lr'].iloc[0]))}"]
    parts += [f"{k} = {fmt_value(v)}" for k, v in fixed.items()
              if k not in ("core_dim", "bg_dim", "input_dim", "width", "widths", "lr", "core_share")]
    return ", ".join(parts)


def exponent_fits(meas: pd.DataFrame, specs=SPECS) -> list[tuple[Spec, str, pd.DataFrame, Fit]]:
    """Every (spec, family) fit: the spec, the family's label, its runs and the `Fit`."""
    out = []
    for spec in specs:
        for fixed, g in families(meas, spec):
            fit = loglog_fit(g[spec.x], g[spec.y], g["seed"])
            if fit.n_seeds >= 2 and fit.n_x >= 3:  # e.g. T0 unresolved by a coarse log: too little left
                out.append((spec, family_label(fixed, g, spec), g, fit))
    return out


def exponent_table(fits) -> pd.DataFrame:
    """One row per fit: the exponent, its intervals, the level and the paper's prediction."""
    rows = []
    for spec, label, g, f in fits:
        rows.append({"fit": spec.name, "y": spec.y, "x": spec.x, "activation": spec.activation, "family": label,
                     "x_range": f"{fmt_value(g[spec.x].min())}–{fmt_value(g[spec.x].max())}",
                     "slope": f.slope, "low": f.low, "high": f.high, "boot_low": f.boot_low,
                     "boot_high": f.boot_high, "level": f.level, "level_low": f.level_low,
                     "level_high": f.level_high, "n_points": f.n_points, "n_seeds": f.n_seeds, "n_x": f.n_x,
                     "n_dropped": f.n_dropped, "predicted": spec.predicted, "claim": spec.claim})
    return pd.DataFrame(rows)


def interval(v: float, lo: float, hi: float) -> str:
    """'v [lo, hi]' with compact numbers."""
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


# --- figures ------------------------------------------------------------------------------------

def _seed_means(g: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Per x: the geometric mean of y over seeds and its 95% t interval (in log y)."""
    ok = g[(g[y] > 0) & np.isfinite(g[y].astype(float))]
    rows = []
    for xv, h in ok.groupby(x, sort=True):
        mean, lo, hi = _t_interval(np.log(h[y].to_numpy(dtype=float)))
        rows.append({"x": float(xv), "mid": math.exp(mean), "lo": math.exp(lo) if np.isfinite(lo) else math.exp(mean),
                     "hi": math.exp(hi) if np.isfinite(hi) else math.exp(mean)})
    return pd.DataFrame(rows, columns=["x", "mid", "lo", "hi"])


def exponent_figure(spec: Spec, fits, t1_level: float = T1_LEVEL):
    """`spec`'s fits (label, runs, Fit) on log-log axes: each run (dots), the seeds' geometric mean
    per size with its 95% interval, the fitted line, and the paper's slope through the fit's centre
    (dashed); Theorem 4's panel also draws the init's own scale 1/sqrt(d) (dotted)."""
    fig = new_figure(5.6, 4.0)
    ax = fig.add_subplot()
    lines, halves, xs_all = [], [], []
    for i, (label, g, f) in enumerate(fits):
        col = f"C{i}"
        ok = g[(g[spec.y] > 0) & np.isfinite(g[spec.y].astype(float))]
        ax.plot(ok[spec.x], ok[spec.y], ls="none", marker=".", ms=4, alpha=0.4, color=col)
        s = _seed_means(g, spec.x, spec.y)
        ax.errorbar(s["x"], s["mid"], yerr=[s["mid"] - s["lo"], s["hi"] - s["mid"]], fmt="o", ms=4, capsize=2,
                    color=col)
        halves.append(0.5 * (s["hi"] - s["lo"]).to_numpy())
        xr = np.geomspace(s["x"].min(), s["x"].max(), 50)
        fit_y = math.exp(f.intercept) * xr ** f.slope
        ax.plot(xr, fit_y, "-", color=col, label=f"{label}: slope {interval(f.slope, f.low, f.high)}")
        lines.append(fit_y)
        xs_all.append(xr)
        if np.isfinite(spec.predicted):
            xc = math.exp(np.mean(np.log(xr)))
            pred = math.exp(f.intercept) * xc ** f.slope * (xr / xc) ** spec.predicted
            ax.plot(xr, pred, "--", color="0.5", lw=1, label=f"paper: slope {spec.predicted:g}" if i == 0 else None)
            lines.append(pred)
    if spec.x == "inv_sqrt_d" and xs_all:
        xr = np.concatenate(xs_all)
        xr = np.geomspace(xr.min(), xr.max(), 50)
        ax.plot(xr, xr, ":", color="0.3", lw=1, label="init scale 1/sqrt(d) (N(0, 1/d) init)")
        lines.append(xr)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax, np.unique(np.concatenate([g[spec.x].to_numpy(dtype=float) for _, g, _ in fits])))
    ax.set_xlabel(XLABELS[spec.x])
    ax.set_ylabel(spec.ylabel.format(level=f"{t1_level:g}"))
    ax.set_title(f"{spec.claim}\n{spec.activation}: runs (dots), seed means ± 95% CI, fit (line)", fontsize=9)
    noise_note(ax, lines, halves)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    return fig


def _plain_ticks(ax, xs: np.ndarray) -> None:
    """Log axes labelled with plain numbers: x at the sizes run, y at its own ticks (minor ones too
    where it spans under a decade)."""
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = ax.get_ylim()
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())


def exponent_parts(runs: pd.DataFrame, curves: pd.DataFrame,
                   t1_level: float = T1_LEVEL) -> list[tuple[Spec, list, object]]:
    """Per spec with at least one family: the spec, its fits (label, runs, Fit) and its figure.
    The curves are read (T0, T1) only where some family exists."""
    if not has_families(runs):
        return []
    fits = exponent_fits(measure(runs, curves, t1_level))
    out = []
    for spec in SPECS:
        mine = [(label, g, f) for s, label, g, f in fits if s is spec]
        if mine:
            out.append((spec, mine, exponent_figure(spec, mine, t1_level)))
    return out


NEEDED = ("core_dim", "bg_dim", "input_dim", "width", "lr", "seed", "bg_norm", "id_loss", "ood_loss")


def has_families(runs: pd.DataFrame) -> bool:
    """Whether any exponent has a family in these runs (read from the runs table alone)."""
    if not set(NEEDED) <= set(runs) or "bg_train_low" not in runs:
        return False
    meas = measure(runs, None)
    return any(families(meas, spec) for spec in SPECS)


def summary(parts) -> pd.DataFrame:
    """The fits as text, a row per (spec, family): the exponent with its 95% interval over seeds
    and the bootstrap's, the geometric-mean level, the paper's claim and the counts."""
    rows = []
    for spec, fits, _ in parts:
        for label, g, f in fits:
            rows.append({"fit": spec.name, "family": label,
                         "sizes": f"{spec.x} {fmt_value(g[spec.x].min())}–{fmt_value(g[spec.x].max())}",
                         "slope [95% over seeds]": interval(f.slope, f.low, f.high),
                         "bootstrap 95%": f"[{fmt(f.boot_low)}, {fmt(f.boot_high)}]",
                         "level (geo. mean)": interval(f.level, f.level_low, f.level_high),
                         "paper": spec.claim, "points": f"{f.n_points} ({f.n_seeds} seeds, {f.n_x} sizes)"
                         + (f", {f.n_dropped} left out" if f.n_dropped else "")})
    return pd.DataFrame(rows)
