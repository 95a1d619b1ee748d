"""The same runs on an accelerator and on the CPU: `python -m sweeps run GRID` once on JAX's default
backend and once with JAX_PLATFORMS=cpu, each in a fresh process with fresh caches.

    python benchmarks/device_agreement.py [--grid quickstart] [--tolerance 0.05] [--json FILE]

Prints, per final metric, the largest difference between the two over the runs, and per cell of
the grid (its axes) the mean OOD accuracy on each backend with the cell's seeds. Exits 1 where a
cell's means differ by more than --tolerance: the grid's finding (for quickstart, the ReLU network
with the mean-0.5 background near chance while the linear network and the zero-mean controls stay
near 1) must not depend on the device. Single runs may differ more: float32 reductions run in
another order on each device, and training amplifies that (docs/simulator.md#numerics).
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

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("id_acc", "ood_acc", "id_loss", "ood_loss", "core_norm", "bg_norm", "critical_shift")


def sweep(grid: str, out: Path, cache: Path, cpu: bool) -> tuple[pd.DataFrame, dict, float]:
    env = {**os.environ, "CONTAMINATION_JAX_CACHE": str(cache)}
    if cpu:
        env["JAX_PLATFORMS"] = "cpu"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeps", "run", grid, "--out", str(out), "--no-progress"],
                   check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return pd.read_parquet(out / "runs"), json.loads((out / "manifest.json").read_text()), wall


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="quickstart")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="device-agreement-"))
    dev, manifest, dev_s = sweep(args.grid, work / "device", work / "cache-device", cpu=False)
    cpu, _, cpu_s = sweep(args.grid, work / "cpu", work / "cache-cpu", cpu=True)
    print(f"{args.grid}: {len(dev)} runs; {manifest['backend']} ({manifest['device_kind']}) {dev_s:.1f} s, "
          f"cpu {cpu_s:.1f} s (each a fresh process, cold)")
    dev, cpu = dev.set_index("run_id").sort_index(), cpu.set_index("run_id").sort_index()
    assert dev.index.equals(cpu.index), "the two sweeps ran different runs"
    r = {"backend": manifest["backend"], "device_kind": manifest["device_kind"], "device_s": dev_s, "cpu_s": cpu_s,
         "largest_difference": {}}
    for m in (m for m in METRICS if m in dev.columns):
        diff = float((dev[m] - cpu[m]).abs().max())
        r["largest_difference"][m] = diff
        print(f"  {m:>15}: largest |device - cpu| over the runs {diff:.3g}")
    axes = [a for a in manifest["axis_columns"] if a in dev.columns] or ["config_id"]
    cells = pd.DataFrame({"device": dev.groupby(axes, observed=True)["ood_acc"].mean(),
                          "cpu": cpu.groupby(axes, observed=True)["ood_acc"].mean()})
    cells["difference"] = (cells["device"] - cells["cpu"]).abs()
    print(f"mean OOD accuracy per cell ({', '.join(axes)}):")
    print(cells.to_string(float_format=lambda x: f"{x:.3f}"))
    r["cells"] = cells.reset_index().astype({a: str for a in axes}).to_dict("records")
    r["agree"] = bool((cells["difference"] <= args.tolerance).all())
    print(f"every cell within {args.tolerance}: {r['agree']}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0 if r["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
