"""Adaptive phase diagrams: spend runs where a metric crosses a level (`python -m sweeps refine`).

Round 0 is the grid's own points. Each further round reads the results so far, scores candidate
points and trains the best of them as ordinary runs of the grid (same ids, tables, resume,
invariance), marked with their `round`.

**Axes.** A *refinable* axis is numeric: a scalar axis of numbers (learning rate, slope, width,
...), or a table-valued axis whose labels are all numbers and whose fields are numbers or ranges
(e.g. `bg_mean = [{label = "0", bg_train = [-0.5, 0.5], bg_ood = [-1.5, -0.5]}, ...]`): between
two of its entries the fields are interpolated linearly in the label, so a midpoint keeps every
relation the entries share (the same OOD shift). Midpoints are arithmetic, or geometric on an
axis whose values are a geometric progression (learning rates); integer fields (widths,
dimensions) take integer midpoints, which the planner pads into the programs of their
neighbours. Every other axis is categorical: each of its combinations (a *facet*) has its own
boundary.

**The rule** (`select`, a pure function of the seed means and standard errors per point):
a *cell* is a box of the lattice between neighbouring values of every refinable axis, starting
from the grid's cells; it is split into 2^N children at its midpoints. Candidates:

- *split* a cell whose corners' seed means lie on both sides of the level: the boundary passes
  through it, located no better than the cell's size; score = the cell's linear size
  (normalised to the grid's range on each axis) / 2;
- *add seeds* at a point whose confidence interval (mean +- z se) contains the level: which side
  it is on is uncertain; score = the linear size of the smallest cell it is a corner of, times
  the probability that its mean is on the wrong side, Phi(-|mean - level| / se).

Both scores are in the same unit, a distance over which the boundary is uncertain. The best
candidates are taken until a batch of runs is full (a split costs its new points x the seeds
per point, a seed addition the seeds per point), each candidate's score halved for every one
already taken within its own size of it (a batch spreads along the boundary instead of
clustering). Cells are split at most `max_depth` times below the grid's. The total score of all
candidates is the boundary's uncertainty: refinement stops when a round does not shrink it by
`min_gain` or no candidate is left.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from contamination.config import INT_FIELDS, FIELDS, from_dict
from contamination.presets import preset

from .grid import Grid, GridError, Run, label_of
from .results import RANGE_COLUMNS

STATE = "refine.json"  # the rounds asked so far, in the results directory
Z = 1.96
MIN_WEIGHT = 0.1  # a split's score is at least this share of its cell's volume (`nonlinearity`)


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
    df = runs[~runs.get("diverged", pd.Series(False, index=runs.index)).astype(bool)]
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


class Candidate(NamedTuple):
    kind: str  # "split" or "seeds"
    facet: tuple
    lo: tuple[float, ...]  # split: the cell's lower corner; seeds: the point
    hi: tuple[float, ...]  # split: the cell's upper corner; seeds: the point
    score: float
    points: tuple[tuple[float, ...], ...]  # the points it would train (new ones only)
    reason: str


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


def _norm_point(p, axes):
    return np.array([float(a.normalised(x)) for a, x in zip(axes, p)])


def candidates(stats: pd.DataFrame, axes: list[Axis], facets: list[str], level: float, *,
               max_depth: int = 3) -> list[Candidate]:
    """Every split and seed candidate of every facet, best first (not yet spread)."""
    from scipy.stats import norm

    out: list[Candidate] = []
    cols = [a.column for a in axes]
    groups = stats.groupby(facets, observed=True, sort=True) if facets else [((), stats)]
    for facet, g in groups:
        facet = facet if isinstance(facet, tuple) else (facet,)
        table = {tuple(float(v) for v in row[cols]): PointStats(row["mean"], row["se"], int(row["n"]))
                 for _, row in g.iterrows()}
        known = set(table)
        around: dict[tuple, float] = {}  # the volume of the current cells a point is a corner of
        for lo, hi, depth, parent in leaves(known, axes, max_depth):
            cell = (lo, hi)
            cs = corners(cell)
            if not all(c in table for c in cs):
                continue
            v = volume(cell, axes)
            for c in cs:
                around[c] = around.get(c, 0.0) + v
            means = [table[c].mean for c in cs]
            new = [p for p in cell_points(cell, axes) if p not in known]
            if min(means) < level < max(means) and depth < max_depth and new:
                weight = 1.0 if parent is None else max(MIN_WEIGHT, nonlinearity(parent, axes, table))
                out.append(Candidate("split", facet, lo, hi, v * weight, tuple(new),
                                     f"split: corners {min(means):.3g}..{max(means):.3g} straddle {level:g}"))
        for p, st in table.items():
            if st.se > 0 and abs(st.mean - level) < Z * st.se and p in around:
                wrong = float(norm.cdf(-abs(st.mean - level) / st.se))
                out.append(Candidate("seeds", facet, p, p, around[p] * wrong, (p,),
                                     f"seeds: {st.mean:.3g} +- {Z * st.se:.2g} (n={st.n}) contains {level:g}"))
    return sorted(out, key=lambda c: -c.score)


def select(stats: pd.DataFrame, axes: list[Axis], facets: list[str], level: float, budget_runs: int,
           seeds_per_point: int, *, max_depth: int = 3) -> tuple[list[Candidate], float]:
    """The candidates of one round (at most `budget_runs` runs) and the boundary's uncertainty
    (the total score of every candidate). Deterministic: ties keep a fixed order."""
    cands = candidates(stats, axes, facets, level, max_depth=max_depth)
    uncertainty = float(sum(c.score for c in cands))
    taken: list[Candidate] = []
    used, claimed = 0, set()
    pool = list(cands)
    while pool:
        def spread(c: Candidate) -> float:
            centre = (_norm_point(c.lo, axes) + _norm_point(c.hi, axes)) / 2
            reach = max(float(np.max(_norm_point(c.hi, axes) - _norm_point(c.lo, axes))), 1e-9)
            near = sum(1 for t in taken if t.facet == c.facet and np.max(np.abs(
                centre - (_norm_point(t.lo, axes) + _norm_point(t.hi, axes)) / 2)) <= reach)
            return c.score / 2 ** near

        best = max(pool, key=spread)
        pool.remove(best)
        pts = [p for p in best.points if best.kind == "seeds" or (best.facet, p) not in claimed]
        cost = len(pts) * seeds_per_point
        if not pts or used + cost > budget_runs:
            continue
        used += cost
        claimed.update((best.facet, p) for p in pts)
        taken.append(best._replace(points=tuple(pts)))
    return taken, uncertainty


# --- from candidates to runs, and the rounds' record ---------------------------------------------

def facet_columns(axis_names, axes: list[Axis]) -> list[str]:
    """The runs-table columns of the other (categorical) axes among `axis_names` (a grid's axes):
    a table-valued axis's label column, a range field's low and high columns, else the field."""
    refined = {a.name for a in axes}
    return [c for name in axis_names if name not in refined for c in RANGE_COLUMNS.get(name, (name,))]


def facet_fields(grid: Grid, axes: list[Axis], facet_cols: list[str], facet: tuple) -> tuple[dict, dict]:
    """The fields and labels that reproduce a facet's categorical axis values."""
    names = {a.name for a in axes}
    fields, labels = {}, {}
    values = dict(zip(facet_cols, facet))
    for name, vals in grid.axes.items():
        if name in names:
            continue
        if isinstance(vals[0], dict):
            entry = next(v for v in vals if label_of(v) == str(values[name]))
            labels[name] = label_of(entry)
            fields.update({f: v for f, v in entry.items() if f != "label"})
        elif name in RANGE_COLUMNS:
            lo, hi = RANGE_COLUMNS[name]
            fields[name] = [float(values[lo]), float(values[hi])]
        else:
            v = values[name]
            fields[name] = v.item() if isinstance(v, np.generic) else v
    return fields, labels


def runs_of(grid: Grid, axes: list[Axis], facet_cols: list[str], taken: list[Candidate], seeds_of,
            round_: int) -> list[Run]:
    """The runs a round's candidates ask for; `seeds_of(facet, point, kind)` gives their seeds."""
    base = preset(grid.preset)
    out = []
    for c in taken:
        f_fields, f_labels = facet_fields(grid, axes, facet_cols, c.facet)
        for p in c.points:
            fields, labels = dict(grid.fixed), dict(f_labels)
            fields.update(f_fields)
            for a, x in zip(axes, p):
                af, al = a.fields_at(x)
                fields.update(af)
                labels.update(al)
            try:
                cfg = from_dict(fields, base=base)
            except Exception as e:  # a refined value the config refuses (e.g. an integer axis below 1)
                raise GridError(f"{grid.path}: refine: {e}") from None
            for s in seeds_of(c.facet, p, c.kind):
                out.append(Run.of(cfg.replace(seed=s), labels, round_))
    return out


def read_state(out) -> dict | None:
    return json.loads(out.read_text(STATE)) if out.exists(STATE) else None


def write_state(out, state: dict) -> None:
    out.write_text(json.dumps(state, indent=1, sort_keys=True), STATE)


def state_runs(grid: Grid, state: dict) -> list[Run]:
    """The runs of every round recorded in `state`, rebuilt from their configs."""
    out = []
    for rnd in state.get("rounds", []):
        for rec in rnd["runs"]:
            cfg = from_dict(rec["config"])
            out.append(Run.of(cfg, rec["labels"], rnd["round"]))
    return out


# --- the loop ------------------------------------------------------------------------------------

def read_runs(out) -> pd.DataFrame:
    files = out.files("runs", suffix=".parquet") if out.exists("runs") else []
    frames = [out.read_parquet("runs", f).to_pandas() for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def refine(grid: Grid, out, *, metric: str, level: float, rounds: int = 3, batch: int | None = None,
           seeds_per_point: int | None = None, axes: list[str] | None = None, max_depth: int = 3,
           min_gain: float = 0.05, train=None, report=print) -> dict:
    """Train the grid (round 0), then up to `rounds` rounds of at most `batch` runs each (default:
    a quarter of the grid's runs) where the rule asks. `train(grid, out, note)` trains a grid's
    pending runs (the engine's `run_grid`). Re-running continues: the rounds asked so far are in
    `refine.json` in the results directory, and their pending runs train first.

    Returns {"rounds": [...], "stopped": why}."""
    from . import storage

    from .engine import metric_names

    out = storage.location(out)
    ax = refinable_axes(grid, axes)
    facets = facet_columns(grid.axes, ax)
    names = metric_names(grid.table)
    if metric not in names:
        raise RefineError(f"--metric: {metric!r} is not a metric of {grid.name}; metrics: {', '.join(names)}")
    if rounds < 0 or (batch is not None and batch < 1) or (seeds_per_point is not None and seeds_per_point < 1):
        raise RefineError("--rounds must be >= 0, --batch and --seeds-per-point >= 1")
    spp = seeds_per_point or max(1, round(0.75 * len(grid.seeds)))
    split_cost = (3 ** len(ax) - 2 ** len(ax)) * spp  # the new points of one split, their seeds
    batch = batch or max(split_cost, len(grid.table) // 4)
    if batch < split_cost:
        raise RefineError(f"--batch: {batch} runs cannot hold one split ({3 ** len(ax) - 2 ** len(ax)} new points "
                          f"x {spp} seeds = {split_cost} runs)")
    setting = {"metric": metric, "level": level, "axes": [a.name for a in ax], "seeds_per_point": spp,
               "max_depth": max_depth}
    state = read_state(out) or {**setting, "rounds": []}
    if {k: state.get(k) for k in setting} != setting:
        raise RefineError(f"{out.uri} was refined with {json.dumps({k: state.get(k) for k in setting})}; "
                          "refine it with the same settings or choose another --out")

    def run(k: int, reasons: dict) -> None:
        refined = dataclasses.replace(grid, extra=tuple(state_runs(grid, state)))
        train(refined, out, {"refine": {"round": k, **setting, "reasons": reasons}})

    last = state["rounds"][-1]["round"] if state["rounds"] else 0
    run(last, state["rounds"][-1]["reasons"] if state["rounds"] else {"grid": len(grid.table)})
    stopped = f"{rounds} rounds"
    for k in range(last + 1, rounds + 1):
        runs = read_runs(out)
        stats = point_stats(runs, ax, facets, metric)
        taken, uncertainty = select(stats, ax, facets, level, batch, spp, max_depth=max_depth)
        history = [r["uncertainty"] for r in state["rounds"]]
        if not taken:
            stopped = "no candidate left"
            break
        if history and uncertainty > (1 - min_gain) * history[-1]:
            stopped = f"the uncertainty stopped shrinking ({history[-1]:.4g} -> {uncertainty:.4g})"
            break
        seeds_at = _seeds_at(runs, ax, facets)

        def seeds_of(facet, point, kind):
            if kind == "split":
                return list(grid.seeds[:spp]) if spp <= len(grid.seeds) else list(range(spp))
            used = seeds_at.get((facet, point), set())
            start = max(used | set(grid.seeds)) + 1
            return list(range(start, start + spp))

        new = runs_of(grid, ax, facets, taken, seeds_of, k)
        reasons = {kind: sum(len(c.points) for c in taken if c.kind == kind) for kind in ("split", "seeds")}
        by_point = {}
        for c in taken:
            for p in c.points:
                by_point[(tuple(c.facet), p)] = c.reason
        records = []
        for r in new:
            point, facet = _placed(r, ax, facets)
            records.append({"run_id": r.run_id, "config": r.config.to_dict(), "labels": r.labels,
                            "reason": by_point.get((facet, point), "")})
        state["rounds"].append({"round": k, "uncertainty": uncertainty, "reasons": reasons, "runs": records,
                                "candidates": [{"kind": c.kind, "facet": list(map(str, c.facet)), "lo": list(c.lo),
                                                "hi": list(c.hi), "score": c.score, "reason": c.reason}
                                               for c in taken]})
        write_state(out, state)  # before training: a stopped round resumes from here
        report(f"round {k}: {len(new)} runs at {sum(len(c.points) for c in taken)} points "
               f"({reasons['split']} from splits, {reasons['seeds']} with more seeds); "
               f"boundary uncertainty {uncertainty:.4g}")
        run(k, reasons)
    state["stopped"] = stopped
    write_state(out, state)
    return {"rounds": state["rounds"], "stopped": stopped}


def _placed(run: Run, axes: list[Axis], facets: list[str]) -> tuple[tuple, tuple]:
    """A run's point (its refined axes' values) and facet (its other axes' columns)."""
    from .results import config_columns

    cols = {**config_columns(run.config), **run.labels}
    return tuple(q(float(cols[a.column])) for a in axes), tuple(cols[c] for c in facets)


def _seeds_at(runs: pd.DataFrame, axes: list[Axis], facets: list[str]) -> dict:
    out: dict = {}
    if runs.empty:
        return out
    for _, row in runs.iterrows():
        key = (tuple(row[c] for c in facets), tuple(q(float(row[a.column])) for a in axes))
        out.setdefault(key, set()).add(int(row["seed"]))
    return out


def interpolated(stats: pd.DataFrame, axes: list[Axis], at: np.ndarray, column: str = "mean") -> np.ndarray:
    """The seed means (or `column`) of one facet's points, linearly interpolated (Delaunay, in
    normalised coordinates) at points `at` (k, N) given in axis values; NaN outside their hull."""
    from scipy.interpolate import griddata

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
