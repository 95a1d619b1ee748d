"""Aggregate runs over seeds: mean, std, 95% t confidence half-width and counts.

Diverged runs are counted (`n_diverged`) and left out of every statistic; `n` is the
number of runs that did not diverge, `n_runs` all of them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats  # a dependency of jax, so always installed with this project

STATS = ("mean", "std", "ci95")


def t_halfwidth(std: pd.Series | np.ndarray, count: pd.Series | np.ndarray, level: float = 0.95) -> np.ndarray:
    """Half-width of the two-sided t confidence interval of a mean: t_{n-1} * std / sqrt(n) (NaN for n < 2)."""
    std = np.asarray(std, dtype=float)
    n = np.asarray(count, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf(0.5 + level / 2, np.where(n >= 2, n - 1, np.nan))
        return np.where(n >= 2, t * std / np.sqrt(n), np.nan)


def aggregate(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per group of `by`: n_runs, n_diverged, n, then METRIC_mean, _std, _ci95 over non-diverged rows.

    Groups follow the order of `by` (categoricals in grid order); empty category
    combinations are dropped. String columns not named are ignored.
    """
    by = list(by)
    diverged = df["diverged"].astype(bool) if "diverged" in df else pd.Series(False, index=df.index)
    keys = [df[c] for c in by] if by else [pd.Series(0, index=df.index)]
    counts = pd.DataFrame({"n_runs": 1, "n_diverged": diverged.astype(int)}, index=df.index)
    out = counts.groupby(keys, observed=True, sort=True).sum()
    values = df.loc[~diverged, list(metrics)].apply(pd.to_numeric, errors="coerce")
    g = values.groupby([k[~diverged] for k in keys], observed=True, sort=True)
    mean, std, cnt = g.mean(), g.std(ddof=1), g.count()
    out = out.join(mean.add_suffix("_mean"), how="left")
    out["n"] = out["n_runs"] - out["n_diverged"]
    per_metric = {}  # joined at once (a column at a time fragments the frame)
    for m in metrics:
        s = std[m].reindex(out.index)
        per_metric[f"{m}_mean"] = out[f"{m}_mean"] if f"{m}_mean" in out else pd.Series(np.nan, index=out.index)
        per_metric[f"{m}_std"] = s
        per_metric[f"{m}_ci95"] = pd.Series(t_halfwidth(s, cnt[m].reindex(out.index).fillna(0)), index=out.index)
    out = pd.concat([out.drop(columns=[c for c in per_metric if c in out]), pd.DataFrame(per_metric, index=out.index)],
                    axis=1)
    cols = ["n_runs", "n_diverged", "n"] + [f"{m}_{s}" for m in metrics for s in STATS]
    out = out[cols].reset_index()
    if not by:
        out = out.drop(columns=out.columns[0])
    else:
        out.columns = by + cols
    return out


def long_stats(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The columns of one metric from an `aggregate` table, renamed mean/std/ci95, with a `metric` column."""
    # A metric's statistics are its full set of METRIC_STAT columns (an axis may be named like one: bg_mean).
    metrics = {c[: -len(f"_{STATS[0]}")] for c in table.columns if c.endswith(f"_{STATS[0]}")}
    stats_cols = {f"{m}_{s}" for m in metrics if all(f"{m}_{s}" in table for s in STATS) for s in STATS}
    keep = [c for c in table.columns if c not in stats_cols]
    out = table[keep].copy()
    for s in STATS:
        out[s] = table[f"{metric}_{s}"]
    out.insert(0, "metric", metric)
    return out
