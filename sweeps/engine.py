"""Run a planned grid: a short loop over buckets (compiled programs) and their chunks.

The pieces live in their own modules: `environment` (JAX set-up, devices), `provenance`,
`storage` (where results live: a folder or an object-store prefix), `results` (the directory,
its tables and manifest, crash safety), `preempt` (stopping cleanly on SIGTERM), `plan` (networks,
buckets, chunks) and `plan_text` (the dry run's text), `calibrate` (the device model the planner
predicts with), `programs` (compiling and loading bucket programs, in a background thread),
`executables` (the program store), and for array jobs `shards` (which networks a shard trains),
`scope` (what this invocation may train, under which name) and `lease` (one attempt at a time
per shard). Here: the plan of what is pending, and the pipeline that trains it chunk by chunk,
writes each chunk, and records the invocation in the manifest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from contamination.cache import setup_jax
from contamination.ids import id_keys, stable_hash
from contamination.numerics import float_name

from . import calibrate, executables, plan_text, results, scope as scopes, shards, storage
from .environment import default_memory_budget, device_info, process_age_s
from .grid import Grid
from .plan import Bucket, Network, Planning, TableNetworks, bucketize
from .runs import RunTable, metric_names
from .preempt import Preempted, StopFlag, tree_ready
from .programs import Compiler, Program, chunk_inputs, stored_chunks
from .provenance import provenance as make_provenance


@dataclasses.dataclass
class Summary:
    out: storage.Location
    total: int
    skipped: int
    done: int
    networks: int
    compiles: int
    seconds: float
    compile_wait_s: float
    buckets: list[dict]
    within: str = "the grid"  # what `total` counts: the grid, or a shard of it

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.done} runs trained ({self.networks} networks), {self.skipped} already done, of {self.total} "
                f"in {self.within}; {self.compiles} compiled programs; {self.seconds:.1f} s ({rate:.1f} runs/s, "
                f"{self.compile_wait_s:.1f} s waiting for compiles); results in {self.out}")


def share(networks: list[Network], process_index: int, process_count: int) -> list[Network]:
    """This process's deterministic, disjoint share (round robin over networks sorted by id;
    `TableNetworks.share` is the same over columns)."""
    ordered = sorted(networks, key=lambda n: n.id)
    return ordered[process_index::process_count]


class LeaseLost(RuntimeError):
    """Another attempt took this one's lease (it judged this one dead); nothing more is written."""


@dataclasses.dataclass
class Pending:
    table: RunTable  # every run of the grid
    pending: np.ndarray  # rows of `table`: this process's share, less what is already written
    skipped: int  # runs of this process's share already written
    done: results.Done  # what the results directory holds (the run writes its index at the end)
    budget: int
    model: calibrate.DeviceModel
    buckets: list[Bucket]


def local_mesh() -> Mesh:
    return Mesh(np.array(jax.local_devices()), ("cfg",))


def this_process() -> tuple[int, int]:
    return jax.process_index(), jax.process_count()


def plan_pending(grid: Grid, out: storage.Location, mesh, cache: Path | None, *, memory_budget: int | None,
                 min_efficiency: float | None, chunk_size: int | None,
                 process: tuple[int, int] | None = None, rows: np.ndarray | None = None) -> Pending:
    """What this process still has to train, and its plan (the run and the dry run share it):
    the table's `rows` (a shard's), or else this process's share of the grid.

    Over the grid's columns (`Grid.table`): the runs are grouped into networks by a few sorts,
    and what is done is the `run_id` column of the results (`results.done_runs`)."""
    table = grid.table
    done = results.done_runs(out)
    # Share first, then skip what is done: the shares stay disjoint and complete even when
    # each host of a slice sees only its own results directory.
    networks = TableNetworks(table)
    mine = networks.share(*(process or this_process())) if rows is None else np.asarray(rows, np.int64)
    todo = ~np.isin(table.run_key[mine], done.keys)
    pending = mine[todo]
    if len(pending) < len(table):
        networks = TableNetworks(table, pending)
    budget = memory_budget or default_memory_budget()
    model = calibrate.load(mesh, calibrate.model_dir(cache))
    store = cache / "executables" if cache is not None else None
    held = stored_chunks(store, mesh)
    planning = Planning(budget, mesh.devices.size, model, min_efficiency, chunk_size,
                        lambda static, chunk: chunk in held(static), held)
    buckets = bucketize(networks, planning)
    return Pending(table, pending, len(mine) - len(pending), done, budget, model, buckets)


def calibrate_devices(cache_dir: str | None = None) -> calibrate.DeviceModel:
    """Measure this machine's device model now (`--calibrate`), keeping its recorded buckets."""
    return calibrate.load_or_measure(local_mesh(), calibrate.model_dir(setup_jax(cache_dir)), again=True)


def same_runs(a: results.Done, b: results.Done) -> bool:
    return np.array_equal(np.unique(a.keys), np.unique(b.keys))


def run_grid(grid: Grid, out, *, memory_budget: int | None = None, min_efficiency: float | None = None,
             chunk_size: int | None = None, progress: bool = True, cache_dir: str | None = None,
             compile_ahead: int = 1, process: tuple[int, int] | None = None, shard: tuple[int, int] | None = None,
             note: dict | None = None) -> Summary:
    """Train every pending run of `grid` into `out` (a path, a URI or a `storage.Location`);
    `min_efficiency` None plans by predicted time.

    `compile_ahead` programs compile in a background thread while a bucket trains (0: none).
    `process` (index, count) overrides JAX's, to run one host's share of a slice; `shard` (K, N)
    trains shard K of N (`shards.py`) under its lease (`scope.py`). `note` goes into the
    invocation's manifest record (e.g. the refine round that asked for these runs).
    SIGTERM or Ctrl-C stops it between chunks with `preempt.Preempted`; what was written is
    complete, and running it again resumes.
    """
    out = storage.location(out)
    storage.check_reachable(out)
    results.check_version(out)  # before anything is written
    stop = StopFlag()
    with stop.installed():
        scope = scopes.take(grid, out, process or this_process(), shard)
        try:
            return _run_grid(grid, out, stop, scope, memory_budget=memory_budget, min_efficiency=min_efficiency,
                             chunk_size=chunk_size, progress=progress, cache_dir=cache_dir,
                             compile_ahead=compile_ahead, process=process or this_process(), note=note or {})
        finally:
            scope.release()


def _run_grid(grid: Grid, out: storage.Location, stop: StopFlag, scope: scopes.Scope, *, memory_budget,
              min_efficiency, chunk_size, progress, cache_dir, compile_ahead, process: tuple[int, int],
              note: dict) -> Summary:
    startup = {"engine": process_age_s()}  # seconds from process start (imports, grid load) to here
    cache = setup_jax(cache_dir)
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    mesh = local_mesh()
    dev = device_info()

    def plan() -> Pending:
        return plan_pending(grid, out, mesh, cache, memory_budget=memory_budget, min_efficiency=min_efficiency,
                            chunk_size=chunk_size, process=process, rows=scope.rows)

    p, precisions = plan_under_lease(out, stop, scope, plan)
    provenance = make_provenance(grid, dev, metric_names(p.table), float_name(), precisions)
    startup["planned"] = process_age_s()
    invocation = Invocation(out, results.manifest_name(scope.tag), grid, provenance, {
        "started": started, "startup_s": startup, "runs_in_grid": len(p.table), "already_done": p.skipped,
        "planned": len(p.pending), "networks_trained": sum(len(b.networks) for b in p.buckets),
        "memory_budget_bytes": p.budget, "min_efficiency": "auto" if min_efficiency is None else min_efficiency,
        "compile_ahead": compile_ahead, "device_model": p.model.summary(),
        "plan_s": time.perf_counter() - t_start, "buckets": [], **scope.record, **note})
    invocation.write()
    for table in results.TABLES:
        out.make_dirs(table)
    bar = progress_bar(len(p.pending), grid.name) if progress else None
    writer = ChunkWriter(grid, out, scope, provenance, p.done, bar=bar, columns={
        "device_kind": dev["device_kind"], "dtype": provenance["dtype"], "process_index": process[0]})
    store = cache / "executables"
    pipeline = Pipeline(Compiler(p.buckets, mesh, store, ahead=compile_ahead), store, writer, stop, startup)
    stopped = None
    try:
        stopped = pipeline.train(p.buckets, p.model, invocation)
    finally:
        # on a signal, a compile in progress is left to finish alone (the process is leaving)
        pipeline.compiler.close(wait=stopped is None)
        writer.close()
    seconds = time.perf_counter() - t_start
    invocation.finish(seconds, writer.written, pipeline.compiler.waited_s, stopped)
    total, within = len(p.table), "the grid"
    if scope.shard is not None:
        total, within = len(scope.rows), f"shard {scope.shard[0]}/{scope.shard[1]} ({len(p.table)} in the grid)"
    summary = Summary(out, total, p.skipped, writer.written, invocation.record["networks_trained"],
                      len(p.buckets), seconds, pipeline.compiler.waited_s, invocation.record["buckets"], within)
    if stopped is not None:
        stopped.summary = summary
        raise stopped
    return summary


def progress_bar(total: int, name: str):
    # tqdm loads only where a bar is shown (about 8 ms of start-up that --no-progress saves)
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc=name, dynamic_ncols=True, file=sys.stderr)


def plan_under_lease(out: storage.Location, stop: StopFlag, scope: scopes.Scope,
                     plan: Callable[[], Pending]) -> tuple[Pending, set[str]]:
    """Plan, check the results' numerics, take the lease, plan again where another attempt wrote
    meanwhile, and recover what a killed attempt of this writer left; returns the plan and the
    grid's precisions. Planning raises on an impossible budget before anything is written."""
    p = plan()
    precisions = {p.table.points[k].config.precision for k in p.table.live_points()}
    results.check_numerics(out, precisions, float_name())  # before anything is written
    stop.check()  # a signal while planning: nothing written yet
    rows = scope.rows
    scope.acquire(stop)  # the lease: one attempt at a time (it may wait here)
    if scope.rows is not rows or not same_runs(p.done, results.done_runs(out)):
        p = plan()  # another attempt wrote meanwhile, or running shards keep their runs
    results.recover(out, scope.prefix, scope.keep)
    return p, precisions


@dataclasses.dataclass
class Invocation:
    """This invocation's entry in the results' manifest (one manifest per writer): what it
    planned and trained, its start-up phases, device model and buckets; rewritten as each bucket
    finishes, so that a killed invocation leaves its record up to its last bucket."""

    out: storage.Location
    name: str  # the manifest's file name (`results.manifest_name`)
    grid: Grid
    provenance: dict
    record: dict
    manifest: dict | None = None  # as last written (None: not yet; the first write appends to the file's)

    def write(self) -> None:
        self.manifest = results.write_manifest(self.out, self.name, self.grid, self.provenance, self.record,
                                               self.manifest)

    def add_bucket(self, record: dict) -> None:
        self.record["buckets"].append(record)
        self.write()

    def finish(self, seconds: float, trained: int, compile_wait_s: float, stopped: Preempted | None) -> None:
        self.record.update(finished=dt.datetime.now(dt.timezone.utc).isoformat(), seconds=seconds, trained=trained,
                           compile_wait_s=compile_wait_s, runs_per_s=trained / seconds if seconds > 0 else None)
        if stopped is not None:
            self.record["stopped_by"] = stopped.name
        self.write()


@dataclasses.dataclass
class ChunkWriter:
    """Writes each trained chunk's tables into the results, indexes them, and counts the runs."""

    grid: Grid
    out: storage.Location
    scope: scopes.Scope
    provenance: dict
    done: results.Done  # grows by each chunk written (`write_index` writes it)
    columns: dict  # the last columns of every runs row: device kind, dtype, process index
    bar: Any = None  # a progress bar, or None
    written: int = 0  # runs written by this invocation
    indexed_at: float = dataclasses.field(default_factory=time.perf_counter)  # when the index was last written

    def write(self, bucket: Bucket, chunk: list[Network], host, chunk_s: float) -> None:
        """Write one chunk's runs (its outputs `host` as NumPy arrays, trained in `chunk_s` seconds)."""
        n_runs = sum(len(n.runs) for n in chunk)
        name = f"{self.scope.prefix}{bucket.id}-{stable_hash(sorted(r.run_id for n in chunk for r in n.runs))}.parquet"
        extra = {"bucket": bucket.id, "padded_width": bucket.static.width, "chunk": name,
                 "chunk_size": bucket.chunk_size, "chunk_s": chunk_s, "run_s": chunk_s / n_runs, **self.columns}
        runs_df, curves_df, shifts_df = results.build_tables(self.grid, chunk, host, extra, self.provenance["metrics"])
        lease = self.scope.lease
        if lease is not None and lease.lost:
            raise LeaseLost(f"{self.out}: lost the lease {self.scope.tag or scopes.SWEEP} to another attempt (this "
                            f"one was silent too long); stopped before writing, that attempt goes on")
        results.write_chunk(self.out, name, runs_df, curves_df, self.provenance, shifts_df)
        self.done.add(name, id_keys(list(runs_df["run_id"])))
        if time.perf_counter() - self.indexed_at > results.INDEX_EVERY_S:  # bounds what a SIGKILL leaves unindexed
            self.write_index()
        self.written += n_runs
        if self.bar is not None:
            self.bar.update(n_runs)

    def write_index(self) -> None:
        results.write_index(self.out, self.scope.tag, self.done)
        self.indexed_at = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.write_index()


@dataclasses.dataclass
class Pipeline:
    """Trains buckets chunk by chunk: their programs (compiled ahead in a thread), where the
    chunks are written, the stop flag checked between chunks, and the start-up phases recorded."""

    compiler: Compiler
    store: Path  # the program store (`executables`)
    writer: ChunkWriter
    stop: StopFlag
    startup: dict  # the manifest's start-up phases: `program` and `first_step` are added here

    def train(self, buckets: list[Bucket], model: calibrate.DeviceModel, invocation: Invocation) -> Preempted | None:
        """Train every bucket in order, recording each in the device model and the manifest;
        returns the `Preempted` of a signal that stopped it, else None."""
        try:
            for i, bucket in enumerate(buckets):
                waited = self.compiler.waited_s
                prog, compile_s, source, run_s = self.train_bucket(i, bucket)
                if prog.source == "compiled":
                    model.record_compile(bucket.static, prog.seconds, prog.options)
                model.record_run(bucket, run_s)
                invocation.add_bucket(bucket_record(bucket, compile_s, source, self.compiler.waited_s - waited,
                                                    run_s, prog.key, prog.options))
        except Preempted as e:
            return e
        return None

    def train_bucket(self, i: int, bucket: Bucket) -> tuple[Program, float, str, float]:
        """Train bucket `i`; returns its program, the seconds to get it, its source, and the seconds
        training took. A stored program that fails before its first chunk is written is dropped and
        compiled afresh (nothing of it reached the results): a stale store entry costs a compile."""
        prog = self.compiler.get(i, self.stop)
        compile_s, source = prog.seconds, prog.source
        written, t0 = self.writer.written, time.perf_counter()
        try:
            self.train_chunks(bucket, prog)
        except jax.errors.JaxRuntimeError as e:
            if prog.source != "store" or self.writer.written > written:
                raise
            print(f"warning: stored program {prog.key[:12]} failed ({str(e).splitlines()[0][:120]}); "
                  "recompiling", file=sys.stderr)
            executables.discard(self.store, prog.key)
            prog = self.compiler.recompile(i)
            compile_s, source = compile_s + prog.seconds, "compiled after a failed stored program"
            t0 = time.perf_counter()
            self.train_chunks(bucket, prog)
        return prog, compile_s, source, time.perf_counter() - t0

    def train_chunks(self, bucket: Bucket, prog: Program) -> None:
        """The chunk pipeline: dispatch chunk i+1 before fetching chunk i, so the device trains
        while the host writes; a signal stops it between chunks (what was written is complete)."""
        s, size = bucket.static, bucket.chunk_size
        chunks = bucket.chunks()  # each chunk's networks are built when it is read: read each once
        following = chunks[0]
        self.startup.setdefault("program", process_age_s())
        result, t0 = prog.compiled(chunk_inputs(s, size, following, prog.sharding)), time.perf_counter()
        if "first_step" not in self.startup:  # the first chunk dispatched
            self.startup["first_step"] = process_age_s()
            # the tables' library loads while the device trains (the host thread waits anyway)
            threading.Thread(target=results.pandas, daemon=True).start()
        for i in range(len(chunks)):
            chunk, following = following, chunks[i + 1] if i + 1 < len(chunks) else None
            nxt = prog.compiled(chunk_inputs(s, size, following, prog.sharding)) if following is not None else None
            self.stop.wait(tree_ready(result))  # a signal first: this chunk and the next are abandoned
            host = jax.tree_util.tree_map(np.asarray, result)
            self.writer.write(bucket, chunk, host, time.perf_counter() - t0)
            self.stop.check()  # a signal during the write: the chunk is complete, stop here
            result, t0 = nxt, time.perf_counter()


def bucket_record(b: Bucket, compile_s: float, source: str, compile_wait_s: float, run_s: float,
                  program_key: str | None = None, options: tuple = ()) -> dict:
    """The manifest's entry of one bucket: its plan, predicted and measured seconds, throughput."""
    return {
        "bucket": b.id, "static": b.static._asdict(), "shapes": len(b.shapes), "widths": b.widths,
        "networks": len(b.networks), "runs": b.n_runs, "chunk_size": b.chunk_size, "chunks": b.n_chunks,
        "padding_efficiency": b.efficiency, "program": source, "program_key": program_key,
        "xla_compile_options": dict(options),
        "predicted_compile_s": b.predicted_compile_s, "compile_s": compile_s, "compile_wait_s": compile_wait_s,
        "predicted_run_s": b.predicted_run_s, "run_s": run_s,
        "runs_per_s": b.n_runs / run_s if run_s > 0 else None,
        "flops": b.flops, "executed_flops": b.executed_flops,
        "flop_per_s": b.executed_flops / run_s if run_s > 0 else None,
        "run_steps_per_s": len(b.networks) * b.static.steps / run_s if run_s > 0 else None,
        "estimated_run_memory_bytes": b.run_memory,
    }


def describe_plan(grid: Grid, out, *, memory_budget: int | None, min_efficiency: float | None,
                  chunk_size: int | None = None, cache_dir: str | None = None, shard: tuple[int, int] | None = None,
                  shards_count: int | None = None) -> str:
    """The dry run (`plan_text.describe`): configs, networks, buckets, padding, chunks, predicted
    seconds, FLOPs, memory; of one `shard` (K, N), and with `shards_count` N each of N shards'
    predicted seconds."""
    out = storage.location(out)
    storage.check_reachable(out)
    results.check_version(out)
    cache = setup_jax(cache_dir)
    mesh = local_mesh()
    rows = shards.assign(grid.table, shard[1]).rows(shard[0]) if shard else None
    p = plan_pending(grid, out, mesh, cache, memory_budget=memory_budget, min_efficiency=min_efficiency,
                     chunk_size=chunk_size, rows=rows)
    devices = (mesh.devices.size, jax.local_devices()[0].device_kind, jax.default_backend())
    return plan_text.describe(grid, p, out, devices, min_efficiency=min_efficiency, chunk_size=chunk_size,
                              shard=shard, rows=rows, shards_count=shards_count)
