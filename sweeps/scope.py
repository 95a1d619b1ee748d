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

The engine plans and checks everything it can before it takes the lease (`Scope.acquire`), so
that refused input writes nothing, then plans again if the lease changed what is left to train.
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
    lease: Lease | None = None  # held from `acquire` to `release`
    keep: tuple[str, ...] = ()  # chunk prefixes of other writers running now
    shard: tuple[int, int] | None = None
    record: dict = dataclasses.field(default_factory=dict)  # added to the manifest's invocation
    grid: Grid | None = None
    assignment: shards.Assignment | None = None

    @property
    def prefix(self) -> str:
        return chunk_prefix(self.tag)

    def acquire(self, stop=None) -> None:
        """Take the lease (waiting while another attempt holds it; `stop` ends the wait with
        `Preempted`), then check who else runs: a shard refuses to run beside a shard of another
        assignment, and a sweep leaves the running shards' runs to them."""
        if self.lease is None:
            return
        self.lease.acquire(stop)
        try:
            if self.shard is not None:
                self._check_assignments()
            else:
                self._leave_to_running_shards()
        except ResultsError:
            self.release()
            raise

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    def _check_assignments(self) -> None:
        other = [c for c in self.lease.others() if _is_shard(c) and c.get("assignment") != self.assignment.digest]
        if other:
            raise ResultsError(f"{self.lease.out}: shard {other[0]['name']} of another assignment is running "
                               f"({other[0].who()}): another grid file, code version, shard count or "
                               f"{shards.MODEL_ENV}; their shares would overlap, so wait for it or give another --out")

    def _leave_to_running_shards(self) -> None:
        running = sorted((c for c in self.lease.others() if _is_shard(c)), key=lambda c: c["name"])
        if not running:
            return
        table = self.grid.table
        excluded = np.zeros(len(table), bool)
        assignments: dict[int, shards.Assignment] = {}
        for c in running:
            a = assignments.setdefault(int(c["count"]), shards.assign(table, int(c["count"])))
            if a.digest != c.get("assignment"):
                raise ResultsError(f"{self.lease.out}: shard {c['name']} of another assignment is running "
                                   f"({c.who()}): another grid file or code version; wait for it or give another --out")
            excluded[a.rows(int(c["index"]))] = True
        print(f"leaving {int(excluded.sum())} runs to the shards running now: "
              f"{', '.join(c['name'] for c in running)}", file=sys.stderr, flush=True)
        self.rows = np.flatnonzero(~excluded)
        self.keep = tuple(chunk_prefix(c["name"]) for c in running)
        self.record = {"left_to_running_shards": [c["name"] for c in running]}


def _is_shard(c: Claim) -> bool:
    return "count" in c and "assignment" in c


def take(grid: Grid, out: Location, process: tuple[int, int], shard: tuple[int, int] | None) -> Scope:
    """This invocation's scope; its lease (if any) is taken by `Scope.acquire`, once the run has
    checked everything it can before writing."""
    if process[1] > 1:
        if shard is not None:
            raise PlanError("--shard: not with --distributed (a slice's hosts already share the grid out)")
        return Scope(writer_tag(*process), None)
    if shard is None:
        lease = Lease(out, SWEEP, conflicts=lambda mine, other: other.get("name") == SWEEP)
        return Scope("", None, lease, grid=grid)
    index, count = shard
    a = shards.assign(grid.table, count)
    name = shards.tag(index, count)
    lease = Lease(out, name, {"count": count, "index": index, "assignment": a.digest},
                  conflicts=lambda mine, other: other.get("name") in (mine["name"], SWEEP))
    record = {"shard": {"index": index, "count": count, "assignment": a.digest, "reference_model": a.model_name,
                        "attempt": lease.attempt}}
    return Scope(name, a.rows(index), lease, shard=shard, record=record, grid=grid, assignment=a)
