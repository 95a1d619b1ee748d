"""What `sweeps refine` buys on a shipped grid: the boundary it finds against a dense grid of the
same number of runs, both scored against a much denser reference grid.

    python benchmarks/refine_benefit.py [--grid slope_vs_bgmean] [--metric bg_mean_proj] [--level 0.2]
                                        [--rounds 3] [--batch N] [--ref-points 17] [--ref-seeds 4]
                                        [--out results/refine-benefit]

Three results directories under `--out`: `refined` (the grid, then `--rounds` rounds of refine),
`uniform` (a grid over the same two axes with about as many runs as `refined` ended with, the
grid's seeds), `reference` (`--ref-points`^2 points x `--ref-seeds`). The axes are the grid's two
refinable ones, the numbers between their values interpolated as refine does (so table-valued
axes keep their shift). Boundary error: the share of the diagram where a design's interpolated
seed means and the reference's lie on different sides of the level (`sweeps.refine.misclassified`).
Prints runs, wall seconds and boundary error of each, as a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path



def lattice_grid(grid, axes, n: int, seeds: int):
    """The grid with its refinable axes replaced by n evenly spaced values each (fields interpolated)."""
    import numpy as np

    from sweeps.lattice import q

    new_axes = dict(grid.axes)
    for a in axes:
        values = [q(v) for v in a.value_at(np.linspace(0, 1, n))]
        if a.entries is None:
            new_axes[a.name] = [int(round(v)) if a.integer else v for v in values]
        else:
            entries = []
            for v in values:
                fields, labels = a.fields_at(v)
                entries.append({"label": labels[a.name], **fields})
            new_axes[a.name] = entries
    return dataclasses.replace(grid, axes=new_axes, seeds=tuple(range(seeds)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="slope_vs_bgmean")
    ap.add_argument("--metric", default="bg_mean_proj")
    ap.add_argument("--level", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="runs per round (default: half the grid's)")
    ap.add_argument("--ref-points", type=int, default=17)
    ap.add_argument("--ref-seeds", type=int, default=4)
    ap.add_argument("--out", default="results/refine-benefit")
    args = ap.parse_args()

    from sweeps.environment import use_host_devices

    use_host_devices(None, runs=10_000)
    from sweeps import engine
    from sweeps.grid import load
    from sweeps.lattice import facet_columns, misclassified, point_stats, refinable_axes
    from sweeps.refine import read_runs, refine
    from sweeps.storage import location

    grid = load(args.grid)
    axes = refinable_axes(grid)[:2]
    facets = facet_columns(grid.axes, axes)
    out = Path(args.out)

    def train(g, o, note=None):
        return engine.run_grid(g, o, progress=False, note=note)

    timing = {}
    t0 = time.perf_counter()
    refine(grid, out / "refined", metric=args.metric, level=args.level, rounds=args.rounds,
           batch=args.batch or len(grid.runs()) // 2, axes=[a.name for a in axes], train=train)
    timing["refined"] = time.perf_counter() - t0
    refined = read_runs(location(out / "refined"))
    n_refined = len(refined)
    # a uniform grid with about as many runs, at the grid's seeds
    n_uniform = max(2, round(math.sqrt(n_refined / len(grid.seeds))))
    uniform_grid = lattice_grid(grid, axes, n_uniform, len(grid.seeds))
    t0 = time.perf_counter()
    train(uniform_grid, out / "uniform")
    timing["uniform"] = time.perf_counter() - t0
    ref_grid = lattice_grid(grid, axes, args.ref_points, args.ref_seeds)
    t0 = time.perf_counter()
    train(ref_grid, out / "reference")
    timing["reference"] = time.perf_counter() - t0

    ref_stats = point_stats(read_runs(location(out / "reference")), axes, facets, args.metric)

    def truth(at):
        from sweeps.lattice import interpolated
        return interpolated(ref_stats, axes, at)

    print(f"\n{args.grid}: boundary {args.metric} = {args.level:g} over {axes[0].name} x {axes[1].name}\n")
    print("| design | runs | wall s | boundary error (share of the diagram) |\n|---|---|---|---|")
    for name in ("refined", "uniform", "reference"):
        runs = read_runs(location(out / name))
        err = misclassified(point_stats(runs, axes, facets, args.metric), axes, args.level, truth)
        extra = ""
        if name == "refined" and "round" in runs:
            extra = " (" + ", ".join(f"round {r}: {n}" for r, n in runs["round"].value_counts().sort_index().items()) + ")"
        if name == "uniform":
            extra = f" ({n_uniform} x {n_uniform} points x {len(grid.seeds)} seeds)"
        if name == "reference":
            extra = f" ({args.ref_points} x {args.ref_points} points x {args.ref_seeds} seeds)"
        print(f"| {name}{extra} | {len(runs)} | {timing[name]:.1f} | {err:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
