"""The engine's fixed overhead: seconds from process start to the first training step of a warm
sweep, and where they go.

    python benchmarks/startup.py [GRID] [--rounds N] [--cache DIR]

Runs `python -m sweeps run GRID` once to warm the caches (JAX's, the program store, the device
model) into DIR (default: a fresh temporary directory), then N times more into fresh results
directories, each a new process. The engine records, in seconds from its process's start, when it
was entered (the interpreter, the imports, the grid loaded), when planning ended, when the first
program was ready, and when the first chunk was dispatched (the manifest's `startup_s`). The
interpreter and import shares come from separate processes (`python -c pass`, `import jax`, and
the engine's own imports), timed on the same clock up to the end of the code, not the exit. Prints a Markdown table of medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# The age of the process after `code`, on the clock of the manifest's `startup_s`
# (`sweeps.environment.process_age_s`): the interpreter's exit is not counted.
AGE = ("import os; s = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19]); "
       "print(float(open('/proc/uptime').read().split()[0]) - s / os.sysconf('SC_CLK_TCK'))")


def wall(code: str, env: dict) -> float:
    """Seconds from the start of a new interpreter to the end of `code` in it."""
    out = subprocess.run([sys.executable, "-c", f"{code}\n{AGE}"], check=True, env=env, cwd=ROOT,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def sweep(grid: str, out: Path, env: dict) -> dict:
    subprocess.run([sys.executable, "-m", "sweeps", "run", grid, "--out", str(out), "--no-progress"],
                   check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((out / "manifest.json").read_text())["invocations"][-1]["startup_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid", nargs="?", default="quickstart")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    env = dict(os.environ, CONTAMINATION_JAX_CACHE=args.cache or str(work / "cache"))
    env.pop("CONTAMINATION_DEVICE_MODELS", None)
    sweep(args.grid, work / "warm-up", env)
    rows = {k: [] for k in ("python", "import jax", "engine imports", "engine", "planned", "program", "first_step")}
    for i in range(args.rounds):
        rows["python"].append(wall("pass", env))
        rows["import jax"].append(wall("import jax", env))
        rows["engine imports"].append(wall("import sweeps.__main__, sweeps.engine", env))
        for k, v in sweep(args.grid, work / f"r{i}", env).items():
            rows[k].append(v)
    med = {k: statistics.median(v) for k, v in rows.items()}
    phases = [
        ("interpreter start", med["python"]),
        ("import jax", med["import jax"] - med["python"]),
        ("the engine's other imports", med["engine imports"] - med["import jax"]),
        ("grid load, CLI checks", med["engine"] - med["engine imports"]),
        ("planning (results index, device model, buckets)", med["planned"] - med["engine"]),
        ("manifest, program load", med["program"] - med["planned"]),
        ("first chunk's inputs and dispatch", med["first_step"] - med["program"]),
    ]
    print(f"`python benchmarks/startup.py {args.grid} --rounds {args.rounds}` (medians; warm caches)\n")
    print("| phase | s |\n|---|---|")
    for name, s in phases:
        print(f"| {name} | {s:.3f} |")
    print(f"| **process start to the first training step** | **{med['first_step']:.3f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
