"""`python -m sweeps status GRID --out DIR`: how far the shards of a grid are, from the results alone.

Reads the runs files' run ids, the shards' manifests and their leases (nothing is written or
removed), derives the assignment as the shards do (`shards.assign`), and prints per shard its
runs done and missing, the predicted seconds left, and its last attempt. Seconds are predicted
with the device model the shards recorded (the fleet's machines, as last refitted), else with
the reference model.
"""

from __future__ import annotations

import json
import re

import numpy as np

from . import results, shards
from .calibrate import DeviceModel
from .grid import Grid
from .lease import claims, timings
from .plan import Planning
from .storage import Location

SHARD_MANIFEST = re.compile(r"manifest-s(\d+)of(\d+)\.json")


def model_of(invocation: dict, manifest: dict) -> tuple[Planning, str] | None:
    """The planning a shard recorded (device model, memory budget, devices), or None."""
    s = invocation.get("device_model")
    if not s or "flop_rate" not in s:
        return None
    m = DeviceModel(s["device"], s["flop_rate"], s["step_s"], s["compile_s"], s.get("cache_bytes"),
                    s.get("flop_rate_large"), {k: [v] for k, v in (s.get("recorded_compile_s") or {}).items()},
                    source=s.get("source", "measured"))
    rc = s.get("run_coefficients")
    if rc:
        m.__dict__["run_coefficients"] = (float(rc["s_per_chunk"]), float(rc["step_multiplier"]))
    budget = int(invocation.get("memory_budget_bytes") or shards.REFERENCE_BUDGET)
    return Planning(budget, int(manifest.get("local_device_count") or 1), m), f"recorded by the shards ({s['device']})"


def shard_manifests(out: Location) -> dict[tuple[int, int], dict]:
    """(K, N) -> the manifest shard K of N wrote."""
    found = {}
    for name in results.manifest_names(out):
        m = SHARD_MANIFEST.fullmatch(name)
        if m:
            found[(int(m.group(1)), int(m.group(2)))] = json.loads(out.read_text(name))
    return found


def attempt_state(manifest: dict | None, claim) -> str:
    if claim is not None:
        return f"running ({claim.who()})"
    if not manifest or not manifest.get("invocations"):
        return "not started"
    last = manifest["invocations"][-1]
    when = str(last.get("started", ""))[:19].replace("T", " ")
    if "stopped_by" in last:
        return f"stopped by {last['stopped_by']} (started {when})"
    if "finished" in last:
        trained = sum(int(i.get("trained") or 0) for i in manifest["invocations"])
        return f"finished (last attempt started {when}; {trained} runs trained in {len(manifest['invocations'])})"
    return f"ended without a record (started {when}: killed?)"


def report(grid: Grid, out: Location, count: int | None = None) -> str:
    table = grid.table
    done = np.isin(table.run_key, results.done_runs(out, remove=False).keys)
    manifests = shard_manifests(out)
    stale = timings(out.local)[1]
    live = {c["name"]: c for c in claims(out) if c.live(stale)}
    counts = sorted({n for _, n in manifests} | {int(c["count"]) for c in live.values() if "count" in c})
    count = count or (counts[-1] if len(counts) == 1 else None)
    lines = [f"grid {grid.name} (scale {grid.scale}): {len(table)} runs, {int(done.sum())} done, "
             f"{int((~done).sum())} missing, in {out}"]
    if count is None:
        if counts:
            lines.append(f"shards of several counts wrote here ({', '.join(map(str, counts))}); give --shards N")
            count = counts[-1]
        else:
            count = 1
    if count == 1 and (0, 1) not in manifests and out.exists("manifest.json"):  # a sweep without --shard
        manifests[(0, 1)] = json.loads(out.read_text("manifest.json"))
    a = shards.assign(table, count)
    recorded = [(inv, m) for m in manifests.values() for inv in m.get("invocations", [])[-1:]]
    recorded.sort(key=lambda im: str(im[0].get("started", "")))
    fleet = model_of(*recorded[-1]) if recorded else None
    planning, model_name = fleet or (shards.reference_planning(a.model), f"reference model {a.model_name}")
    lines.append(f"  {'shard':>7} {'runs':>6} {'done':>6} {'missing':>7} {'left s':>9}  last attempt")
    left_total = 0.0
    for k in range(count):
        rows = a.rows(k)
        missing = rows[~done[rows]]
        left = shards.predicted_seconds(table, missing, planning)
        left_total += left
        name = shards.tag(k, count)
        lines.append(f"  {k:>3}/{count:<3} {len(rows):>6} {len(rows) - len(missing):>6} {len(missing):>7} "
                     f"{left:>9.1f}  {attempt_state(manifests.get((k, count)), live.get(name))}")
    if "all" in live:
        lines.append(f"  a sweep without --shard is running ({live['all'].who()})")
    lines.append(f"  {int((~done).sum())} runs missing, {left_total:.1f} s predicted for them (one shard after "
                 f"another; {model_name})" if (~done).any() else "  nothing missing")
    return "\n".join(lines)
