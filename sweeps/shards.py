"""Shards of a grid for array jobs: which networks shard K of N trains, derived from the grid alone.

Every task of an array (Slurm, a Kubernetes Indexed Job, Cloud Batch) derives the assignment
by itself, so it must not depend on the machine a task runs on nor on what is already done:

- Units. The grid's networks (the runs that train one network stay together) are planned into
  buckets (programs) by the planner (`plan.bucketize`) with a *reference* device model and one
  device: the shipped CPU default of `device_defaults.json`, or the one `CONTAMINATION_SHARD_MODEL`
  names (a platform, or a device-model file all tasks read). A machine's own model is not used:
  models measured on two machines, or twice on one, differ, and with them the assignment.
- Balance. The buckets, in plan order, are laid out into N consecutive shares of at most T
  predicted seconds each, T the least for which N shares suffice (bisection). A bucket is cut
  only where a share is full, so at most N - 1 buckets are cut, each cut costing a compile in
  both shares (the fleet's shared program store makes the second a load where both shards plan
  the same program).

A shard then plans its own networks on its own machine as any sweep does (`engine.plan_pending`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from .calibrate import DEFAULTS_FILE, DeviceModel
from .plan import Planning, PlanError, TableNetworks, bucketize
from .runs import RunTable

COUNT_ENV = "CONTAMINATION_SHARDS"  # the shard count, where the array engine gives none (Kubernetes)
MODEL_ENV = "CONTAMINATION_SHARD_MODEL"  # the assignment's reference model: cpu|gpu|tpu or a model file
REFERENCE_BUDGET = 4 * 2**30  # bytes per device of the reference plan's chunks
# The array engines `--shard auto` knows: (name, task index variable, task count variable).
ENGINES = (("Slurm", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
           ("a Kubernetes Indexed Job", "JOB_COMPLETION_INDEX", None),
           ("Cloud Batch", "BATCH_TASK_INDEX", "BATCH_TASK_COUNT"))


class ShardError(PlanError):
    """A shard that cannot be taken (bad --shard, no array index): one line, exit status 2."""


def tag(index: int, count: int) -> str:
    """The shard's name in a results directory (chunk names, manifest, lease): `s{K}of{N}`."""
    return f"s{index}of{count}"


def _index(text, what: str) -> int:
    if not str(text).strip().isdigit():
        raise ShardError(f"{what}: expected a task index 0, 1, 2, ..., got {text!r}")
    return int(text)


def _count(text, what: str) -> int:
    try:
        n = int(str(text).strip())
    except ValueError:
        raise ShardError(f"{what}: expected a positive integer, got {text!r}") from None
    if n < 1:
        raise ShardError(f"{what}: expected a positive integer, got {n}")
    return n


def parse(text: str, shards: int | None = None, env=None) -> tuple[int, int]:
    """`--shard K/N` or `--shard auto` (the array engine's task index; the count from `--shards`,
    else `$CONTAMINATION_SHARDS`, else the engine's) -> (K, N)."""
    env = os.environ if env is None else env
    if str(text).strip().lower() != "auto":
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ShardError(f"--shard: expected K/N (e.g. 0/8) or auto, got {text!r}")
        index, count = int(m.group(1)), _count(m.group(2), "--shard")
        if shards is not None and shards != count:
            raise ShardError(f"--shard {text} and --shards {shards} disagree on the shard count")
        return _checked(index, count, f"--shard {text}")
    for engine, index_var, count_var in ENGINES:
        if env.get(index_var, "").strip():
            index = _index(env[index_var], index_var)
            given = shards or env.get(COUNT_ENV, "").strip() or (env.get(count_var, "").strip() if count_var else "")
            if not given:
                raise ShardError(f"--shard auto: {index_var}={index} ({engine}) gives no shard count; "
                                 f"add --shards N (or set {COUNT_ENV}=N)")
            count = _count(given, "--shards" if shards else (COUNT_ENV if env.get(COUNT_ENV) else count_var))
            return _checked(index, count, f"--shard auto ({index_var}={index}, {count} shards)")
    raise ShardError("--shard auto: no array task index in the environment (SLURM_ARRAY_TASK_ID, "
                     "JOB_COMPLETION_INDEX or BATCH_TASK_INDEX); give --shard K/N")


def _checked(index: int, count: int, what: str) -> tuple[int, int]:
    if not 0 <= index < count:
        raise ShardError(f"{what}: shard index {index} is outside 0..{count - 1} (number array tasks from 0, "
                         "e.g. sbatch --array=0-N-1, and give the whole count with --shards N when one index "
                         "is resubmitted)")
    return index, count


def reference_model(spec: str | None = None) -> tuple[DeviceModel, str]:
    """The assignment's device model and its name: a platform's shipped default (cpu, gpu, tpu;
    one device, no cache effects) or a device-model JSON file (`calibration/*.json`)."""
    spec = (spec if spec is not None else os.environ.get(MODEL_ENV, "")).strip() or "cpu"
    table = json.loads(DEFAULTS_FILE.read_text())["platforms"]
    if spec in table:
        d = table[spec]
        return DeviceModel(f"reference {spec}", d["flop_rate_per_unit"], d["step_s"], d["compile_s"],
                           source=f"default: {spec}"), spec
    path = Path(spec)
    try:
        data = json.loads(path.read_text())
        model = DeviceModel(**{**data, "path": None})
    except (OSError, ValueError, TypeError) as e:
        raise ShardError(f"{MODEL_ENV}={spec}: neither a platform ({', '.join(table)}) nor a readable "
                         f"device-model file ({type(e).__name__})") from None
    return model, f"{path.name} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]})"


def reference_planning(model: DeviceModel) -> Planning:
    return Planning(REFERENCE_BUDGET, 1, model)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Shard `shard[i]` trains network `i` of `nets` (all the grid's networks)."""

    count: int
    nets: TableNetworks
    shard: np.ndarray
    model: DeviceModel  # the reference model
    model_name: str
    digest: str  # the same on every task that derived the same assignment

    def rows(self, index: int) -> np.ndarray:
        """The rows of the grid's `RunTable` that shard `index` trains."""
        return self.nets.rows[np.repeat(self.shard == index, self.nets.n_runs)]


def assign(table: RunTable, count: int, model_spec: str | None = None) -> Assignment:
    """Each network's shard: shares balanced by the reference plan's predicted seconds (module doc)."""
    model, name = reference_model(model_spec)
    nets = TableNetworks(table)
    units = [(np.asarray(b.networks.indices), b.predicted_compile_s, b.predicted_run_s)
             for b in bucketize(nets, reference_planning(model))] if len(nets) else []
    lo, hi = 0.0, sum(c + r for _, c, r in units) * (1 + 1e-9) + 1e-9
    best = _fill(units, hi, count, len(nets))
    for _ in range(64):  # bisection on the largest share's seconds
        mid = (lo + hi) / 2
        got = _fill(units, mid, count, len(nets))
        if got is None:
            lo = mid
        else:
            hi, best = mid, got
    digest = hashlib.sha256(json.dumps([count, name]).encode() + nets.keys.tobytes() + best.tobytes()).hexdigest()
    return Assignment(count, nets, best, model, name, digest[:16])


def _fill(units, limit: float, count: int, n_nets: int) -> np.ndarray | None:
    """Lay the units out in order into shares of at most `limit` seconds (a unit cut where a share
    is full pays its compile in both); None when more than `count` shares would be needed."""
    out = np.zeros(n_nets, np.int64)
    k, load = 0, 0.0
    for idx, compile_s, run_s in units:
        per, start = run_s / len(idx), 0
        while start < len(idx):
            left, room = len(idx) - start, limit - load
            if compile_s + per * left <= room:
                fit = left
            elif per > 0 and room > compile_s:
                fit = int((room - compile_s) // per)
            else:
                fit = 0
            if fit == 0 and load == 0.0:
                fit = 1  # one network above the limit: a share of its own
            if fit:
                out[idx[start:start + fit]] = k
                load += compile_s + per * fit
                start += fit
            if start < len(idx):
                k, load = k + 1, 0.0
                if k >= count:
                    return None
    return out


def predicted_seconds(table: RunTable, rows: np.ndarray, planning: Planning) -> float:
    """The planner's predicted seconds (compiles and training) for these rows' networks."""
    if not len(rows):
        return 0.0
    return float(sum(b.predicted_s for b in bucketize(TableNetworks(table, rows), planning)))


def describe(a: Assignment, table: RunTable, local: Planning | None = None) -> list[str]:
    """`sweeps plan --shards N`: each shard's networks, runs and predicted seconds (reference
    model; and on this machine, planned as the shard would plan it here)."""
    ref = reference_planning(a.model)
    rows = [a.rows(k) for k in range(a.count)]
    ref_s = [predicted_seconds(table, r, ref) for r in rows]
    here = [predicted_seconds(table, r, local) for r in rows] if local is not None else None
    mean = sum(ref_s) / a.count
    lines = [f"{a.count} shards balanced by predicted seconds (reference model {a.model_name}; assignment {a.digest}):",
             f"  {'shard':>7} {'networks':>8} {'runs':>6} {'reference s':>12}" + ("  this machine s" if here else "")]
    for k in range(a.count):
        lines.append(f"  {k:>3}/{a.count:<3} {int((a.shard == k).sum()):>8} {len(rows[k]):>6} {ref_s[k]:>12.1f}"
                     + (f"  {here[k]:>15.1f}" if here else ""))
    ratio = max(ref_s) / mean if mean > 0 else 1.0
    tail = f"largest shard {ratio:.2f}x the mean (reference)"
    if here:
        mean_here = sum(here) / a.count
        tail += f", {max(here) / mean_here if mean_here > 0 else 1.0:.2f}x on this machine"
    return lines + ["  " + tail]
