"""Whole grids in few programs: a cold sweep against one program per shape, and how well the
planner's device model predicts compile and training seconds.

    python benchmarks/planner.py cold [--grid width_vs_dim] [--scale NAME] [--auto-only] [--matmul] [--json FILE]
    python benchmarks/planner.py accuracy [--grids a,b,...] [--json FILE]

`cold` runs `python -m sweeps run GRID` twice, each in a fresh process with an empty
CONTAMINATION_JAX_CACHE (no JAX cache, no program store, no device model): once with
`--min-efficiency 1` (one program per exact shape) and once with the default `auto` planner.
It prints wall seconds, seconds waiting for compiles and the ratio of the two walls.

`accuracy` runs every shipped grid (default scale) cold, one after the other with one cache
(so the device model is measured once, by the first), and prints per bucket the predicted
against the measured compile and training seconds, with the median and worst ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sweep(grid: str, out: Path, cache: Path, *extra: str, scale: str | None = None) -> dict:
    env = {**os.environ, "CONTAMINATION_JAX_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "sweeps", "run", grid, "--out", str(out), "--no-progress", *extra]
    if scale:
        cmd += ["--scale", scale]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    inv = json.loads((out / "manifest.json").read_text())["invocations"][-1]
    return {"grid": grid, "args": list(extra), "wall_s": wall, "engine_s": inv["seconds"],
            "plan_s": inv["plan_s"], "compile_wait_s": inv["compile_wait_s"],
            "compile_s": sum(b["compile_s"] for b in inv["buckets"]), "programs": len(inv["buckets"]),
            "runs": inv["trained"], "networks": inv["networks_trained"], "device_model": inv["device_model"],
            "buckets": inv["buckets"], "summary": res.stdout.strip().splitlines()[-1]}


def matmul_limit() -> dict:
    """The device's matmul rate at the engine's reference sizes and JAX's default precision
    (`bench.matmul_rate`; float32 on a CPU, TF32 on an NVIDIA GPU from Ampere on), in a
    separate process so that this one never starts JAX."""
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import jax; "
            "from sweeps.environment import use_host_devices; use_host_devices(); "
            "from bench import matmul_rate; r = matmul_rate(8 * len(jax.local_devices()), 1000, 256, 256, steps=50); "
            "r['precision'] = str(jax.config.jax_default_matmul_precision or 'default'); "
            "r['device'] = jax.local_devices()[0].device_kind; print(json.dumps(r))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def achieved(r: dict) -> float:
    """Executed FLOPs over training seconds, over all buckets of a sweep."""
    return sum(b["executed_flops"] for b in r["buckets"]) / sum(b["run_s"] for b in r["buckets"])


def cold(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        exact = None
        if not args.auto_only:
            exact = sweep(args.grid, t / "exact", t / "cache-exact", "--min-efficiency", "1", scale=args.scale)
        auto = sweep(args.grid, t / "auto", t / "cache-auto", *args.auto_args, scale=args.scale)
    limit = matmul_limit() if args.matmul else None
    for name, r in (("--min-efficiency 1", exact), ("auto", auto)):
        if r is None:
            continue
        print(f"{name:>18}: {r['programs']:3d} programs, wall {r['wall_s']:6.1f} s (engine {r['engine_s']:6.1f} s, "
              f"of which planning {r['plan_s']:.1f} s), compiling {r['compile_s']:5.1f} s, waiting for compiles "
              f"{r['compile_wait_s']:5.1f} s = {100 * r['compile_wait_s'] / r['wall_s']:.0f}% of the wall; "
              f"training at {achieved(r) / 1e9:.1f} GFLOP/s (executed FLOPs)")
    out = {"exact": exact, "auto": auto}
    if exact:
        out["ratio"] = auto["wall_s"] / exact["wall_s"]
        print(f"auto / exact wall: {out['ratio']:.2f}")
    if limit:
        out["matmul"] = limit
        print(f"matmul limit ({limit['device']}, precision {limit['precision']}): {limit['limit'] / 1e9:.1f} GFLOP/s; "
              f"auto trains at {100 * achieved(auto) / limit['limit']:.0f}% of it")
    return out


def accuracy(args) -> dict:
    grids = args.grids.split(",") if args.grids else sorted(p.stem for p in (ROOT / "sweeps" / "grids").glob("*.toml"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for g in grids:
            r = sweep(g, t / g, t / "cache")
            for b in r["buckets"]:
                rows.append({"grid": g, "bucket": b["bucket"], "program": b["program"],
                             "compile": (b["predicted_compile_s"], b["compile_s"]),
                             "run": (b["predicted_run_s"], b["run_s"])})
            print(f"{g}: {r['summary']}", flush=True)
    print("\n| grid | bucket | compile predicted / measured s | training predicted / measured s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['grid']} | {r['bucket']} | {r['compile'][0]:.2f} / {r['compile'][1]:.2f} "
              f"| {r['run'][0]:.2f} / {r['run'][1]:.2f} |")
    out = {"rows": rows}
    for what in ("compile", "run"):
        ratios = [m / p for p, m in (r[what] for r in rows) if p > 0 and m > 0]
        worst = max(ratios, key=lambda x: max(x, 1 / x))
        out[what] = {"median": statistics.median(ratios), "worst": worst, "n": len(ratios)}
        print(f"{what}: measured / predicted, median {out[what]['median']:.2f}, worst {worst:.2f} over {len(ratios)} buckets")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cold")
    c.add_argument("--grid", default="width_vs_dim")
    c.add_argument("--scale", default=None)
    c.add_argument("--auto-args", nargs="*", default=[], help="more options of the auto run, e.g. --compile-ahead 0")
    c.add_argument("--auto-only", action="store_true", help="skip the one-program-per-shape run")
    c.add_argument("--matmul", action="store_true", help="also measure the matmul limit (bench.matmul_rate)")
    a = sub.add_parser("accuracy")
    a.add_argument("--grids", default=None)
    for p in (c, a):
        p.add_argument("--json", default=None)
    args = ap.parse_args()
    out = cold(args) if args.cmd == "cold" else accuracy(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
