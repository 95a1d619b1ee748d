"""The dry run's text (`python -m sweeps plan`): a plan's configs, networks, buckets, padding,
chunks, predicted seconds, FLOPs and memory, formatted from what `engine.plan_pending` planned."""

from __future__ import annotations

from typing import TYPE_CHECKING

from contamination import experiments
from contamination.spec import Static, static_spec

from . import calibrate, shards
from .grid import Grid
from .plan import Bucket, Planning, fmt_bytes

if TYPE_CHECKING:
    from .engine import Pending


def describe(grid: Grid, p: Pending, out, devices: tuple[int, str, str], *, min_efficiency: float | None,
             chunk_size: int | None, shard: tuple[int, int] | None = None, rows=None,
             shards_count: int | None = None) -> str:
    """The plan `p` of `grid` into `out` on `devices` (count, device kind, backend): of one
    `shard` (K, N) whose table rows are `rows`, and with `shards_count` N each of N shards'
    predicted seconds."""
    lines = header(grid, p, out, devices, min_efficiency, shard, rows)
    lines += bucket_lines(p.buckets)
    lines.append(totals_line(p.buckets, devices[0]))
    if shards_count:
        local = Planning(p.budget, devices[0], p.model, min_efficiency, chunk_size)
        lines += shards.describe(shards.assign(grid.table, shards_count), grid.table, local)
    return "\n".join(lines)


def header(grid: Grid, p: Pending, out, devices: tuple[int, str, str], min_efficiency: float | None,
           shard: tuple[int, int] | None, rows) -> list[str]:
    """The grid, its runs and what is left of them, the devices and the device model."""
    n_dev, kind, backend = devices
    n_cfg = len({p.table.points[k].config_id for k in p.table.live_points()})
    networks = sum(len(b.networks) for b in p.buckets)
    m = p.model
    planning = "auto, least predicted time" if min_efficiency is None else f"min efficiency {min_efficiency}"
    lines = [
        f"grid {grid.name} (scale {grid.scale}): {grid.description}",
        f"{n_cfg} configs x {len(grid.seeds)} seeds = {len(p.table)} runs"
        + (f", {len(rows)} of them in shard {shard[0]}/{shard[1]}" if shard else "")
        + f"; {p.skipped} already in {out}; {len(p.pending)} to train as {networks} networks",
        f"devices: {n_dev} x {kind} ({backend}); memory budget {fmt_bytes(p.budget)} per device",
        f"device model: {m.flop_rate / 1e9:.1f} GFLOP/s, {m.step_s * 1e6:.0f} us per step, "
        f"compile {m.compile_s(static_spec(p.table.points[p.table.point[0]].config)):.2f} s"
        f" (planning: {planning})",
    ]
    if m.source != "measured":
        lines.append(f"  {m.source}; refitted by this machine's buckets from {calibrate.MIN_RECORDED_RUNS} on "
                     f"({len(m.recorded_runs)} recorded; --calibrate measures it)")
    return lines


def bucket_lines(buckets: list[Bucket]) -> list[str]:
    """One line per bucket (compiled program) under a heading."""
    lines = [
        f"{len(buckets)} compiled programs (buckets):",
        f"  {'bucket':8} {'shapes':>6} {'nets':>5} {'runs':>5} {'chunk':>5} {'chunks':>6} {'eff':>5} "
        f"{'mem/run':>10} {'GFLOP':>9} {'compile':>8} {'run':>7} {'total':>7}  padded shape",
    ]
    for b in buckets:
        lines.append(f"  {b.id:8} {len(b.shapes):>6} {len(b.networks):>5} {b.n_runs:>5} {b.chunk_size:>5} "
                     f"{b.n_chunks:>6} {b.efficiency:5.2f} {fmt_bytes(b.run_memory):>10} "
                     f"{b.executed_flops / 1e9:>9.1f} {b.predicted_compile_s:>7.1f}s {b.predicted_run_s:>6.1f}s "
                     f"{b.predicted_s:>6.1f}s  {padded_shape(b.static, b.activations)}")
    return lines


def padded_shape(s: Static, activations) -> str:
    """A bucket's padded sizes and categorical choices, in one phrase."""
    widths = "x".join(str(w) for w in (s.width, *s.hidden))
    return (f"m={widths} d0={s.core_dim}+{s.bg_dim} d={s.input_dim} n={s.n_train}/{s.n_test} "
            + (f"K={s.n_classes} " if s.n_classes > 2 else "")
            + experiments.get(s.experiment).describe(s) +
            f"evals={s.n_evals} steps={s.steps} {'/'.join(activations)} {s.optimizer} {s.loss}")


def totals_line(buckets: list[Bucket], n_dev: int) -> str:
    """The plan's FLOPs, useful share, predicted seconds and peak memory."""
    total_flops = sum(b.flops for b in buckets)
    total_exec = sum(b.executed_flops for b in buckets)
    compile_total = sum(b.predicted_compile_s for b in buckets)
    run_total = sum(b.predicted_run_s for b in buckets)
    eff = total_flops / total_exec if total_exec else 1.0
    peak = max((b.run_memory * b.chunk_size / n_dev for b in buckets), default=0)
    return (f"total: {total_exec / 1e12:.3f} TFLOP executed ({eff:.0%} useful after padding); predicted "
            f"{compile_total:.1f} s compiling + {run_total:.1f} s training = {compile_total + run_total:.1f} s "
            f"(compiles overlap training); peak estimated memory {fmt_bytes(peak)} per device")
