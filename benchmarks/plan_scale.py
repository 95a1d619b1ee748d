"""Planning at scale: `python -m sweeps plan` of grids of 10^4, 10^5 and 10^6 runs, and the resume
check of a results directory that holds 10^5 done runs (docs/benchmarks.md).

    python benchmarks/plan_scale.py [--sizes 1e4,1e5,1e6] [--resume 1e5] [--runs-per-file 8] [--code DIR]
                                    [--distinct] [--no-phases] [--json FILE]

The grids are the toy preset's, widths 10 x lr L x weight_decay W x S seeds: 10^4 = L 10, W 10,
S 10; 10^5 = L 10, W 10, S 100; 10^6 = L 10, W 100, S 100. With --distinct,
every run is a config of its own (S 1): 10^4 = L 10, W 100; 10^5 = L 100, W 100; 10^6 = L 1000,
W 100. Each `plan` runs in a fresh process
(as every task of an array job would) with an empty `--out`; its wall seconds and peak resident
memory (the process's maxrss) are printed, and, beside them, the seconds to load (parse, expand
and hash) the grid and to plan it (`engine.plan_pending`), timed inside a second fresh process. The 16-run quickstart grid is planned too: the start-up (Python, JAX) that every plan
pays. The device model is measured once first (a warm-up plan, not timed) into a temporary cache.

The resume check: a directory with the --resume grid's runs all written (runs files of
--runs-per-file rows with the runs table's columns), then, in a fresh process, the seconds to
decide which runs are done (read the run_id columns, test every grid run against them), and
the wall of `python -m sweeps plan` on it (nothing left to train); first with no index (every
runs file's run_id column read), then with the index a run leaves when it ends
(`results.write_index`).

`--code DIR` runs the commands against another checkout (e.g. the code before grids expanded into columns:
`mkdir /tmp/before && git archive ec221b9 | tar -x -C /tmp/before`); the benchmark's own
helpers (writing the grids and the results directory) run in this checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {10_000: (10, 10, 10), 100_000: (10, 10, 100), 1_000_000: (10, 100, 100)}  # runs -> lrs, wds, seeds
DISTINCT = {10_000: (10, 100, 1), 100_000: (100, 100, 1), 1_000_000: (1000, 100, 1)}  # --distinct: one seed


def grid_text(n_runs: int, distinct: bool = False) -> str:
    import numpy as np

    n_lr, n_wd, seeds = (DISTINCT if distinct else SHAPES)[n_runs]
    widths = [16 * (i + 1) for i in range(10)]
    lrs = [float(f"{x:.4g}") for x in np.geomspace(1e-4, 1e-1, n_lr)]
    wds = [float(f"{x:.4g}") for x in np.geomspace(1e-6, 1e-1, n_wd)]
    return (f'description = "plan_scale: {n_runs} runs"\npreset = "toy"\nseeds = {seeds}\n[axes]\n'
            f"width = {widths}\nlr = {lrs}\nweight_decay = {wds}\n")


# Runs a command as its only child and reports the child's peak resident memory (kB on Linux).
WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(r.returncode)")


def measured(cmd: list[str], code: Path, env: dict) -> dict:
    """Wall seconds, peak resident memory and output of `cmd` in a fresh process."""
    env = {**env, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", WRAP, *cmd], cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    kb = int(res.stderr.strip().splitlines()[-1].split()[1])
    return {"wall_s": wall, "peak_mb": kb / 1024, "stdout": res.stdout}


PHASES = """
import json, sys, time
t0 = time.perf_counter()
from sweeps.grid import load
from sweeps import engine, storage
t1 = time.perf_counter()
grid = load(sys.argv[1])
t2 = time.perf_counter()
from sweeps.environment import use_host_devices
use_host_devices(runs=2)
from contamination.cache import setup_jax
cache = setup_jax()
mesh = engine.local_mesh()
t3 = time.perf_counter()
p = engine.plan_pending(grid, storage.location(sys.argv[2]), mesh, cache, memory_budget=None, min_efficiency=None,
                        chunk_size=None)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "plan_s": t4 - t3, "buckets": len(p.buckets)}))
"""

RESUME = """
import json, sys, time
import numpy as np
from sweeps.grid import load
from sweeps import results, storage
grid = load(sys.argv[1])
out = storage.location(sys.argv[2])
t0 = time.perf_counter()
if hasattr(results, "done_run_keys"):
    done = results.done_run_keys(out)
    pending = int((~np.isin(grid.table.run_key, done)).sum())
    n_done = len(done)
else:  # the code before grids expanded into columns (ec221b9)
    done = results.done_run_ids(out)
    pending = sum(r.run_id not in done for r in grid.runs())
    n_done = len(done)
print(json.dumps({"resume_check_s": time.perf_counter() - t0, "done": n_done, "pending": pending}))
"""


def write_done(grid_path: Path, out: Path, runs_per_file: int) -> int:
    """A results directory holding every run of the grid: runs files of `runs_per_file` rows with
    the runs table's columns and metadata (pandas' and the provenance, as `results.to_arrow`)."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from contamination.ids import RESULTS_VERSION
    from sweeps.runs import metric_names
    from sweeps.grid import load
    from sweeps.provenance import provenance
    from sweeps.results import config_columns, to_arrow

    grid = load(str(grid_path))
    table = grid.table
    n = len(table)
    metrics = metric_names(table)
    rng = np.random.default_rng(0)
    cols = {"run_id": table.run_ids(), "config_id": [table.points[k].config_id for k in table.point.tolist()],
            "network_id": table.network_ids(), "grid": [grid.name] * n, "scale": [grid.scale] * n}
    configs = pd.DataFrame([config_columns(p.config) for p in table.points])
    cols.update({c: configs[c].to_numpy()[table.point] for c in configs})
    cols["seed"] = table.seed
    cols.update({"round": np.zeros(n, int), **{m: rng.random(n) for m in metrics},
                 "diverged": np.zeros(n, bool), "diverged_step": np.full(n, -1), "bucket": ["b0"] * n,
                 "padded_width": table.points[0].config.width, "chunk_size": runs_per_file, "chunk_s": rng.random(n)})
    device = {"backend": "cpu", "device_kind": "cpu", "local_device_count": 2, "device_count": 2,
              "process_index": 0, "process_count": 1}
    whole = to_arrow(pd.DataFrame(cols), provenance(grid, device, metrics))
    (out / "runs").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"grid": grid.name, "results_version": RESULTS_VERSION}))
    for k, start in enumerate(range(0, n, runs_per_file)):
        pq.write_table(whole.slice(start, runs_per_file), out / "runs" / f"{k:07d}.parquet")
    return n


def write_index(out: Path) -> bool:
    """The index a sweep leaves when it stops (`results.write_index`); False where the code has none."""
    from sweeps import results, storage

    if not hasattr(results, "write_index"):
        return False
    loc = storage.location(out)
    results.write_index(loc, 0, results.done_runs(loc))
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5,1e6", help="grid sizes to plan (of 1e4, 1e5, 1e6)")
    ap.add_argument("--resume", default="1e5", help="grid size whose every run is written for the resume check ('' : none)")
    ap.add_argument("--runs-per-file", type=int, default=8,
                    help="rows per runs file of the resume check (default 8: CPU chunks are small)")
    ap.add_argument("--code", default=str(ROOT), help="the checkout whose `python -m sweeps` is measured")
    ap.add_argument("--distinct", action="store_true",
                    help="plan grids of one seed, every run its own config (widths 10 x lr x weight_decay)")
    ap.add_argument("--no-phases", action="store_true", help="time the plan command only (not load and plan apart)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    code = Path(args.code).resolve()
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    report: dict = {"code": str(code), "python": sys.version.split()[0], "cores": len(os.sched_getaffinity(0)),
                    "plans": [], "resume": None}
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp:
        t = Path(tmp)
        env = {**os.environ, "CONTAMINATION_JAX_CACHE": str(t / "cache"), "JAX_PLATFORMS": "cpu"}
        env.pop("CONTAMINATION_DEVICE_MODELS", None)
        plan = [sys.executable, "-m", "sweeps", "plan"]
        measured(plan + ["quickstart", "--out", str(t / "empty")], code, env)  # warm-up: the device model
        start = measured(plan + ["quickstart", "--out", str(t / "empty")], code, env)
        print(f"start-up (quickstart, 16 runs): {start['wall_s']:.2f} s, peak {start['peak_mb']:.0f} MB", flush=True)
        report["startup"] = {k: v for k, v in start.items() if k != "stdout"}
        for n in sizes:
            path = t / f"scale{n}.toml"
            path.write_text(grid_text(n, args.distinct))
            r = measured(plan + [str(path), "--out", str(t / "empty")], code, env)
            summary = r["stdout"].splitlines()[1] if r["stdout"] else ""
            row = {"runs": n, "wall_s": r["wall_s"], "peak_mb": r["peak_mb"], "summary": summary}
            line = f"{n:>9} runs: plan {r['wall_s']:6.2f} s wall, peak {r['peak_mb']:6.0f} MB"
            if not args.no_phases:
                phases = json.loads(measured([sys.executable, "-c", PHASES, str(path), str(t / "empty")], code, env)
                                    ["stdout"].strip().splitlines()[-1])
                row.update(phases)
                line += f" | in-process: load {phases['load_s']:.2f} s, plan_pending {phases['plan_s']:.2f} s"
            report["plans"].append(row)
            print(f"{line} | {summary}", flush=True)
        if args.resume:
            n = int(float(args.resume))
            path = t / f"scale{n}.toml"
            path.write_text(grid_text(n))
            out = t / "done"
            written = write_done(path, out, args.runs_per_file)
            files = len(list((out / "runs").iterdir()))
            report["resume"] = {"runs": written, "files": files}
            for label in ("no index", "index"):
                if label == "index" and not (code == ROOT and write_index(out)):
                    continue
                check = json.loads(measured([sys.executable, "-c", RESUME, str(path), str(out)], code, env)
                                   ["stdout"].strip().splitlines()[-1])
                r = measured(plan + [str(path), "--out", str(out)], code, env)
                report["resume"][label] = {**check, "plan_wall_s": r["wall_s"], "plan_peak_mb": r["peak_mb"]}
                print(f"resume check ({label}), {written} done runs in {files} runs files: "
                      f"{check['resume_check_s']:.2f} s ({check['pending']} pending); `sweeps plan` on it "
                      f"{r['wall_s']:.2f} s wall, peak {r['peak_mb']:.0f} MB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
