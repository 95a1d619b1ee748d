"""Phase boundaries: where a metric's seed mean crosses a level, from a grid's points and the
points `sweeps refine` added (sweeps/refine.py).

- `boundary_table`: every crossing along a line of the lattice (two neighbouring points on one
  axis, the others equal) whose seed means lie on both sides of the level: the crossing by linear
  interpolation, with a 95% interval from the two points' standard errors;
- `boundary_figure`: per facet, the points coloured by the metric's seed mean (larger: more
  seeds; outlined: added by refinement), the level curve of the interpolated means, and the level
  curves of mean -+ 1.96 se (the band where the side is uncertain).
"""

from __future__ import annotations

import json

import matplotlib.tri as mtri
import numpy as np
import pandas as pd
from scipy.spatial import Delaunay

from sweeps.lattice import Axis, RefineError, Z, axes_of_values, facet_columns, point_stats
from sweeps.refine import STATE

from .load import AnalysisError
from .style import new_figure


def boundary_table(runs: pd.DataFrame, axes: list[Axis], facets: list[str], metric: str, level: float) -> pd.DataFrame:
    """A row per crossing: the facet columns, `along` (the axis crossed), the other axes' values,
    `crossing` and its 95% interval `low`..`high`, and the two points (`from`, `to`)."""
    stats = point_stats(runs, axes, facets, metric)
    rows = []
    groups = stats.groupby(facets, observed=True, sort=True) if facets else [((), stats)]
    for facet, g in groups:
        facet = facet if isinstance(facet, tuple) else (facet,)
        for i, a in enumerate(axes):
            others = [b.column for j, b in enumerate(axes) if j != i]
            lines = g.groupby(others, sort=True) if others else [((), g)]
            for key, line in lines:
                key = key if isinstance(key, tuple) else (key,)
                line = line.sort_values(a.column)
                pts = line[[a.column, "mean", "se"]].to_numpy(float)
                for (xa, ma, sa), (xb, mb, sb) in zip(pts[:-1], pts[1:]):
                    if not (min(ma, mb) < level < max(ma, mb)):
                        continue
                    t = (level - ma) / (mb - ma)
                    ua, ub = a.normalised(xa), a.normalised(xb)
                    u = ua + t * (ub - ua)
                    su = abs(ub - ua) * np.hypot((1 - t) * sa, t * sb) / abs(mb - ma)
                    lo_u, hi_u = max(ua, u - Z * su), min(ub, u + Z * su)
                    row = dict(zip(facets, facet))
                    row.update(dict(zip(others, key)))
                    row.update({"along": a.name, "crossing": float(a.value_at(u)), "low": float(a.value_at(lo_u)),
                                "high": float(a.value_at(hi_u)), "from": xa, "to": xb})
                    rows.append(row)
    return pd.DataFrame(rows)


def boundary_figure(runs: pd.DataFrame, axes: list[Axis], facets: list[str], metric: str, level: float):
    """One panel per facet over the first two axes (see the module docstring)."""
    x_axis, y_axis = axes[0], axes[1]
    stats = point_stats(runs, axes[:2], facets, metric)
    rounds = runs.assign(**{a.column: runs[a.column].astype(float) for a in axes[:2]})
    added = set()
    if "round" in rounds:
        late = rounds[rounds["round"] > 0]
        added = {tuple(r) for r in late[[x_axis.column, y_axis.column]].to_numpy(float)}
    groups = list(stats.groupby(facets, observed=True, sort=True)) if facets else [((), stats)]
    fig = new_figure(4.4 * len(groups) + 1.2, 4.2)
    panels = fig.subplots(1, len(groups), squeeze=False)[0]
    lo, hi = float(stats["mean"].min()), float(stats["mean"].max())
    for ax, (facet, g) in zip(panels, groups):
        x, y = g[x_axis.column].to_numpy(float), g[y_axis.column].to_numpy(float)
        m, se = g["mean"].to_numpy(float), g["se"].to_numpy(float)
        sc = ax.scatter(x, y, c=m, s=18 + 10 * np.sqrt(g["n"].to_numpy(float)), cmap="viridis", vmin=lo, vmax=hi,
                        edgecolors=["k" if (a, b) in added else "none" for a, b in zip(x, y)], linewidths=0.8,
                        zorder=3)
        norm = np.stack([x_axis.normalised(x), y_axis.normalised(y)], axis=1)
        if len(g) >= 3 and np.linalg.matrix_rank(norm - norm.mean(0)) == 2:
            tri = mtri.Triangulation(x, y, Delaunay(norm).simplices)
            for values, style in ((m, "-"), (m - Z * se, "--"), (m + Z * se, "--")):
                if values.min() < level < values.max():
                    ax.tricontour(tri, values, levels=[level], colors="C3", linestyles=style,
                                  linewidths=1.6 if style == "-" else 0.9)
        for axis, setter in ((x_axis, ax.set_xscale), (y_axis, ax.set_yscale)):
            if axis.geometric:
                setter("log")
        ax.margins(0.05)
        ax.set_xlabel(x_axis.name)
        ax.set_ylabel(y_axis.name)
        title = ", ".join(f"{c} = {v}" for c, v in zip(facets, facet if isinstance(facet, tuple) else (facet,)))
        ax.set_title(title or f"{metric} = {level:g}", fontsize=9)
    fig.colorbar(sc, ax=list(panels), label=f"{metric} (seed mean)")
    fig.suptitle(f"Boundary {metric} = {level:g}: interpolated level (solid) and mean ∓ {Z} se (dashed); "
                 "outlined points added by refinement", fontsize=9)
    return fig


def boundary_setting(results, metric: str | None = None, level: float | None = None,
                     axes: list[str] | None = None) -> tuple[list[Axis], list[str], str, float] | None:
    """The boundary's axes, facet columns, metric and level for a results directory: what its
    `refine.json` records, overridden by the arguments; None when neither says a metric and level."""
    state = json.loads(results.location.read_text(STATE)) if results.location.exists(STATE) else {}
    metric = metric or state.get("metric")
    level = level if level is not None else state.get("level")
    if metric is None or level is None:
        return None
    values = results.manifest.get("axes", {})
    try:
        ax = axes_of_values(values, axes or state.get("axes"))
    except RefineError as e:
        raise AnalysisError(f"--axes: {e}") from None
    # the grid's other axes: one boundary per combination of their values
    facets = [c for c in facet_columns(values, ax) if c in results.runs]
    return ax, facets, metric, float(level)
