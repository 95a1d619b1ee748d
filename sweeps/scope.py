"""What one invocation of a sweep may train into a results directory, and under which name.

- A host of a multi-host slice (`--distributed`): its round-robin share (`TableNetworks.share`),
  files prefixed `p{K}-`; the hosts are one SPMD program, so no lease.
- Shard K of N (`--shard`): the networks `shards.assign` gives it, files prefixed `s{K}of{N}-`,
  under the lease `s{K}of{N}` (`lease.py`): a second attempt of the shard waits for the first.
  A shard refuses to run beside a live shard of another assignment (another grid, code or
  reference model): their shares would overlap.
- A single process without `--shard` (a sweep, or the sweep-up after an array): every run,
  under the lease `all` (two sweeps of one directory take turns, and a shard that starts
  meanwhile waits for it), less the networks of shards whose attempts are running now.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from . import shards
from .grid import Grid
from .lease import Claim, Lease
from .plan import PlanError
from .results import ResultsError, chunk_prefix, writer_tag
from .storage import Location

SWEEP = "all"  # the lease of a sweep without --shard


@dataclasses.dataclass
class Scope:
    tag: str  # `results.writer_tag`
    rows: np.ndarray | None  # rows of the grid's table this invocation may train (None: the host's share)
    lease: Lease | None = None
    keep: tuple[str, ...] = ()  # chunk prefixes of other writers running now
    record: dict = dataclasses.field(default_factory=dict)  # for the manifest's invocation

    @property
    def prefix(self) -> str:
        return chunk_prefix(self.tag)

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()


def _is_shard(c: Claim) -> bool:
    return str(c.get("name", "")).startswith("s") and "count" in c


def take(grid: Grid, out: Location, process: tuple[int, int], shard: tuple[int, int] | None, stop=None) -> Scope:
    """This invocation's scope; waits for its lease (`stop` ends the wait with `Preempted`)."""
    if process[1] > 1:
        if shard is not None:
            raise PlanError("--shard: not with --distributed (a slice's hosts already share the grid out)")
        return Scope(writer_tag(*process), None)
    if shard is not None:
        return _take_shard(grid, out, *shard, stop)
    return _take_sweep(grid, out, stop)


def _take_shard(grid: Grid, out: Location, index: int, count: int, stop) -> Scope:
    a = shards.assign(grid.table, count)
    name = shards.tag(index, count)
    lease = Lease(out, name, {"count": count, "index": index, "assignment": a.digest},
                  conflicts=lambda mine, other: other.get("name") in (mine["name"], SWEEP))
    lease.acquire(stop)
    other = [c for c in lease.others() if _is_shard(c) and c.get("assignment") != a.digest]
    if other:
        lease.release()
        raise ResultsError(f"{out}: shard {other[0]['name']} of another assignment is running ({other[0].who()}): "
                           "another grid file, code version, shard count or CONTAMINATION_SHARD_MODEL; their "
                           "shares would overlap, so wait for it or give another --out")
    record = {"index": index, "count": count, "assignment": a.digest, "reference_model": a.model_name,
              "attempt": lease.attempt}
    return Scope(name, a.rows(index), lease, record=record)


def _take_sweep(grid: Grid, out: Location, stop) -> Scope:
    lease = Lease(out, SWEEP, conflicts=lambda mine, other: other.get("name") == SWEEP)
    lease.acquire(stop)
    running = sorted((c for c in lease.others() if _is_shard(c)), key=lambda c: c["name"])
    rows = np.arange(len(grid.table))
    if not running:
        return Scope("", None, lease)
    excluded = np.zeros(len(grid.table), bool)
    assignments: dict[int, shards.Assignment] = {}
    for c in running:
        a = assignments.setdefault(int(c["count"]), shards.assign(grid.table, int(c["count"])))
        if a.digest != c.get("assignment"):
            lease.release()
            raise ResultsError(f"{out}: shard {c['name']} of another assignment is running ({c.who()}): another "
                               "grid file or code version; wait for it or give another --out")
        excluded[a.rows(int(c["index"]))] = True
    print(f"leaving {int(excluded.sum())} runs to the shards running now: "
          f"{', '.join(c['name'] for c in running)}", file=sys.stderr, flush=True)
    keep = tuple(chunk_prefix(c["name"]) for c in running)
    return Scope("", rows[~excluded], lease, keep, {"left_to_running_shards": [c["name"] for c in running]})
