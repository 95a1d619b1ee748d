"""Engine benchmarks: the machine's matmul limit, engine throughput, one-run-at-a-time
baselines, compile cost and memory, all measured in one run (ratios are what count).

    python benchmarks/bench.py [--quick] [--json FILE] [--seeds-factor K]

Prints a Markdown table for BENCHMARKS.md and, with --json, the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from contamination.spec import static_spec, traced_values
from contamination.cost import memory_bytes
from contamination.classify import make_training
from contamination.train import compiled_single_run
from sweeps.engine import run_grid
from sweeps.environment import use_host_devices
from sweeps.grid import load
from sweeps.plan import Planning, bucketize, networks_of
from sweeps.programs import compile_bucket

SHAPES = {
    # name: (n_train, input_dim, width, core_dim, bg_dim)
    "small": (256, 64, 64, 8, 8),
    "medium": (1000, 256, 256, 32, 32),
}


def grid_text(name: str, steps: int, seeds: int, mixed: bool = False) -> str:
    n, d, m, c, b = SHAPES[name]
    axes = 'width = [32, 48, 64]\ndims = [{core_dim = 8, bg_dim = 8, input_dim = 64}, ' \
           '{core_dim = 16, bg_dim = 16, input_dim = 128}]' if mixed else 'lr = [0.001, 0.003]'
    fixed = f"n_train = {n}\nn_test = {n}\nsteps = {steps}\nlog_every = {max(steps // 10, 1)}\n"
    if not mixed:
        fixed += f"width = {m}\ninput_dim = {d}\ncore_dim = {c}\nbg_dim = {b}\n"
    return f'description = "bench {name}"\npreset = "toy"\nseeds = {seeds}\n[fixed]\n{fixed}[axes]\n{axes}\n'


def timed(fn, *args, repeat: int = 3) -> float:
    """Best-of wall seconds of fn(*args) with results on host."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(batch: int, n: int, d: int, m: int, steps: int = 200) -> dict:
    """The machine's float32 rate for the engine's matmuls at its sizes, in FLOP/s.

    Two measurements, and the higher one is the limit: (1) one batched `(n, d) @ (d, m)`
    einsum call, best of 3; (2) the engine's two matmuls alone, the forward `x @ w.T` and the
    weight gradient `relu(pre).T @ x`, in a `lax.scan` of `steps` dependent steps, vmapped over
    `batch` configs, as the engine runs them: on one device, and sharded over all local
    devices. Each is timed best of 3.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (batch, n, d), jnp.float32)
    w = jax.random.normal(k2, (batch, m, d), jnp.float32) / np.sqrt(d)
    single = timed(jax.jit(lambda x, w: jnp.einsum("bnd,bmd->bnm", x, w)), x, w)
    rates = {"one_einsum_call": 2 * batch * n * d * m / single}

    def loop(x, w):
        def step(w, _):
            return w - 1e-6 * (jax.nn.relu(x @ w.T).T @ x), None
        return jax.lax.scan(step, w, None, length=steps)[0]

    f = jax.jit(jax.vmap(loop))
    rates["scan_one_device"] = 4 * batch * n * d * m * steps / timed(f, x, w)
    devices = jax.local_devices()
    if len(devices) > 1 and batch % len(devices) == 0:
        sh = NamedSharding(Mesh(np.array(devices), ("cfg",)), P("cfg"))
        g = jax.jit(jax.vmap(loop), in_shardings=(sh, sh), out_shardings=sh)
        rates["scan_all_devices"] = 4 * batch * n * d * m * steps / timed(g, jax.device_put(x, sh),
                                                                          jax.device_put(w, sh))
    return {"limit": max(rates.values()), **rates}


def python_loop_run(cfg) -> None:
    """The reference script's structure: one run, a jitted step called from a Python loop."""
    s = static_spec(cfg)
    step, carry, measure = make_training(s, traced_values(cfg))[:3]
    step, measure = jax.jit(step), jax.jit(measure)
    logs = [measure(carry.params)]
    for t in range(s.steps):
        carry, _ = step(carry, None)
        if (t + 1) % s.log_every == 0 or t + 1 == s.steps:
            logs.append(measure(carry.params))
    jax.block_until_ready(logs)


def bench_grid(name: str, text: str, workdir: Path, baseline_runs: int) -> dict:
    path = workdir / f"{name}.toml"
    path.write_text(text)
    grid = load(str(path))
    runs = grid.runs()
    # One persistent cache for the whole benchmark: the first run of a grid compiles (cold),
    # the second finds its programs in the cache (warm).
    cold = run_grid(grid, workdir / f"{name}-cold", progress=False)
    warm = run_grid(grid, workdir / f"{name}-warm", progress=False)
    total_flops = sum(b["executed_flops"] for b in warm.buckets)
    run_steps = sum(r.config.steps for r in runs)
    # baselines on the first runs (same configs), scaled to the whole grid by run-steps
    sample = runs[:baseline_runs]
    sample_steps = sum(r.config.steps for r in sample)
    for r in sample[:1]:  # compile outside the timing
        python_loop_run(r.config.replace(steps=2, log_every=1))
    t0 = time.perf_counter()
    for r in sample:
        python_loop_run(r.config)
    loop_s = (time.perf_counter() - t0) * run_steps / sample_steps
    for r in sample:
        compiled_single_run(static_spec(r.config))  # build
        jax.block_until_ready(compiled_single_run(static_spec(r.config))(traced_values(r.config)))
    t0 = time.perf_counter()
    for r in sample:
        jax.block_until_ready(compiled_single_run(static_spec(r.config))(traced_values(r.config)))
    single_s = (time.perf_counter() - t0) * run_steps / sample_steps
    return {
        "grid": name, "runs": len(runs), "buckets": warm.compiles, "run_steps": run_steps, "flops": total_flops,
        "engine_cold_s": cold.seconds, "engine_warm_s": warm.seconds,
        "compile_cold_s": sum(b["compile_s"] for b in cold.buckets),
        "compile_warm_s": sum(b["compile_s"] for b in warm.buckets),
        "run_steps_per_s": run_steps / warm.seconds, "flop_per_s": total_flops / warm.seconds,
        "python_loop_s": loop_s, "single_compiled_s": single_s,
        "speedup_vs_python_loop": loop_s / warm.seconds, "speedup_vs_single_compiled": single_s / warm.seconds,
        "baseline_sample_runs": len(sample),
    }


def memory_check(name: str, workdir: Path) -> dict:
    """XLA's buffer assignment for one compiled chunk against the engine's per-run estimate."""
    from jax.sharding import Mesh

    path = workdir / f"{name}.toml"
    grid = load(str(path))
    b = bucketize(networks_of(grid.runs()), Planning(2**34, len(jax.local_devices()), None, min_efficiency=0.8))[0]
    compiled = compile_bucket(b.static, b.chunk_size, Mesh(np.array(jax.local_devices()), ("cfg",))).compiled
    ma = compiled.memory_analysis()  # of one device's program: its shard of the chunk
    measured = ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
    per_device = b.chunk_size // len(jax.local_devices())
    return {"grid": name, "chunk": b.chunk_size, "runs_per_device": per_device,
            "measured_per_run": measured / per_device, "estimated_per_run": memory_bytes(b.static),
            "ratio": memory_bytes(b.static) / (measured / per_device)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller grids (a smoke test of the script)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seeds-factor", type=int, default=1,
                    help="multiply every grid's seeds (an accelerator needs more runs per program to fill it; "
                         "the CPU numbers in BENCHMARKS.md use 1)")
    args = ap.parse_args()
    q = args.quick
    use_host_devices()  # as `python -m sweeps` does: on a CPU, one JAX device per core
    dev = jax.local_devices()[0]
    out = {"device": f"{len(jax.local_devices())} x {dev.device_kind} ({jax.default_backend()})",
           "jax": jax.__version__, "python": platform.python_version(), "machine": platform.machine()}
    n, d, m, *_ = SHAPES["medium"]
    out["matmul_medium"] = matmul_rate(8, n, d, m, steps=20 if q else 100)
    out["matmul_medium_flop_per_s"] = out["matmul_medium"]["limit"]
    n, d, m, *_ = SHAPES["small"]
    out["matmul_small"] = matmul_rate(32, n, d, m, steps=100 if q else 1000)
    out["matmul_small_flop_per_s"] = out["matmul_small"]["limit"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["CONTAMINATION_JAX_CACHE"] = str(work / "jax-cache")  # a fresh, empty cache
        k = max(args.seeds_factor, 1)
        grids = [("small", grid_text("small", 200 if q else 2000, k * (4 if q else 16)), 2),
                 ("medium", grid_text("medium", 50 if q else 500, k * (2 if q else 4)), 1),
                 ("mixed", grid_text("small", 100 if q else 1000, k * (2 if q else 4), mixed=True), 2)]
        out["grids"] = [bench_grid(nm, text, work, k) for nm, text, k in grids]
        out["memory"] = [memory_check(nm, work) for nm, _, _ in grids]
        qs = load("quickstart")
        cold = run_grid(qs, work / "qs-cold", progress=False)
        warm = run_grid(qs, work / "qs-warm", progress=False)
        out["quickstart"] = {
            "cold_s": cold.seconds, "cold_compile_s": sum(b["compile_s"] for b in cold.buckets),
            "warm_s": warm.seconds, "warm_compile_s": sum(b["compile_s"] for b in warm.buckets),
            "warm_compile_share": sum(b["compile_s"] for b in warm.buckets) / warm.seconds}
    limit = {"small": out["matmul_small_flop_per_s"], "medium": out["matmul_medium_flop_per_s"],
             "mixed": out["matmul_small_flop_per_s"]}
    print(f"device: {out['device']}, jax {out['jax']}, python {out['python']}")
    print(f"matmul limit: small shapes {limit['small'] / 1e9:.1f} GFLOP/s, medium shapes {limit['medium'] / 1e9:.1f} GFLOP/s")
    for nm in ("small", "medium"):
        print(f"  {nm}: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in out[f"matmul_{nm}"].items() if k != "limit"))
    print("\n| grid | runs | buckets | run-steps/s | GFLOP/s | % of matmul limit | engine s (warm / cold) "
          "| x vs Python-loop step | x vs one compiled run at a time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for g in out["grids"]:
        g["fraction_of_limit"] = g["flop_per_s"] / limit[g["grid"]]
        print(f"| {g['grid']} | {g['runs']} | {g['buckets']} | {g['run_steps_per_s']:.0f} | {g['flop_per_s'] / 1e9:.1f} "
              f"| {100 * g['fraction_of_limit']:.0f}% | {g['engine_warm_s']:.1f} / {g['engine_cold_s']:.1f} "
              f"| {g['speedup_vs_python_loop']:.1f} | {g['speedup_vs_single_compiled']:.2f} |")
    qs = out["quickstart"]
    print(f"\nquickstart: cold {qs['cold_s']:.1f} s ({qs['cold_compile_s']:.1f} s compiling), warm {qs['warm_s']:.1f} s "
          f"({qs['warm_compile_s']:.2f} s compiling = {100 * qs['warm_compile_share']:.0f}%)")
    print("\n| grid | chunk (runs per device) | measured bytes/run (XLA buffers) | estimated bytes/run "
          "| estimate / measured |")
    print("|---|---|---|---|---|")
    for mm in out["memory"]:
        print(f"| {mm['grid']} | {mm['chunk']} ({mm['runs_per_device']}) | {mm['measured_per_run']:.0f} "
              f"| {mm['estimated_per_run']} | {mm['ratio']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
