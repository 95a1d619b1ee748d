"""What the critical shift, its curve and the mean-direction ablation cost: the same grid swept by
the code before them and by this code, alternating, each cold (empty caches) and warm.

    .venv/bin/python benchmarks/shift_overhead.py BEFORE_COMMIT [GRID] [--rounds 2]

BEFORE_COMMIT is checked out into a temporary git worktree; both are run with this venv's Python
from their own tree. Prints the engine's wall seconds of each sweep and the ratio after / before.
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


def sweep(tree: Path, grid: str, cache: Path, out: Path) -> float:
    env = {**os.environ, "CONTAMINATION_JAX_CACHE": str(cache), "CONTAMINATION_DEVICE_MODELS": str(cache / "dm")}
    res = subprocess.run([sys.executable, "-m", "sweeps", "run", grid, "--out", str(out), "--no-progress"],
                         cwd=tree, env=env, capture_output=True, text=True, check=True)
    return float(re.search(r"; ([0-9.]+) s \(", res.stdout).group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("grid", nargs="?", default="width_vs_dim")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shift-overhead-"))
    before = tmp / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                   capture_output=True)
    grid = str(ROOT / "sweeps" / "grids" / f"{args.grid}.toml")
    try:
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for name, tree in (("before", before), ("after", ROOT)):
                cache = tmp / f"cache-{name}-{r}"
                for state in ("cold", "warm"):
                    out = tmp / f"out-{name}-{r}-{state}"
                    t = sweep(tree, grid, cache, out)
                    times.setdefault((name, state), []).append(t)
                    print(f"round {r} {name:6s} {state}: {t:.1f} s", flush=True)
        for state in ("cold", "warm"):
            b, a = min(times[("before", state)]), min(times[("after", state)])
            print(f"{state}: before {b:.1f} s, after {a:.1f} s (least of {args.rounds}); after / before = {a / b:.3f}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
