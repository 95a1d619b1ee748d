"""The first minute on a new machine (how near a cold sweep comes to a warm one), measured side by side
in one run:

    python benchmarks/first_minute.py [--json FILE] [--torch-python VENV/bin/python]

- **small grid** (128 runs of the toy preset, n = 256, d = 64, width 64, 1,000 steps): `python -m
  sweeps run` as a new process, first with empty caches and no device model (a machine it has
  never run on: a fresh `CONTAMINATION_JAX_CACHE`), then warm; against one run at a time in a
  per-step loop, scaled to the same run-steps: PyTorch (`torch_loop.py`) where it imports, else
  the same loop in JAX (a jitted step called from Python, `bench.python_loop_run`), named in the
  output. The CPU seconds of both sweeps give the floor a cold sweep cannot beat on this many cores
  however well its compile overlaps training (`cpu_bound`);
- **medium grid** (8 runs at n = 1000, d = 256, width 256, 1,000 steps), warm, end to end (process
  start to exit): its forward and weight-gradient matmul FLOPs (4 n d m per run-step) over the
  wall time, against the machine's matmul rate measured in this process (`bench.matmul_rate`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import grid_text, matmul_rate, python_loop_run

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def sweep_s(grid: Path, out: Path, cache: Path) -> tuple[float, float]:
    """Wall seconds of `python -m sweeps run` from process start to exit, and the CPU seconds
    (user + system, every core) it used."""
    env = dict(os.environ, CONTAMINATION_JAX_CACHE=str(cache))
    env.pop("CONTAMINATION_DEVICE_MODELS", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeps", "run", str(grid), "--out", str(out), "--no-progress"],
                   check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_bound(r: dict) -> dict:
    """What the CPU time allows: a sweep cannot end sooner than its CPU seconds over the cores, so
    `cold_floor_s` is the cold sweep with every compile perfectly overlapped, and `x_cold_ceiling`
    the most a cold sweep doing this work could reach against the baseline; `x10_compile_cpu_s`,
    the CPU seconds that trace, lowering and compile may take in all for x10 cold."""
    cores = len(os.sched_getaffinity(0))
    floor = r["cold_cpu_s"] / cores
    return {"cores": cores, "cold_floor_s": floor, "x_cold_ceiling": r["baseline_s"] / floor,
            "x10_compile_cpu_s": r["baseline_s"] / 10 * cores - r["warm_cpu_s"]}


def loop_s_per_run_step(python: str) -> tuple[str, float]:
    """Seconds per run-step of one run at a time in a per-step loop: PyTorch where it imports (in
    the interpreter `python`, e.g. a venv beside the project's that holds torch)."""
    res = subprocess.run([python, str(HERE / "torch_loop.py"), "--runs", "4"], capture_output=True,
                         text=True, cwd=ROOT)
    if res.returncode == 0:
        out = json.loads(res.stdout)
        return f"PyTorch {out['torch']} per-step loop", out["s_per_run_step"]
    from sweeps.grid import load

    work = Path(tempfile.mkdtemp())
    (work / "g.toml").write_text(grid_text("small", 1000, 1))
    runs = load(str(work / "g.toml")).runs()
    python_loop_run(runs[0].config.replace(steps=2, log_every=1))  # compile outside the timing
    t0 = time.perf_counter()
    for r in runs[:2]:
        python_loop_run(r.config)
    return "JAX per-step loop (PyTorch not installed)", (time.perf_counter() - t0) / 2000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--torch-python", default=sys.executable,
                    help="the interpreter that runs torch_loop.py (PyTorch is not a project dependency)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="first-minute-"))
    small = work / "small.toml"
    small.write_text(grid_text("small", 1000, 64))
    medium = work / "medium.toml"
    medium.write_text(grid_text("medium", 1000, 4))
    r = {}
    r["cold_s"], r["cold_cpu_s"] = sweep_s(small, work / "s-cold", work / "cache")
    r["warm_s"], r["warm_cpu_s"] = sweep_s(small, work / "s-warm", work / "cache")
    r["baseline"], per_step = loop_s_per_run_step(args.torch_python)
    r["baseline_s"] = per_step * 128 * 1000
    r["x_cold"], r["x_warm"] = r["baseline_s"] / r["cold_s"], r["baseline_s"] / r["warm_s"]
    r.update(cpu_bound(r))
    sweep_s(medium, work / "m-cold", work / "cache")
    r["medium_warm_s"] = sweep_s(medium, work / "m-warm", work / "cache")[0]
    r["medium_flops"] = 4 * 1000 * 256 * 256 * 1000 * 8
    r["matmul_rate"] = matmul_rate(8, 1000, 256, 256)["limit"]
    r["medium_fraction"] = r["medium_flops"] / r["medium_warm_s"] / r["matmul_rate"]
    print(f"small grid: cold {r['cold_s']:.1f} s, warm {r['warm_s']:.1f} s; {r['baseline']}: "
          f"{r['baseline_s']:.1f} s (x{r['x_cold']:.1f} cold, x{r['x_warm']:.1f} warm)")
    print(f"  CPU seconds: cold {r['cold_cpu_s']:.1f}, warm {r['warm_cpu_s']:.1f}, on {r['cores']} cores: a cold "
          f"sweep doing this work takes at least {r['cold_floor_s']:.1f} s (x{r['x_cold_ceiling']:.1f} at most); "
          f"x10 cold leaves {r['x10_compile_cpu_s']:.1f} CPU s for trace, lowering and compile "
          f"(this one took {r['cold_cpu_s'] - r['warm_cpu_s']:.1f} more than warm)")
    print(f"medium grid warm, end to end: {r['medium_warm_s']:.1f} s, {r['medium_flops'] / r['medium_warm_s'] / 1e9:.1f} "
          f"GFLOP/s = {r['medium_fraction']:.2f} of the matmul rate ({r['matmul_rate'] / 1e9:.1f} GFLOP/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
