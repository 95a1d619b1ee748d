"""Command line: `python -m sweeps run|plan|refine|status NAME_OR_PATH [options]`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import NamedTuple

import jax

from contamination.numerics import enable_x64, float_name

from .environment import use_host_devices
from .grid import GridError, load
from .plan import PlanError, parse_bytes
from .preempt import Preempted


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sweeps", description="Train every config of a grid file.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "train the grid and write Parquet tables"),
                        ("plan", "dry run: configs, buckets, compiles, chunks, FLOPs, memory"),
                        ("refine", "train the grid, then add runs where METRIC crosses LEVEL (adaptive phase diagram)")):
        sp = sub.add_parser(name, help=help_)
        add_grid_arguments(sp, out_help="results directory: a local path, gs://BUCKET/PREFIX or s3://BUCKET/PREFIX "
                                        "(default: results/NAME or results/NAME-SCALE)")
        add_planning_arguments(sp)
        add_device_arguments(sp)
        if name == "refine":
            add_refine_arguments(sp)
        sp.add_argument("--calibrate", action="store_true",
                        help="measure this machine's device model first (5-15 s; otherwise the planner starts "
                             "from the saved model, or the platform's shipped default, refitted by every bucket)")
        if name in ("run", "plan"):
            add_shard_arguments(sp)
        if name in ("run", "refine"):
            sp.add_argument("--no-progress", action="store_true", help="no progress bar")
            sp.add_argument("--compile-ahead", type=int, default=1,
                            help="programs compiled in a background thread while a bucket trains (default 1; 0: none)")
    sp = sub.add_parser("status", help="runs done and missing per shard, and predicted seconds left, from the results")
    add_grid_arguments(sp, out_help="results directory or URI (default: results/NAME or results/NAME-SCALE)")
    sp.add_argument("--shards", type=int, default=None, metavar="N",
                    help="the shard count (default: the one the shards' manifests record)")
    return p


def add_grid_arguments(sp: argparse.ArgumentParser, out_help: str) -> None:
    sp.add_argument("grid", help="a grid name in sweeps/grids/ or a path to a .toml file")
    sp.add_argument("--scale", default=None, help="a named scale of the grid ([scales.NAME]); default: the top level")
    sp.add_argument("--out", default=None, help=out_help)


def add_planning_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--memory-budget", default=None,
                    help="per-device memory for one chunk, e.g. 2GB (default: half the device, or 1/4 of RAM)")
    sp.add_argument("--min-efficiency", default="auto",
                    help="auto (default): programs chosen by least predicted time on this device; a number "
                         "in [0, 1]: pad runs of smaller sizes into one program while this share of its FLOPs "
                         "stays useful (1: one program per exact shape, 0: one per set of categorical choices)")
    sp.add_argument("--chunk-size", type=int, default=None, help="force the runs per compiled call")


def add_device_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--host-devices", default="auto",
                    help="CPU backend: split the host into this many JAX devices, runs sharded over them "
                         "(default auto: one per usable core, unless XLA_FLAGS or JAX_NUM_CPU_DEVICES "
                         "already set a count; accelerators ignore it)")
    sp.add_argument("--x64", action="store_true",
                    help="compute in float64 (as JAX_ENABLE_X64=1; recorded, and never mixed with float32 "
                         "results in one directory)")
    sp.add_argument("--distributed", action="store_true",
                    help="multi-host: call jax.distributed.initialize() (on a TPU slice it finds its peers "
                         "itself); each process runs a disjoint share")
    sp.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                    help="with --distributed, where no cluster is detected (e.g. GPU hosts): process 0's address")
    sp.add_argument("--num-processes", type=int, default=None, help="with --coordinator: how many processes")
    sp.add_argument("--process-id", type=int, default=None, help="with --coordinator: this process's index")


def add_refine_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--metric", required=True, help="a metric column of the runs table, e.g. ood_acc")
    sp.add_argument("--level", required=True, type=float, help="the level whose crossing is the boundary")
    sp.add_argument("--rounds", type=int, default=3, help="rounds after the grid's own points (default 3)")
    sp.add_argument("--batch", type=int, default=None,
                    help="runs per round (default: a quarter of the grid's runs)")
    sp.add_argument("--seeds-per-point", type=int, default=None,
                    help="seeds of each new point, and seeds added per point (default: 3/4 of the grid's, at least 1)")
    sp.add_argument("--axes", default=None,
                    help="comma-separated numeric axes to refine (default: every numeric axis)")
    sp.add_argument("--max-depth", type=int, default=3, help="halvings of the grid's cells at most (default 3)")


def add_shard_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--shard", default=None, metavar="K/N|auto",
                    help="train shard K of N (0 <= K < N), a share of the grid balanced by predicted "
                         "seconds; auto: K (and N) from the array job (SLURM_ARRAY_TASK_ID/COUNT, "
                         "JOB_COMPLETION_INDEX, BATCH_TASK_INDEX/COUNT) (docs/clusters.md)")
    sp.add_argument("--shards", type=int, default=None, metavar="N",
                    help="the shard count (with --shard auto; $CONTAMINATION_SHARDS also gives it); for "
                         "plan alone: print each of N shards' predicted seconds")


def parse_min_efficiency(text: str) -> float | None:
    """'auto' -> None (plan by predicted time); else a number in [0, 1]."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise PlanError(f"--min-efficiency: 'auto' or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise PlanError(f"--min-efficiency: must be in [0, 1], got {value}")
    return value


def default_out(grid) -> str:
    return os.path.join("results", grid.name if grid.scale == "default" else f"{grid.name}-{grid.scale}")


def status(grid, args) -> int:
    """`sweeps status`: no JAX, nothing written."""
    # the results' modules load pyarrow (about 0.2 s): only the commands that read results load them
    from . import status as status_
    from .results import ResultsError, check_version
    from .storage import StorageError, check_reachable, location

    try:
        out = location(args.out or default_out(grid))
        check_reachable(out)
        check_version(out)
        if args.shards is not None and args.shards < 1:
            raise PlanError(f"--shards: expected a positive integer, got {args.shards}")
        print(status_.report(grid, out, args.shards))
    except (PlanError, ResultsError, StorageError) as e:
        return error(e)
    return 0


class Options(NamedTuple):
    """The options of run, plan and refine, parsed and checked."""

    shard: tuple[int, int] | None
    budget: int | None
    min_efficiency: float | None
    host_devices: int | None


def parse_options(args) -> Options:
    """Check the options before anything loads or is written; raises `PlanError`."""
    shard = None
    if getattr(args, "shard", None) is not None:
        # the shards' module loads the device model's (the engine loads it anyway, after these checks)
        from .shards import parse
        shard = parse(args.shard, args.shards)
    elif getattr(args, "shards", None) is not None and (args.command != "plan" or args.shards < 1):
        raise PlanError("--shards: with --shard auto (the shard count), or with plan alone (a positive count)")
    budget = parse_bytes(args.memory_budget) if args.memory_budget else None
    min_efficiency = parse_min_efficiency(args.min_efficiency)
    if getattr(args, "compile_ahead", 0) < 0:
        raise PlanError(f"--compile-ahead: must be >= 0, got {args.compile_ahead}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise PlanError(f"--chunk-size: must be >= 1, got {args.chunk_size}")
    host_devices = None
    if args.host_devices != "auto":
        try:
            host_devices = int(args.host_devices)
        except ValueError:
            raise PlanError(f"--host-devices: 'auto' or a positive integer, got {args.host_devices!r}") from None
    return Options(shard, budget, min_efficiency, host_devices)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        grid = load(args.grid, args.scale)
        if args.command == "status":
            return status(grid, args)
        options = parse_options(args)
    except (GridError, PlanError) as e:
        return error(e)
    # the engine and the results' modules load pyarrow and the programs' modules (about 0.3 s):
    # after the checks above, so that a mistyped option is answered at once
    from . import engine
    from .results import ResultsError, check_numerics, check_version
    from .storage import StorageError, check_reachable, location

    if args.x64:
        enable_x64()
    try:
        out = location(args.out or default_out(grid))
        check_reachable(out)
        check_version(out)
        if args.command != "plan":
            check_numerics(out, {pt.config.precision for pt in grid.table.points}, float_name())
        # before JAX starts its backends; no more devices than the grid has runs (padding)
        use_host_devices(options.host_devices, runs=len(grid.table))
    except (PlanError, ResultsError, StorageError) as e:
        return error(e)
    if args.distributed or args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    try:
        if args.calibrate:
            print(f"device model measured: {engine.calibrate_devices().summary()}", flush=True)
        return COMMANDS[args.command](engine, grid, out, args, options)
    except (PlanError, ResultsError, StorageError, refine_error()) as e:
        return error(e)
    except engine.LeaseLost as e:
        error(e)
        return LEASE_LOST_EXIT
    except Preempted as e:
        print(stopped_line(e, argv), flush=True)
        sys.stderr.flush()
        # leave at once: a compile in a worker thread or a chunk on the device may still be running
        os._exit(e.exit_code)


def error(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def plan(engine, grid, out, args, options: Options) -> int:
    print(engine.describe_plan(grid, out, memory_budget=options.budget, min_efficiency=options.min_efficiency,
                               chunk_size=args.chunk_size, shard=options.shard,
                               shards_count=None if options.shard else args.shards))
    return 0


def run(engine, grid, out, args, options: Options) -> int:
    summary = engine.run_grid(grid, out, memory_budget=options.budget, min_efficiency=options.min_efficiency,
                              chunk_size=args.chunk_size, progress=not args.no_progress,
                              compile_ahead=args.compile_ahead, shard=options.shard)
    print(summary.line())
    return 0


def refine(engine, grid, out, args, options: Options) -> int:
    # only refine loads the refinement's modules (with pandas: a quarter second of start-up)
    from .refine import refine as refine_grid

    def train(g, o, note):
        print(engine.run_grid(g, o, memory_budget=options.budget, min_efficiency=options.min_efficiency,
                              chunk_size=args.chunk_size, progress=not args.no_progress,
                              compile_ahead=args.compile_ahead, note=note).line(), flush=True)

    axes = [a.strip() for a in args.axes.split(",")] if args.axes else None
    done = refine_grid(grid, out, metric=args.metric, level=args.level, rounds=args.rounds, batch=args.batch,
                       seeds_per_point=args.seeds_per_point, axes=axes, max_depth=args.max_depth, train=train)
    print(f"refine: {len(done['rounds'])} rounds recorded in {out.uri}/refine.json; stopped: {done['stopped']}")
    return 0


# the commands that train or plan: each is given the engine module (`main` loads it)
COMMANDS = {"plan": plan, "run": run, "refine": refine}


LEASE_LOST_EXIT = 75  # EX_TEMPFAIL: a retry waits for the attempt that took over, then finds the work done


def refine_error() -> type:
    """`RefineError` where the refinement's modules are loaded (only `refine` loads them: with
    pandas, they would cost every other command a quarter second of start-up)."""
    lattice = sys.modules.get(f"{__package__}.lattice")
    return lattice.RefineError if lattice is not None else PlanError


def stopped_line(e, argv: list[str] | None) -> str:
    """One line: what stopped the sweep, what it wrote, how to resume."""
    s = e.summary
    wrote = (f"{s.done} runs written by this invocation ({s.skipped} were already in {s.out})" if s
             else "nothing written")
    command = shlex.join(["python", "-m", "sweeps", *(sys.argv[1:] if argv is None else argv)])
    return f"stopped by {e.name}: {wrote}, the chunk in flight abandoned; resume with: {command}"


if __name__ == "__main__":
    sys.exit(main())
