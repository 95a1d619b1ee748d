"""What the critical shift, its curve and the mean-direction ablation cost: the same grid swept with
and without them, alternating, each cold (empty caches) and warm.

    .venv/bin/python benchmarks/shift_overhead.py [GRID] [--rounds 2] [--before COMMIT]

"without" is today's code with each experiment's final measurements dropped (`Training.final =
None`, so no ladder, bisection or ablation is traced, compiled or run; the tables lack their
columns); "with" is the engine as shipped. `--before COMMIT` instead compares with the code of an
older commit, checked out into a temporary git worktree (it must be able to read the grid file).
Prints the engine's wall seconds of each sweep and the ratio with / without.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# `python -m sweeps run ...` with the final measurements dropped
WITHOUT = """
import runpy, sys
from contamination import loop, train
run_training = loop.run_training
train.run_training = lambda s, training, *rule: run_training(s, training._replace(final=None), *rule)
sys.argv = ["sweeps"] + sys.argv[1:]
runpy.run_module("sweeps", run_name="__main__")
"""


def sweep(tree: Path, grid: str, cache: Path, out: Path, drop_final: bool) -> float:
    env = {**os.environ, "CONTAMINATION_JAX_CACHE": str(cache), "CONTAMINATION_DEVICE_MODELS": str(cache / "dm")}
    head = [sys.executable, "-c", WITHOUT] if drop_final else [sys.executable, "-m", "sweeps"]
    res = subprocess.run(head + ["run", grid, "--out", str(out), "--no-progress"], cwd=tree, env=env,
                         capture_output=True, text=True, check=True)
    return float(re.search(r"; ([0-9.]+) s \(", res.stdout).group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("grid", nargs="?", default="quickstart")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--before", help="compare with this commit's code instead of today's without the measurements")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shift-overhead-"))
    grid = str(ROOT / "sweeps" / "grids" / f"{args.grid}.toml")
    if args.before:
        before = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        arms = (("without", before, False), ("with", ROOT, False))
    else:
        arms = (("without", ROOT, True), ("with", ROOT, False))
    try:
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for name, tree, drop in arms:
                cache = tmp / f"cache-{name}-{r}"
                for state in ("cold", "warm"):
                    t = sweep(tree, grid, cache, tmp / f"out-{name}-{r}-{state}", drop)
                    times.setdefault((name, state), []).append(t)
                    print(f"round {r} {name:7s} {state}: {t:.1f} s", flush=True)
        for state in ("cold", "warm"):
            b, a = min(times[("without", state)]), min(times[("with", state)])
            print(f"{args.grid} {state}: without {b:.1f} s, with {a:.1f} s (least of {args.rounds}); "
                  f"with / without = {a / b:.3f}")
    finally:
        if args.before:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "before")], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
