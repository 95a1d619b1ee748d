"""How much worse is a plan made from the shipped default device model than one made from this
machine's measured model? Every shipped grid (default scale) is planned with both; both plans are
then priced by the measured model (compile plus training seconds per bucket).

    python benchmarks/uncalibrated_plan.py [--scale default]

The measurement takes 5-15 s (`calibrate.measure`); the plans take no training.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from contamination.cache import setup_jax
from sweeps import calibrate
from sweeps.engine import local_mesh
from sweeps.environment import default_memory_budget, use_host_devices
from sweeps.grid import load
from sweeps.plan import Planning, TableNetworks, bucketize

GRIDS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "sweeps" / "grids").glob("*.toml"))


def priced(buckets, model) -> float:
    """The seconds `model` predicts for these buckets (each compiled afresh)."""
    return sum(model.compile_s(b.static, b.compile_options) + model.run_s(b) for b in buckets)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="default")
    args = ap.parse_args()
    use_host_devices(None)
    setup_jax(tempfile.mkdtemp())
    mesh = local_mesh()
    default = calibrate.default_model(mesh)
    measured = calibrate.measure(mesh)
    print(f"default: {default.flop_rate / 1e9:.0f} GFLOP/s, {default.step_s * 1e6:.0f} us/step, compile "
          f"{default.calibration_compile_s:.1f} s; measured here: {measured.flop_rate / 1e9:.0f} GFLOP/s, "
          f"{measured.step_s * 1e6:.0f} us/step, compile {measured.calibration_compile_s:.1f} s\n")
    print("| grid | programs (default / measured plan) | measured s of the default's plan | of the measured plan | ratio |")
    print("|---|---|---|---|---|")
    worst = 1.0
    for name in GRIDS:
        try:
            grid = load(name, None if args.scale == "default" else args.scale)
        except Exception:  # noqa: BLE001 - a grid without this scale
            continue
        plans = {}
        for key, model in (("default", default), ("measured", measured)):
            p = Planning(default_memory_budget(), mesh.devices.size, model)
            plans[key] = bucketize(TableNetworks(grid.table), p)
        a, b = priced(plans["default"], measured), priced(plans["measured"], measured)
        worst = max(worst, a / b)
        print(f"| {name} | {len(plans['default'])} / {len(plans['measured'])} | {a:.1f} | {b:.1f} | {a / b:.3f} |")
    print(f"\nworst ratio: {worst:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
