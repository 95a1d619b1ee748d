"""The lattice of an adaptive phase diagram and its statistics: numeric axes (and values in
between them), cells and their splits, seed means and standard errors per point, and the
boundary read from them (`analysis.boundary` reads a refined grid with these; the refinement
loop is `refine.py`).

**Axes.** A *refinable* axis is numeric: a scalar axis of numbers (learning rate, slope, width,
...), or a table-valued axis whose labels are all numbers and whose fields are numbers or ranges
(e.g. `bg_mean = [{label = "0", bg_train = [-0.5, 0.5], bg_ood = [-1.5, -0.5]}, ...]`): between
two of its entries the fields are interpolated linearly in the label, so a midpoint keeps every
relation the entries share (the same OOD shift). Midpoints are arithmetic, or geometric on an
axis whose values are a geometric progression (learning rates); integer fields (widths,
dimensions) take integer midpoints, which the planner pads into the programs of their
neighbours. Every other axis is categorical: each of its combinations (a *facet*) has its own
boundary.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from contamination.config import FIELDS, INT_FIELDS

from .grid import Grid, label_of
from .results import RANGE_COLUMNS, pandas

if TYPE_CHECKING:
    import pandas as pd

Z = 1.96  # the normal quantile of a two-sided 95% interval


class RefineError(ValueError):
    """A user-caused refine error (bad metric, no refinable axis, ...): one line."""


@dataclasses.dataclass(frozen=True)
class Axis:
    """A refinable axis: its sorted numeric values and how to set a config at any value in between."""

    name: str
    values: tuple[float, ...]
    entries: tuple[dict, ...] | None = None  # table-valued axis: entries in the order of `values`
    integer: bool = False
    geometric: bool = False

    @property
    def column(self) -> str:
        """The runs-table column holding the axis's value (a label axis: its label, as a string)."""
        return self.name

    def midpoint(self, a: float, b: float) -> float:
        m = math.sqrt(a * b) if self.geometric else (a + b) / 2
        return float(round(m)) if self.integer else q(m)

    def normalised(self, x):
        """Position in [0, 1] over the grid's range (log scale on a geometric axis)."""
        lo, hi = self.values[0], self.values[-1]
        if self.geometric:
            return (np.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (np.asarray(x, dtype=float) - lo) / (hi - lo)

    def value_at(self, u):
        """The axis value at normalised position `u` (the inverse of `normalised`)."""
        lo, hi = self.values[0], self.values[-1]
        if self.geometric:
            return np.exp(math.log(lo) + np.asarray(u, dtype=float) * (math.log(hi) - math.log(lo)))
        return lo + np.asarray(u, dtype=float) * (hi - lo)

    def fields_at(self, x: float) -> tuple[dict[str, Any], dict[str, str]]:
        """Config fields and label columns of the axis at value `x`."""
        if self.entries is None:
            return {self.name: int(x) if self.integer else x}, {}
        i = int(np.clip(np.searchsorted(self.values, x, side="right") - 1, 0, len(self.values) - 2))
        lo, hi = self.values[i], self.values[i + 1]
        t = (x - lo) / (hi - lo)
        fields = {}
        for f, a in self.entries[i].items():
            if f == "label":
                continue
            b = self.entries[i + 1][f]
            if isinstance(a, (list, tuple)):
                fields[f] = [float(u + t * (v - u)) for u, v in zip(a, b)]
            else:
                fields[f] = float(a + t * (b - a))
        return fields, {self.name: fmt_label(x)}


def q(x: float) -> float:
    """A lattice coordinate as it is compared: 9 significant digits (a value read back from a table
    or a label equals the one computed)."""
    return float(f"{float(x):.9g}")


def fmt_label(x: float) -> str:
    return f"{x:.6g}"


def _number(v) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _geometric(values: list[float]) -> bool:
    if len(values) < 3 or min(values) <= 0:
        return False
    ratios = np.diff(np.log(values))
    return bool(np.allclose(ratios, ratios[0], rtol=1e-3)) and not np.allclose(np.diff(values), np.diff(values)[0],
                                                                                rtol=1e-3)


def refinable_axes(grid: Grid, names: list[str] | None = None) -> list[Axis]:
    """The grid's refinable axes (all of them, or `names` in that order); RefineError otherwise."""
    out = []
    for name, vals in grid.axes.items():
        if names is not None and name not in names:
            continue
        axis = _axis(name, vals)
        if axis is None:
            if names is not None:
                raise RefineError(f"--axes: {name} is not numeric (numbers, or tables with numeric labels and "
                                  "numeric fields)")
            continue
        out.append(axis)
    if names is not None:
        missing = [n for n in names if n not in grid.axes]
        if missing:
            raise RefineError(f"--axes: {', '.join(missing)} is not an axis of {grid.name}; axes: {', '.join(grid.axes)}")
        out.sort(key=lambda a: names.index(a.name))
    if not out:
        raise RefineError(f"{grid.name}: no numeric axis to refine (axes: {', '.join(grid.axes)})")
    return out


def _axis(name: str, vals: list) -> Axis | None:
    if len(vals) < 2:
        return None
    if isinstance(vals[0], dict):
        labels = [_number(label_of(v)) for v in vals]
        if any(x is None for x in labels):
            return None
        for v in vals:
            for f, fv in v.items():
                ok = (f == "label" or _number(fv) is not None
                      or (isinstance(fv, (list, tuple)) and all(_number(u) is not None for u in fv)))
                if not ok:
                    return None
        order = np.argsort(labels, kind="stable")
        return Axis(name, tuple(q(labels[i]) for i in order), tuple(vals[i] for i in order))
    nums = [_number(v) for v in vals]
    if any(x is None for x in nums) or name not in FIELDS:
        return None
    return _numeric_axis(name, nums)


def _numeric_axis(name: str, nums: list[float]) -> Axis:
    """A scalar axis over numbers: sorted distinct values, integer midpoints on an integer field,
    geometric ones on a geometric progression."""
    values = sorted({q(x) for x in nums})
    return Axis(name, tuple(values), None, integer=name in INT_FIELDS, geometric=_geometric(values))


class PointStats(NamedTuple):
    mean: float
    se: float
    n: int


def point_stats(runs: pd.DataFrame, axes: list[Axis], facets: list[str], metric: str) -> pd.DataFrame:
    """Per point (facet x axis values): the metric's seed mean, standard error and seed count.

    Diverged runs and NaN metrics are left out. A point seen with a single seed takes the median
    standard error of the points with several (or 0 if none has)."""
    if metric not in runs:
        raise RefineError(f"--metric: {metric!r} is not a column of the runs table")
    df = runs[~runs.get("diverged", pandas().Series(False, index=runs.index)).astype(bool)]
    df = df[np.isfinite(df[metric].astype(float))].copy()
    for a in axes:
        df[a.column] = [q(x) for x in df[a.column].astype(float)]
    keys = [*facets, *[a.column for a in axes]]
    g = df.groupby(keys, observed=True, sort=True)[metric]
    stats = g.agg(mean="mean", std="std", n="size").reset_index()
    stats["se"] = stats["std"] / np.sqrt(stats["n"])
    several = stats.loc[stats["n"] > 1, "se"]
    stats.loc[stats["n"] <= 1, "se"] = float(several.median()) if len(several) else 0.0
    return stats.drop(columns="std")


def initial_cells(axes: list[Axis]) -> list[tuple[tuple, tuple]]:
    per_axis = [list(zip(a.values[:-1], a.values[1:])) for a in axes]
    return [(tuple(p[0] for p in combo), tuple(p[1] for p in combo)) for combo in itertools.product(*per_axis)]


def children(cell, axes: list[Axis]) -> list[tuple[tuple, tuple]]:
    lo, hi = cell
    halves = []
    for a, l, h in zip(axes, lo, hi):
        m = a.midpoint(l, h)
        halves.append([(l, m), (m, h)] if l < m < h else [(l, h)])
    return [(tuple(p[0] for p in combo), tuple(p[1] for p in combo)) for combo in itertools.product(*halves)]


def corners(cell) -> list[tuple]:
    lo, hi = cell
    return [tuple(c) for c in itertools.product(*zip(lo, hi))]


def cell_points(cell, axes: list[Axis]) -> list[tuple]:
    """Every lattice point of the cell's split: corners, edge midpoints, centre (3^N at most)."""
    lo, hi = cell
    per_axis = [sorted({l, a.midpoint(l, h), h}) for a, l, h in zip(axes, lo, hi)]
    return [tuple(p) for p in itertools.product(*per_axis)]


def volume(cell, axes: list[Axis]) -> float:
    """The cell's volume (area, for two axes) in normalised coordinates: a share of the diagram."""
    lo, hi = cell
    return float(np.prod([float(a.normalised(h) - a.normalised(l)) for a, l, h in zip(axes, lo, hi)]))


def leaves(known: set, axes: list[Axis], max_depth: int) -> list[tuple[tuple, tuple, int, tuple | None]]:
    """The current cells (lower corner, upper corner, depth, parent cell or None): the grid's cells
    split wherever all points of their split are known."""
    out = []
    stack = [(c, 0, None) for c in initial_cells(axes)]
    while stack:
        cell, depth, parent = stack.pop()
        kids = children(cell, axes)
        if depth < max_depth and len(kids) > 1 and all(p in known for p in cell_points(cell, axes)):
            stack += [(k, depth + 1, cell) for k in kids]
        else:
            out.append((cell[0], cell[1], depth, parent))
    return out


def multilinear(cell, axes: list[Axis], values: dict, p: tuple) -> float:
    """The value at `p` interpolated (multilinearly, in normalised coordinates) from the cell's corners."""
    lo, hi = cell
    t = [float((a.normalised(x) - a.normalised(l)) / (a.normalised(h) - a.normalised(l)))
         for a, x, l, h in zip(axes, p, lo, hi)]
    total = 0.0
    for c in corners(cell):
        w = np.prod([ti if ci == h else 1 - ti for ti, ci, h in zip(t, c, hi)])
        total += w * values[c]
    return float(total)


def nonlinearity(parent, axes: list[Axis], table: dict) -> float:
    """How far the parent cell's split points lie from the parent's multilinear interpolation, in
    units of Z standard errors (at most 1): near 0 the metric is linear there within noise, and
    interpolation already locates the level inside the children as well as a split would."""
    values = {c: table[c].mean for c in corners(parent)}
    inner = [p for p in cell_points(parent, axes) if p not in values]
    dev = max(abs(table[p].mean - multilinear(parent, axes, values, p)) for p in inner)
    se = math.sqrt(np.mean([table[p].se ** 2 for p in list(values) + inner]))
    return 1.0 if se == 0 else float(min(1.0, dev / (Z * se)))


def norm_point(p, axes):
    return np.array([float(a.normalised(x)) for a, x in zip(axes, p)])


def facet_columns(axis_names, axes: list[Axis]) -> list[str]:
    """The runs-table columns of the other (categorical) axes among `axis_names` (a grid's axes):
    a table-valued axis's label column, a range field's low and high columns, else the field."""
    refined = {a.name for a in axes}
    return [c for name in axis_names if name not in refined for c in RANGE_COLUMNS.get(name, (name,))]


def interpolated(stats: pd.DataFrame, axes: list[Axis], at: np.ndarray, column: str = "mean") -> np.ndarray:
    """The seed means (or `column`) of one facet's points, linearly interpolated (Delaunay, in
    normalised coordinates) at points `at` (k, N) given in axis values; NaN outside their hull."""
    from scipy.interpolate import griddata  # scipy loads only where a refinement interpolates

    xy = np.stack([a.normalised(stats[a.column].to_numpy(float)) for a in axes], axis=1)
    target = np.stack([a.normalised(at[:, i]) for i, a in enumerate(axes)], axis=1)
    if len(axes) == 1:
        order = np.argsort(xy[:, 0])
        return np.interp(target[:, 0], xy[order, 0], stats[column].to_numpy(float)[order])
    return griddata(xy, stats[column].to_numpy(float), target, method="linear")


def misclassified(stats: pd.DataFrame, axes: list[Axis], level: float, truth, n: int = 201) -> float:
    """The boundary error of one facet's points: the share of an n x n lattice over the axes'
    range (in normalised coordinates) where the interpolated seed mean and `truth(at)` (the true
    metric, at points in axis values) lie on different sides of `level`."""
    u = np.linspace(0, 1, n)
    grids = np.meshgrid(*[u] * len(axes), indexing="ij")
    norm_pts = np.stack([g.ravel() for g in grids], axis=1)
    at = np.stack([a.value_at(norm_pts[:, i]) for i, a in enumerate(axes)], axis=1)
    est = interpolated(stats, axes, at)
    return float(np.mean((est > level) != (truth(at) > level)))


def axes_of_values(axis_values: dict, names: list[str] | None = None) -> list[Axis]:
    """Axes from a manifest's `axes` (each axis's values, labels for table-valued axes): those whose
    values are all numbers (or `names`), enough to place points and read a boundary."""
    out = []
    for name in names or list(axis_values):
        vals = axis_values.get(name)
        if vals is None:
            raise RefineError(f"{name} is not an axis here; axes: {', '.join(axis_values)}")
        nums = [_number(v) for v in vals]
        if len(vals) < 2 or any(x is None for x in nums):
            if names:
                raise RefineError(f"{name} is not a numeric axis")
            continue
        out.append(_numeric_axis(name, nums))
    return out
