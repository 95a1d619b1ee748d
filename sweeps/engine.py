"""Run a planned grid: a short loop over buckets (compiled programs) and their chunks.

The pieces live in their own modules: `environment` (JAX set-up, devices), `provenance`,
`storage` (where results live: a folder or an object-store prefix), `results` (the directory,
its tables and manifest, crash safety), `preempt` (stopping cleanly on SIGTERM), `plan` (networks, buckets,
chunks), `calibrate` (the device model the planner predicts with), `programs` (compiling and
loading bucket programs, in a background thread), `executables` (the program store), and for
array jobs `shards` (which networks a shard trains), `scope` (what this invocation may train,
under which name) and `lease` (one attempt at a time per shard).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import threading
import time
from pathlib import Path

import numpy as np

from contamination.cache import setup_jax
from contamination import experiments
from contamination.ids import id_keys, stable_hash
from contamination.numerics import float_name
from contamination.spec import static_spec
from contamination.train import metric_names as _metric_names

from . import calibrate, executables, results, scope as scopes, shards, storage
from .environment import default_memory_budget, device_info, process_age_s
from .grid import Grid, Run
from .plan import Bucket, Network, Planning, TableNetworks, bucketize, fmt_bytes
from .runs import RunTable
from .preempt import Preempted, StopFlag, tree_ready
from .programs import Compiler, chunk_inputs, stored_chunks
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


def local_mesh():
    import jax
    from jax.sharding import Mesh

    return Mesh(np.array(jax.local_devices()), ("cfg",))


def this_process() -> tuple[int, int]:
    import jax

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


def metric_names(runs: list[Run] | RunTable) -> list[str]:
    """Metric columns of these runs (the union over their experiments, in first-seen order)."""
    if isinstance(runs, RunTable):
        configs = [runs.points[k].config for k in runs.live_points()]
    else:
        configs = [r.config for r in runs]
    names: list[str] = []
    for spec in dict.fromkeys(static_spec(c) for c in configs):
        names += [m for m in _metric_names(spec) if m not in names]
    return names


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
    import jax

    startup = {"engine": process_age_s()}  # seconds from process start (imports, grid load) to here
    cache = setup_jax(cache_dir)
    store = cache / "executables"
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    mesh = local_mesh()
    dev = device_info()

    def plan() -> Pending:
        return plan_pending(grid, out, mesh, cache, memory_budget=memory_budget, min_efficiency=min_efficiency,
                            chunk_size=chunk_size, process=process, rows=scope.rows)

    # Planning raises on an impossible budget before anything is written.
    p = plan()
    precisions = {p.table.points[k].config.precision for k in p.table.live_points()}
    results.check_numerics(out, precisions, float_name())  # before anything is written
    stop.check()  # a signal while planning: nothing written yet
    rows = scope.rows
    scope.acquire(stop)  # the lease: one attempt at a time (it may wait here)
    if scope.rows is not rows or not same_runs(p.done, results.done_runs(out)):
        p = plan()  # another attempt wrote meanwhile, or running shards keep their runs
    results.recover(out, scope.prefix, scope.keep)
    provenance = make_provenance(grid, dev, metric_names(p.table), float_name(), precisions)
    networks = sum(len(b.networks) for b in p.buckets)
    startup["planned"] = process_age_s()
    invocation = {"started": started, "startup_s": startup, "runs_in_grid": len(p.table), "already_done": p.skipped,
                  "planned": len(p.pending), "networks_trained": networks, "memory_budget_bytes": p.budget,
                  "min_efficiency": "auto" if min_efficiency is None else min_efficiency,
                  "compile_ahead": compile_ahead,
                  "device_model": p.model.summary(), "plan_s": time.perf_counter() - t_start, "buckets": [],
                  **scope.record, **note}
    manifest_name = results.manifest_name(scope.tag)
    manifest = results.write_manifest(out, manifest_name, grid, provenance, invocation)
    for table in results.TABLES:
        out.make_dirs(table)
    prefix = scope.prefix

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(p.pending), unit="run", desc=grid.name, dynamic_ncols=True, file=sys.stderr)

    def train_chunks(bucket: Bucket, prog, written: list[int]) -> None:
        s, size = bucket.static, bucket.chunk_size
        chunks = bucket.chunks()  # each chunk's networks are built when it is read: read each once
        # Dispatch chunk i+1 before fetching chunk i, so the device trains while the host writes.
        following = chunks[0]
        startup.setdefault("program", process_age_s())
        result, t0 = prog.compiled(chunk_inputs(s, size, following, prog.sharding)), time.perf_counter()
        if "first_step" not in startup:  # the first chunk dispatched
            startup["first_step"] = process_age_s()
            # the tables' library loads while the device trains (the host thread waits anyway)
            threading.Thread(target=results.pandas, daemon=True).start()
        for i in range(len(chunks)):
            chunk, following = following, chunks[i + 1] if i + 1 < len(chunks) else None
            nxt = prog.compiled(chunk_inputs(s, size, following, prog.sharding)) if following is not None else None
            stop.wait(tree_ready(result))  # a signal first: this chunk and the next are abandoned
            host = jax.tree_util.tree_map(np.asarray, result)
            chunk_s = time.perf_counter() - t0
            n_runs = sum(len(n.runs) for n in chunk)
            name = f"{prefix}{bucket.id}-{stable_hash(sorted(r.run_id for n in chunk for r in n.runs))}.parquet"
            extra = {"bucket": bucket.id, "padded_width": s.width, "chunk": name, "chunk_size": size,
                     "chunk_s": chunk_s, "run_s": chunk_s / n_runs, "device_kind": dev["device_kind"],
                     "dtype": provenance["dtype"],
                     "process_index": process[0]}
            runs_df, curves_df, shifts_df = results.build_tables(grid, chunk, host, extra, provenance["metrics"])
            if scope.lease is not None and scope.lease.lost:
                raise LeaseLost(f"{out}: lost the lease {scope.tag or scopes.SWEEP} to another attempt (this one "
                                f"was silent too long); stopped before writing, that attempt goes on")
            results.write_chunk(out, name, runs_df, curves_df, provenance, shifts_df)
            p.done.add(name, id_keys(list(runs_df["run_id"])))
            if time.perf_counter() - index_at[0] > results.INDEX_EVERY_S:  # bounds what a SIGKILL leaves unindexed
                results.write_index(out, scope.tag, p.done)
                index_at[0] = time.perf_counter()
            written[0] += n_runs
            if bar:
                bar.update(n_runs)
            stop.check()  # a signal during the write: the chunk is complete, stop here
            result, t0 = nxt, time.perf_counter()

    compiler = Compiler(p.buckets, mesh, store, ahead=compile_ahead)
    index_at = [time.perf_counter()]  # when this host's index of runs files was last written
    done_count = 0
    stopped: Preempted | None = None
    written = [0]
    try:
        for i, bucket in enumerate(p.buckets):
            waited = compiler.waited_s
            written = [0]  # runs of this bucket written so far
            prog = compiler.get(i, stop)
            compile_s, source = prog.seconds, prog.source
            t_bucket = time.perf_counter()
            try:
                train_chunks(bucket, prog, written)
            except jax.errors.JaxRuntimeError as e:
                if prog.source != "store" or written[0]:
                    raise
                # A stored program that fails before its first chunk is written is dropped and
                # compiled afresh; nothing of it reached the results.
                print(f"warning: stored program {prog.key[:12]} failed ({str(e).splitlines()[0][:120]}); "
                      "recompiling", file=sys.stderr)
                executables.discard(store, prog.key)
                prog = compiler.recompile(i)
                compile_s, source = compile_s + prog.seconds, "compiled after a failed stored program"
                t_bucket = time.perf_counter()
                train_chunks(bucket, prog, written)
            run_s = time.perf_counter() - t_bucket
            if prog.source == "compiled":
                p.model.record_compile(bucket.static, prog.seconds)
            p.model.record_run(bucket, run_s)
            done_count += written[0]
            invocation["buckets"].append(bucket_record(bucket, compile_s, source, compiler.waited_s - waited, run_s,
                                                       prog.key))
            results.write_manifest(out, manifest_name, grid, provenance, invocation, manifest)
    except Preempted as e:
        stopped = e
        done_count += written[0]
    finally:
        # on a signal, a compile in progress is left to finish alone (the process is leaving)
        compiler.close(wait=stopped is None)
        if bar:
            bar.close()
        results.write_index(out, scope.tag, p.done)
    seconds = time.perf_counter() - t_start
    invocation.update(finished=dt.datetime.now(dt.timezone.utc).isoformat(), seconds=seconds, trained=done_count,
                      compile_wait_s=compiler.waited_s, runs_per_s=done_count / seconds if seconds > 0 else None)
    if stopped is not None:
        invocation["stopped_by"] = stopped.name
    results.write_manifest(out, manifest_name, grid, provenance, invocation, manifest)
    total, within = len(p.table), "the grid"
    if scope.shard is not None:
        total, within = len(scope.rows), f"shard {scope.shard[0]}/{scope.shard[1]} ({len(p.table)} in the grid)"
    summary = Summary(out, total, p.skipped, done_count, networks, len(p.buckets), seconds,
                      compiler.waited_s, invocation["buckets"], within)
    if stopped is not None:
        stopped.summary = summary
        raise stopped
    return summary


def bucket_record(b: Bucket, compile_s: float, source: str, compile_wait_s: float, run_s: float,
                  program_key: str | None = None) -> dict:
    """The manifest's entry of one bucket: its plan, predicted and measured seconds, throughput."""
    return {
        "bucket": b.id, "static": b.static._asdict(), "shapes": len(b.shapes), "widths": b.widths,
        "networks": len(b.networks), "runs": b.n_runs, "chunk_size": b.chunk_size, "chunks": b.n_chunks,
        "padding_efficiency": b.efficiency, "program": source, "program_key": program_key,
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
    """The dry run: configs, networks, buckets, padding, chunks, predicted seconds, FLOPs, memory;
    of one `shard` (K, N), and with `shards_count` N each of N shards' predicted seconds."""
    import jax

    out = storage.location(out)
    storage.check_reachable(out)
    results.check_version(out)
    cache = setup_jax(cache_dir)
    mesh = local_mesh()
    rows = shards.assign(grid.table, shard[1]).rows(shard[0]) if shard else None
    p = plan_pending(grid, out, mesh, cache, memory_budget=memory_budget, min_efficiency=min_efficiency,
                     chunk_size=chunk_size, rows=rows)
    n_dev = mesh.devices.size
    n_cfg = len({p.table.points[k].config_id for k in p.table.live_points()})
    networks = sum(len(b.networks) for b in p.buckets)
    m = p.model
    lines = [
        f"grid {grid.name} (scale {grid.scale}): {grid.description}",
        f"{n_cfg} configs x {len(grid.seeds)} seeds = {len(p.table)} runs"
        + (f", {len(rows)} of them in shard {shard[0]}/{shard[1]}" if shard else "")
        + f"; {p.skipped} already in {out}; {len(p.pending)} to train as {networks} networks",
        f"devices: {n_dev} x {jax.local_devices()[0].device_kind} ({jax.default_backend()}); "
        f"memory budget {fmt_bytes(p.budget)} per device",
        f"device model: {m.flop_rate / 1e9:.1f} GFLOP/s, {m.step_s * 1e6:.0f} us per step, "
        f"compile {m.compile_s(static_spec(p.table.points[p.table.point[0]].config)):.2f} s"
        f" (planning: {'auto, least predicted time' if min_efficiency is None else f'min efficiency {min_efficiency}'})",
    ]
    if m.source != "measured":
        lines.append(f"  {m.source}; refitted by this machine's buckets from {calibrate.MIN_RECORDED_RUNS} on "
                     f"({len(m.recorded_runs)} recorded; --calibrate measures it)")
    lines += [
        f"{len(p.buckets)} compiled programs (buckets):",
        f"  {'bucket':8} {'shapes':>6} {'nets':>5} {'runs':>5} {'chunk':>5} {'chunks':>6} {'eff':>5} "
        f"{'mem/run':>10} {'GFLOP':>9} {'compile':>8} {'run':>7} {'total':>7}  padded shape",
    ]
    total_flops = total_exec = compile_total = run_total = 0.0
    for b in p.buckets:
        s = b.static
        acts = "/".join(b.activations)
        widths = "x".join(str(w) for w in (s.width, *s.hidden))
        shape = (f"m={widths} d0={s.core_dim}+{s.bg_dim} d={s.input_dim} n={s.n_train}/{s.n_test} "
                 + (f"K={s.n_classes} " if s.n_classes > 2 else "")
                 + experiments.get(s.experiment).describe(s) +
                 f"evals={s.n_evals} steps={s.steps} {acts} {s.optimizer} {s.loss}")
        lines.append(f"  {b.id:8} {len(b.shapes):>6} {len(b.networks):>5} {b.n_runs:>5} {b.chunk_size:>5} "
                     f"{b.n_chunks:>6} {b.efficiency:5.2f} {fmt_bytes(b.run_memory):>10} "
                     f"{b.executed_flops / 1e9:>9.1f} {b.predicted_compile_s:>7.1f}s {b.predicted_run_s:>6.1f}s "
                     f"{b.predicted_s:>6.1f}s  {shape}")
        total_flops += b.flops
        total_exec += b.executed_flops
        compile_total += b.predicted_compile_s
        run_total += b.predicted_run_s
    eff = total_flops / total_exec if total_exec else 1.0
    peak = max((b.run_memory * b.chunk_size / n_dev for b in p.buckets), default=0)
    lines.append(f"total: {total_exec / 1e12:.3f} TFLOP executed ({eff:.0%} useful after padding); predicted "
                 f"{compile_total:.1f} s compiling + {run_total:.1f} s training = {compile_total + run_total:.1f} s "
                 f"(compiles overlap training); peak estimated memory {fmt_bytes(peak)} per device")
    if shards_count:
        local = Planning(p.budget, n_dev, m, min_efficiency, chunk_size)
        lines += shards.describe(shards.assign(grid.table, shards_count), grid.table, local)
    return "\n".join(lines)
