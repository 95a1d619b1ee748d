"""Regenerate `grid-ids-reference.json`: digests of what every shipped grid expands and plans to,
at every scale: its run ids (in grid order and sorted), config ids, training keys (network ids),
labels, each process's share of a three-process slice, and the buckets (ids, chunk sizes and
networks in order) of three plans under a fixed device model, and the text of `sweeps plan`.

The committed file was written by the code of commit ec221b9 (before issue 32's columnar
expansion and planning); `tests/test_plan_scale.py` checks that today's code reproduces it.
The grid files are today's (three shipped grids were redesigned after ec221b9: the old code
expands them unchanged), so run it from a checkout of that commit with them copied in:
    git archive ec221b9 | tar -x -C /tmp/orig && cp sweeps/grids/*.toml /tmp/orig/sweeps/grids/ && cd /tmp/orig && \
      PYTHONPATH=. /path/to/.venv/bin/python /path/to/tests/data/make_grid_ids_reference.py OUT.json ec221b9
(the second argument names the commit where the checkout is no git repository).
Grids that use fields ec221b9 lacks, or that it did not have, are recorded from today's code under
`later` (`--later WHY NAME...`, issue 26: the distill preset's teacher_bias_unit and teacher_data;
issue 31: width_vs_dim's warmup_steps).
It uses only interfaces both versions have, so it runs on either (`digests()`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()[:16]


def fixed_model():
    """A device model with constants chosen here (nothing measured): predictions are exact
    functions of the buckets, and the cache threshold is hit by the larger chunks."""
    from sweeps.calibrate import DeviceModel

    class FixedModel(DeviceModel):
        def compile_s(self, static, options=()):
            # every program's compile the same, on every machine: today's model scales a small CPU
            # program's by its compile options, which depend on the CPU (`contamination/lowering.py`)
            return self.calibration_compile_s

    return FixedModel(device="fixed", flop_rate=2e10, step_s=2e-4, calibration_compile_s=1.5,
                      cache_bytes=4e6, flop_rate_large=1e10)


def plans(networks) -> dict:
    from sweeps.plan import Planning, bucketize

    out = {}
    for name, planning in (("auto", Planning(2 ** 30, 2, fixed_model())),
                           ("eff0.8", Planning(2 ** 28, 1, None, min_efficiency=0.8)),
                           ("eff1", Planning(2 ** 30, 4, None, min_efficiency=1.0))):
        buckets = bucketize(networks, planning)
        out[name] = digest([[b.id, b.chunk_size, [[r.run_id for r in n.runs] for n in b.networks],
                             float(f"{b.predicted_s:.6g}")] for b in buckets])
    return out


def plan_text(grid) -> str:
    """`python -m sweeps plan`'s text under the fixed device model (two host devices, 1 GiB)."""
    import tempfile

    from sweeps import calibrate, engine

    load = calibrate.load
    calibrate.load = lambda *a, **k: fixed_model()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return engine.describe_plan(grid, "results-none", memory_budget=2 ** 30, min_efficiency=None,
                                        cache_dir=tmp)
    finally:
        calibrate.load = load


def grid_digests(name: str, scale: str) -> dict:
    from sweeps.engine import share
    from sweeps.grid import load
    from sweeps.plan import networks_of

    grid = load(name, scale)
    runs = grid.runs()
    nets = networks_of(runs)
    return {
        "runs": len(runs),
        "run_ids": digest([r.run_id for r in runs]),
        "sorted_run_ids": digest(sorted(r.run_id for r in runs)),
        "config_ids": digest([r.config_id for r in runs]),
        "labels": digest([r.labels for r in runs]),
        "networks": digest([[n.id, [r.run_id for r in n.runs]] for n in nets]),
        "shares": digest([[n.id for n in share(nets, i, 3)] for i in range(3)]),
        "plans": plans(nets),
        "plan_text": plan_text(grid),
    }


def digests() -> dict:
    from sweeps.environment import use_host_devices
    from sweeps.grid import GRID_DIR

    use_host_devices(2)

    out = {}
    for path in sorted(GRID_DIR.glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        for scale in ["default", *doc.get("scales", {})]:
            out[f"{path.stem}/{scale}"] = grid_digests(path.stem, scale)
            print(path.stem, scale, out[f"{path.stem}/{scale}"]["runs"], file=sys.stderr)
    return out


def later(names: list[str], why: str) -> None:
    """Record today's digests of the grids (or grid/scale entries) `names` in the committed file, under
    `later` with `why`: grids whose configs use fields ec221b9 did not have (so its code cannot expand
    them) or that did not exist then. Every other entry stays ec221b9's."""
    target = Path(__file__).with_name("grid-ids-reference.json")
    ref = json.loads(target.read_text())
    now = digests()
    for key in now:
        if key in names or key.split("/")[0] in names:
            ref["grids"][key] = now[key]
            ref.setdefault("later", {})[key] = why
    target.write_text(json.dumps(ref, indent=1) + "\n")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--later":  # --later WHY NAME...
        return later(sys.argv[3:], sys.argv[2])
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("grid-ids-reference.json")
    rev = sys.argv[2] if len(sys.argv) > 2 else subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    target.write_text(json.dumps({"commit": rev, "grids": digests()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
