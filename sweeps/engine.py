"""Run a planned grid: one compiled, config-sharded program per bucket; Parquet per chunk.

Commit protocol (crash safety): for each finished chunk the curves file is written, then
the runs file, each to a dot-prefixed temporary name and renamed. A run is done when its
row is in `runs/`. On start, temporaries and curves files without their runs file (a crash
between the two renames) are removed, so a killed sweep resumes with no lost and no
duplicate rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contamination.config import log_steps, stable_hash, stack_traced
from contamination.train import metric_names as _metric_names

from .grid import Grid, Run
from .plan import Bucket, PlanError, bucketize, choose_chunks, fmt_bytes

RANGE_COLUMNS = {"bg_train": ("bg_train_low", "bg_train_high"), "bg_ood": ("bg_ood_low", "bg_ood_high")}
PROVENANCE_KEY = b"contamination"


# --- environment ---------------------------------------------------------------------

def setup_jax(cache_dir: str | None = None) -> Path:
    """Enable JAX's persistent compilation cache (every compile is cached); returns its directory."""
    import jax

    cache = cache_dir or os.environ.get("CONTAMINATION_JAX_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "contamination" / "jax")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return Path(cache)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def use_host_devices(n: int | None = None, runs: int | None = None) -> int | None:
    """Split the host CPU into `n` JAX devices (default: one per usable core, at most `runs`)
    before JAX starts.

    On a CPU backend the engine shards each chunk's runs over the local devices, so one device
    per core runs the vmapped runs on all cores at once; one device alone leaves most of a
    small program's steps on a single core (BENCHMARKS.md: the small grid trains about twice
    as fast on 2 cores). Accelerator backends ignore the CPU's devices.

    Returns the count set, or None where it was left alone: `n` is None and the user already
    chose (`XLA_FLAGS=--xla_force_host_platform_device_count` or `JAX_NUM_CPU_DEVICES`), or
    JAX's backends are already running (in-process callers keep what they have). An explicit
    `n` that can no longer be applied raises PlanError.
    """
    import jax

    explicit = n is not None
    if not explicit:
        if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") \
                or os.environ.get("JAX_NUM_CPU_DEVICES"):
            return None
        n = usable_cores() if runs is None else max(1, min(usable_cores(), runs))
    if n < 1:
        raise PlanError(f"--host-devices: must be >= 1, got {n}")
    if jax.config.jax_num_cpu_devices == n:
        return n
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialized
        if explicit:
            raise PlanError(f"--host-devices {n}: JAX is already running in this process; "
                            "it must be set before the first JAX call") from None
        return None
    return n


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=None)
def versions() -> dict[str, str]:
    """Python's and the packages' versions (cached: the store's key reads them per program; read-only)."""
    out = {"python": platform.python_version()}
    for pkg in ("contamination", "jax", "jaxlib", "optax", "numpy", "pandas", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def device_info() -> dict:
    import jax

    devs = jax.local_devices()
    return {"backend": jax.default_backend(), "device_kind": devs[0].device_kind,
            "local_device_count": len(devs), "device_count": jax.device_count(),
            "process_index": jax.process_index(), "process_count": jax.process_count()}


def default_memory_budget() -> int:
    """Per-device budget: half the device's memory where JAX reports it, else a quarter of host RAM."""
    import jax

    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] * 0.5)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 8 * 2**30
    return int(ram / 4 / max(len(jax.local_devices()), 1))


# --- results directory ---------------------------------------------------------------

def _atomic_write_table(table: pa.Table, path: Path) -> None:
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def recover(out: Path) -> None:
    """Remove temporaries and curves files of chunks whose runs file never landed."""
    runs_dir, curves_dir = out / "runs", out / "curves"
    for d in (runs_dir, curves_dir):
        if d.exists():
            for f in d.glob(".tmp-*"):
                f.unlink()
    if curves_dir.exists():
        committed = {f.name for f in runs_dir.glob("*.parquet")} if runs_dir.exists() else set()
        for f in curves_dir.glob("*.parquet"):
            if f.name not in committed:
                f.unlink()


def done_run_ids(out: Path) -> set[str]:
    runs_dir = out / "runs"
    files = sorted(runs_dir.glob("*.parquet")) if runs_dir.exists() else []
    ids: set[str] = set()
    for f in files:
        ids.update(pq.read_table(f, columns=["run_id"]).column("run_id").to_pylist())
    return ids


# --- rows ----------------------------------------------------------------------------

def config_columns(run: Run) -> dict:
    row = {}
    for k, v in run.config.to_dict().items():
        if k in RANGE_COLUMNS:
            row[RANGE_COLUMNS[k][0]], row[RANGE_COLUMNS[k][1]] = float(v[0]), float(v[1])
        else:
            row[k] = v
    return row


def axis_columns(grid: Grid) -> list[str]:
    """Config columns that vary across the grid (ranges expanded), then label columns."""
    cols = []
    for f in grid.varying_fields:
        cols += list(RANGE_COLUMNS.get(f, (f,)))
    return cols + grid.label_axes


def build_tables(grid: Grid, runs: list[Run], out: dict, extra: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs rows and the long-format curves rows of one chunk (real runs only)."""
    n = len(runs)
    rows = []
    for i, r in enumerate(runs):
        row = {"run_id": r.run_id, "config_id": r.config_id, "grid": grid.name, "scale": grid.scale,
               **config_columns(r), **r.labels}
        for k in out["curves"]:
            row[k] = float(out["final"][k][i])
        row["diverged"] = bool(out["final"]["diverged"][i])
        row["diverged_step"] = int(out["final"]["diverged_step"][i])
        row.update(extra)
        rows.append(row)
    runs_df = pd.DataFrame(rows)
    steps = np.asarray(log_steps(runs[0].config.steps, runs[0].config.log_every))
    L = len(steps)
    cols = axis_columns(grid)
    curves = {"run_id": np.repeat(runs_df["run_id"].to_numpy(), L),
              "config_id": np.repeat(runs_df["config_id"].to_numpy(), L),
              "seed": np.repeat(runs_df["seed"].to_numpy(), L)}
    for c in cols:
        curves[c] = np.repeat(runs_df[c].to_numpy(), L)
    curves["step"] = np.tile(steps, n)
    for k in out["curves"]:
        curves[k] = np.asarray(out["curves"][k][:n], dtype=np.float64).reshape(-1)
    return runs_df, pd.DataFrame(curves)


def _to_arrow(df: pd.DataFrame, provenance: dict) -> pa.Table:
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(provenance).encode()
    return table.replace_schema_metadata(meta)


# --- running -------------------------------------------------------------------------

@dataclasses.dataclass
class Summary:
    out: Path
    total: int
    skipped: int
    done: int
    compiles: int
    seconds: float
    buckets: list[dict]

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.done} runs trained, {self.skipped} already done, of {self.total} in the grid; "
                f"{self.compiles} compiled programs; {self.seconds:.1f} s ({rate:.1f} runs/s); results in {self.out}")


def share(runs: list[Run], process_index: int, process_count: int) -> list[Run]:
    """This process's deterministic, disjoint share (round robin over runs sorted by id)."""
    ordered = sorted(runs, key=lambda r: r.run_id)
    return ordered[process_index::process_count]


def make_plan(runs: list[Run], *, memory_budget: int, n_devices: int, min_efficiency: float,
              chunk_size: int | None = None) -> list[Bucket]:
    buckets = bucketize(runs, min_efficiency)
    choose_chunks(buckets, memory_budget, n_devices)
    if chunk_size:
        for b in buckets:
            b.chunk_size = max(n_devices, (chunk_size // n_devices) * n_devices)
    return buckets


@dataclasses.dataclass
class Pending:
    all_runs: list[Run]
    pending: list[Run]  # this process's share, less what is already written
    skipped: int  # runs of this process's share already written
    budget: int
    buckets: list[Bucket]


def plan_pending(grid: Grid, out: Path, *, memory_budget: int | None, min_efficiency: float,
                 chunk_size: int | None) -> Pending:
    """What this process still has to train, and its plan (the run and the dry run share it)."""
    import jax

    all_runs = grid.runs()
    done = done_run_ids(out)
    # Share first, then skip what is done: the shares stay disjoint and complete even when
    # each host of a slice sees only its own results directory.
    mine = share(all_runs, jax.process_index(), jax.process_count())
    pending = [r for r in mine if r.run_id not in done]
    budget = memory_budget or default_memory_budget()
    buckets = make_plan(pending, memory_budget=budget, n_devices=len(jax.local_devices()),
                        min_efficiency=min_efficiency, chunk_size=chunk_size)
    return Pending(all_runs, pending, len(mine) - len(pending), budget, buckets)


class Program(NamedTuple):
    compiled: Any  # jax.stages.Compiled: call it with chunk_inputs(...)
    sharding: Any  # the NamedSharding of its inputs and outputs
    seconds: float  # time to get it (trace + lower + compile, or load from the store)
    source: str  # "compiled" or "store" (sweeps/executables.py)
    key: str | None  # its key in the store, where the store is used


def compile_bucket(bucket: Bucket, mesh, store: Path | None = None) -> Program:
    """AOT-compile jit(vmap(run)) for the bucket, its config axis sharded over the mesh.

    With `store` (a directory), a program compiled before under the same key
    (`sweeps/executables.py`) is loaded instead, and a new one is saved there.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from contamination.train import make_run

    from . import executables

    t0 = time.perf_counter()
    sharding = NamedSharding(mesh, P("cfg"))
    example = stack_traced([r.config for r in bucket.runs[:1]])
    abstract = {k: jax.ShapeDtypeStruct((bucket.chunk_size,) + v.shape[1:], v.dtype, sharding=sharding)
                for k, v in example.items()}
    key = None
    if store is not None and executables.enabled():
        key = executables.program_key(bucket.static, bucket.chunk_size, abstract, mesh)
        compiled = executables.load(store, key, list(mesh.devices.flat))
        if compiled is not None:
            return Program(compiled, sharding, time.perf_counter() - t0, "store", key)
    fn = jax.jit(jax.vmap(make_run(bucket.static)), in_shardings=(sharding,), out_shardings=sharding)
    with executables.fresh_compile() if key else contextlib.nullcontext():
        compiled = fn.lower(abstract).compile()
    seconds = time.perf_counter() - t0
    if key:
        executables.save(store, key, compiled)
    return Program(compiled, sharding, seconds, "compiled", key)


def chunk_inputs(bucket: Bucket, chunk: list[Run], sharding):
    """Stacked traced inputs, padded to the chunk size by repeating the last run (results dropped)."""
    import jax

    cfgs = [r.config for r in chunk]
    cfgs += [cfgs[-1]] * (bucket.chunk_size - len(cfgs))
    return jax.device_put(stack_traced(cfgs), sharding)


def run_grid(grid: Grid, out: Path, *, memory_budget: int | None = None, min_efficiency: float = 0.8,
             chunk_size: int | None = None, progress: bool = True, cache_dir: str | None = None) -> Summary:
    import jax
    from jax.sharding import Mesh

    store = setup_jax(cache_dir) / "executables"
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    devices = jax.local_devices()
    mesh = Mesh(np.array(devices), ("cfg",))
    dev = device_info()
    # Planning raises on an impossible budget before anything is written.
    p = plan_pending(grid, out, memory_budget=memory_budget, min_efficiency=min_efficiency, chunk_size=chunk_size)
    all_runs, pending, budget, buckets = p.all_runs, p.pending, p.budget, p.buckets
    out.mkdir(parents=True, exist_ok=True)
    recover(out)
    provenance = {"grid": grid.name, "scale": grid.scale, "grid_sha256": grid.sha256, "git_commit": git_commit(),
                  "versions": versions(), **dev, "metrics": metric_names(all_runs),
                  "prng": "threefry2x32, keys from sha256 of run content"}
    skipped = p.skipped
    invocation = {"started": started, "runs_in_grid": len(all_runs), "already_done": skipped,
                  "planned": len(pending), "memory_budget_bytes": budget, "min_efficiency": min_efficiency,
                  "buckets": []}
    manifest_path = out / ("manifest.json" if dev["process_index"] == 0 else f"manifest-p{dev['process_index']}.json")
    manifest = write_manifest(manifest_path, grid, provenance, invocation)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(pending), unit="run", desc=grid.name, dynamic_ncols=True, file=sys.stderr)
    runs_dir, curves_dir = out / "runs", out / "curves"
    runs_dir.mkdir(exist_ok=True)
    curves_dir.mkdir(exist_ok=True)
    done_count = 0

    def train_chunks(bucket: Bucket, prog: Program, written: list[int]) -> None:
        chunks = bucket.chunks()
        # Dispatch chunk i+1 before fetching chunk i, so the device trains while the host writes.
        inflight = (chunks[0], prog.compiled(chunk_inputs(bucket, chunks[0], prog.sharding)), time.perf_counter())
        for i in range(len(chunks)):
            chunk, result, t0 = inflight
            nxt = None
            if i + 1 < len(chunks):
                nxt = (chunks[i + 1], prog.compiled(chunk_inputs(bucket, chunks[i + 1], prog.sharding)))
            host = jax.tree_util.tree_map(np.asarray, result)
            chunk_s = time.perf_counter() - t0
            name = f"{bucket.id}-{stable_hash(sorted(r.run_id for r in chunk))}.parquet"
            extra = {"bucket": bucket.id, "padded_width": bucket.static.width, "chunk": name,
                     "chunk_size": bucket.chunk_size, "chunk_s": chunk_s, "run_s": chunk_s / len(chunk),
                     "device_kind": dev["device_kind"], "process_index": dev["process_index"]}
            runs_df, curves_df = build_tables(grid, chunk, host, extra)
            _atomic_write_table(_to_arrow(curves_df, provenance), curves_dir / name)
            _atomic_write_table(_to_arrow(runs_df, provenance), runs_dir / name)
            written[0] += len(chunk)
            if bar:
                bar.update(len(chunk))
            if nxt:
                inflight = (nxt[0], nxt[1], time.perf_counter())

    from . import executables

    for bucket in buckets:
        prog = compile_bucket(bucket, mesh, store)
        compile_s, source = prog.seconds, prog.source
        t_bucket = time.perf_counter()
        written = [0]
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
            t_again = time.perf_counter()
            prog = compile_bucket(bucket, mesh, store)
            compile_s, source = compile_s + prog.seconds, "compiled after a failed stored program"
            t_bucket += time.perf_counter() - t_again
            train_chunks(bucket, prog, written)
        done_count += written[0]
        chunks = bucket.chunks()
        run_s = time.perf_counter() - t_bucket
        invocation["buckets"].append({
            "bucket": bucket.id, "static": bucket.static._asdict(), "widths": bucket.widths,
            "runs": len(bucket.runs), "chunk_size": bucket.chunk_size, "chunks": len(chunks),
            "padding_efficiency": bucket.efficiency, "compile_s": compile_s, "program": source, "run_s": run_s,
            "runs_per_s": len(bucket.runs) / run_s if run_s > 0 else None,
            "flops": bucket.flops, "executed_flops": bucket.executed_flops,
            "flop_per_s": bucket.executed_flops / run_s if run_s > 0 else None,
            "run_steps_per_s": len(bucket.runs) * bucket.static.steps / run_s if run_s > 0 else None,
            "estimated_run_memory_bytes": bucket.run_memory,
        })
        write_manifest(manifest_path, grid, provenance, invocation, manifest)
    if bar:
        bar.close()
    seconds = time.perf_counter() - t_start
    invocation.update(finished=dt.datetime.now(dt.timezone.utc).isoformat(), seconds=seconds, trained=done_count,
                      runs_per_s=done_count / seconds if seconds > 0 else None)
    write_manifest(manifest_path, grid, provenance, invocation, manifest)
    return Summary(out, len(all_runs), skipped, done_count, len(buckets), seconds,
                   invocation["buckets"])


def metric_names(runs: list[Run]) -> list[str]:
    """Metric columns of these runs (the union over their experiments, in first-seen order)."""
    from contamination.config import static_spec
    names: list[str] = []
    for spec in dict.fromkeys(static_spec(r.config) for r in runs):
        names += [m for m in _metric_names(spec) if m not in names]
    return names


def write_manifest(path: Path, grid: Grid, provenance: dict, invocation: dict, previous: dict | None = None) -> dict:
    """manifest.json: the grid, provenance and one entry per invocation (resumes append)."""
    if previous is None:
        previous = json.loads(path.read_text()) if path.exists() else {}
        history = previous.get("invocations", [])
    else:
        history = previous["invocations"][:-1]
    manifest = {
        "grid": grid.name, "scale": grid.scale, "path": grid.path, "description": grid.description,
        "grid_sha256": grid.sha256, "grid_text": grid.text, "preset": grid.preset, "seeds": list(grid.seeds),
        "fixed": grid.fixed, "axes": grid.axis_values, "axis_columns": axis_columns(grid),
        "label_axes": grid.label_axes, **provenance,
        "invocations": history + [invocation],
    }
    tmp = path.parent / f".tmp-{path.name}"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, path)
    return manifest


def describe_plan(grid: Grid, out: Path, *, memory_budget: int | None, min_efficiency: float,
                  chunk_size: int | None = None) -> str:
    """The dry run: configs, buckets, padding, compiles, chunks, FLOPs and memory; no training."""
    import jax

    p = plan_pending(grid, out, memory_budget=memory_budget, min_efficiency=min_efficiency, chunk_size=chunk_size)
    all_runs, pending, budget, buckets = p.all_runs, p.pending, p.budget, p.buckets
    done = p.skipped
    n_dev = len(jax.local_devices())
    n_cfg = len({r.config_id for r in all_runs})
    lines = [
        f"grid {grid.name} (scale {grid.scale}): {grid.description}",
        f"{n_cfg} configs x {len(grid.seeds)} seeds = {len(all_runs)} runs; {done} already in {out}; "
        f"{len(pending)} to train",
        f"devices: {n_dev} x {jax.local_devices()[0].device_kind} ({jax.default_backend()}); "
        f"memory budget {fmt_bytes(budget)} per device",
        f"{len(buckets)} compiled programs (shape buckets):",
        f"  {'bucket':8} {'widths':>18} {'pad to':>6} {'eff':>5} {'runs':>6} {'chunk':>6} {'chunks':>6} "
        f"{'mem/run':>10} {'GFLOP':>10}  shape",
    ]
    total_flops = total_exec = 0.0
    for b in buckets:
        s = b.static
        acts = "/".join(dict.fromkeys(r.config.activation for r in b.runs))
        shape = (f"d0={s.core_dim}+{s.bg_dim} d={s.input_dim} n={s.n_train} steps={s.steps} {acts} "
                 f"{s.optimizer} {s.loss}")
        widths = ",".join(map(str, b.widths))
        lines.append(f"  {b.id:8} {widths:>18} {s.width:>6} {b.efficiency:5.2f} {len(b.runs):>6} {b.chunk_size:>6} "
                     f"{b.n_chunks:>6} {fmt_bytes(b.run_memory):>10} {b.executed_flops / 1e9:>10.1f}  {shape}")
        total_flops += b.flops
        total_exec += b.executed_flops
    eff = total_flops / total_exec if total_exec else 1.0
    peak = max((b.run_memory * b.chunk_size / n_dev for b in buckets), default=0)
    lines.append(f"total: {total_exec / 1e12:.3f} TFLOP executed ({eff:.0%} useful after padding); "
                 f"peak estimated memory {fmt_bytes(peak)} per device")
    return "\n".join(lines)
