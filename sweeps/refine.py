"""Adaptive phase diagrams: spend runs where a metric crosses a level (`python -m sweeps refine`).

Round 0 is the grid's own points. Each further round reads the results so far, scores candidate
points and trains the best of them as ordinary runs of the grid (same ids, tables, resume,
invariance), marked with their `round`.

The axes, cells and point statistics are `lattice.py`'s.

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
import json
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from contamination.config import from_dict
from contamination.presets import preset

from . import storage
from .grid import Grid, GridError, Run, label_of
from .lattice import (Axis, PointStats, RefineError, Z, norm_point, cell_points, corners, facet_columns,
                      leaves, nonlinearity, point_stats, q, refinable_axes, volume)
from .results import RANGE_COLUMNS, config_columns, pandas
from .runs import metric_names

if TYPE_CHECKING:
    import pandas as pd

STATE = "refine.json"  # the rounds asked so far, in the results directory
MIN_WEIGHT = 0.1  # a split's score is at least this share of its cell's volume (`nonlinearity`)


class Candidate(NamedTuple):
    kind: str  # "split" or "seeds"
    facet: tuple
    lo: tuple[float, ...]  # split: the cell's lower corner; seeds: the point
    hi: tuple[float, ...]  # split: the cell's upper corner; seeds: the point
    score: float
    points: tuple[tuple[float, ...], ...]  # the points it would train (new ones only)
    reason: str


def candidates(stats: pd.DataFrame, axes: list[Axis], facets: list[str], level: float, *,
               max_depth: int = 3) -> list[Candidate]:
    """Every split and seed candidate of every facet, best first (not yet spread)."""
    from scipy.stats import norm  # scipy loads only where a refinement scores candidates

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
            centre = (norm_point(c.lo, axes) + norm_point(c.hi, axes)) / 2
            reach = max(float(np.max(norm_point(c.hi, axes) - norm_point(c.lo, axes))), 1e-9)
            near = sum(1 for t in taken if t.facet == c.facet and np.max(np.abs(
                centre - (norm_point(t.lo, axes) + norm_point(t.hi, axes)) / 2)) <= reach)
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
    return pandas().concat(frames, ignore_index=True) if frames else pandas().DataFrame()


def refine(grid: Grid, out, *, metric: str, level: float, rounds: int = 3, batch: int | None = None,
           seeds_per_point: int | None = None, axes: list[str] | None = None, max_depth: int = 3,
           min_gain: float = 0.05, train=None, report=print) -> dict:
    """Train the grid (round 0), then up to `rounds` rounds of at most `batch` runs each (default:
    a quarter of the grid's runs) where the rule asks. `train(grid, out, note)` trains a grid's
    pending runs (the engine's `run_grid`). Re-running continues: the rounds asked so far are in
    `refine.json` in the results directory, and their pending runs train first.

    Returns {"rounds": [...], "stopped": why}."""
    out = storage.location(out)
    ax = refinable_axes(grid, axes)
    facets = facet_columns(grid.axes, ax)
    spp, batch = _check_settings(grid, ax, metric, rounds, batch, seeds_per_point)
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
        new, reasons = _add_round(grid, state, runs, ax, facets, taken, uncertainty, spp, k)
        write_state(out, state)  # before training: a stopped round resumes from here
        report(f"round {k}: {len(new)} runs at {sum(len(c.points) for c in taken)} points "
               f"({reasons['split']} from splits, {reasons['seeds']} with more seeds); "
               f"boundary uncertainty {uncertainty:.4g}")
        run(k, reasons)
    state["stopped"] = stopped
    write_state(out, state)
    return {"rounds": state["rounds"], "stopped": stopped}


def _check_settings(grid: Grid, ax: list[Axis], metric: str, rounds: int, batch: int | None,
                    seeds_per_point: int | None) -> tuple[int, int]:
    """The seeds per point and runs per round of a refinement, its settings checked (one line each)."""
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
    return spp, batch


def _add_round(grid: Grid, state: dict, runs: pd.DataFrame, ax: list[Axis], facets: list[str],
               taken: list[Candidate], uncertainty: float, spp: int, k: int) -> tuple[list[Run], dict]:
    """Round `k`'s runs (new points take the grid's first seeds, more seeds at a point the next
    unused ones), recorded in `state` with the candidates they came from."""
    seeds_at = _seeds_at(runs, ax, facets)

    def seeds_of(facet, point, kind):
        if kind == "split":
            return list(grid.seeds[:spp]) if spp <= len(grid.seeds) else list(range(spp))
        used = seeds_at.get((facet, point), set())
        start = max(used | set(grid.seeds)) + 1
        return list(range(start, start + spp))

    new = runs_of(grid, ax, facets, taken, seeds_of, k)
    reasons = {kind: sum(len(c.points) for c in taken if c.kind == kind) for kind in ("split", "seeds")}
    by_point = {(tuple(c.facet), p): c.reason for c in taken for p in c.points}
    records = []
    for r in new:
        point, facet = _placed(r, ax, facets)
        records.append({"run_id": r.run_id, "config": r.config.to_dict(), "labels": r.labels,
                        "reason": by_point.get((facet, point), "")})
    state["rounds"].append({"round": k, "uncertainty": uncertainty, "reasons": reasons, "runs": records,
                            "candidates": [{"kind": c.kind, "facet": list(map(str, c.facet)), "lo": list(c.lo),
                                            "hi": list(c.hi), "score": c.score, "reason": c.reason}
                                           for c in taken]})
    return new, reasons


def _placed(run: Run, axes: list[Axis], facets: list[str]) -> tuple[tuple, tuple]:
    """A run's point (its refined axes' values) and facet (its other axes' columns)."""
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
