"""A results directory: version guard, crash-safe Parquet chunks, the tables' rows, the manifest.

Commit protocol (crash safety): for each finished chunk the curves file is written, then
the runs file, each to a dot-prefixed temporary name and renamed. A run is done when its
row is in `runs/`. On start, temporaries and curves files without their runs file (a crash
between the two renames) are removed, so a killed sweep resumes with no lost and no
duplicate rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contamination.config import RESULTS_VERSION, log_steps

from .grid import Grid

RANGE_COLUMNS = {"bg_train": ("bg_train_low", "bg_train_high"), "bg_ood": ("bg_ood_low", "bg_ood_high")}
PROVENANCE_KEY = b"contamination"


class ResultsError(ValueError):
    """The results directory cannot take this sweep (one line, nothing written)."""


def results_version(out: Path) -> int | None:
    """The simulator results version `out` was written with: None when it holds no results,
    1 for results written before versions were recorded."""
    versions = {json.loads(m.read_text()).get("results_version", 1) for m in sorted(out.glob("manifest*.json"))}
    if not versions and any((out / "runs").glob("*.parquet")):
        versions = {1}
    if len(versions) > 1:
        raise ResultsError(f"{out}: holds results of several simulator versions ({sorted(versions)}); "
                           "split them before resuming")
    return versions.pop() if versions else None


def check_version(out: Path) -> None:
    """Refuse to mix simulator versions in one directory: their numbers do not compare."""
    found = results_version(out) if out.exists() else None
    if found is not None and found != RESULTS_VERSION:
        raise ResultsError(
            f"{out}: written by simulator results version {found}, this code writes version {RESULTS_VERSION} "
            "(the data or init draws changed, so every number would differ); give another --out, "
            "or move the old results away to rerun them")


def atomic_write_table(table: pa.Table, path: Path) -> None:
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


def config_columns(config) -> dict:
    row = {}
    for k, v in config.to_dict().items():
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


def build_tables(grid: Grid, networks: list, out: dict, extra: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs rows and the long-format curves rows of one chunk of trained networks.

    `out` is the program's output for the chunk: metrics (chunk, [n_logs,] n_evals); run `e`
    of network `i` is variant `e` (padded networks and variants are dropped).
    """
    rows, curve_index = [], []
    for i, net in enumerate(networks):
        for e, r in enumerate(net.runs):
            row = {"run_id": r.run_id, "config_id": r.config_id, "network_id": net.id, "grid": grid.name,
                   "scale": grid.scale, **config_columns(r.config), **r.labels}
            for k in out["curves"]:
                row[k] = float(out["final"][k][i, e])
            row["diverged"] = bool(out["final"]["diverged"][i])
            row["diverged_step"] = int(out["final"]["diverged_step"][i])
            row.update(extra)
            rows.append(row)
            curve_index.append((i, e))
    runs_df = pd.DataFrame(rows)
    first = networks[0].config
    steps = np.asarray(log_steps(first.steps, first.log_every, first.log_schedule))
    L, n = len(steps), len(rows)
    net_i, var_e = (np.array(ix) for ix in zip(*curve_index))
    curves = {c: np.repeat(runs_df[c].to_numpy(), L) for c in ["run_id", "config_id", "seed", *axis_columns(grid)]}
    curves["step"] = np.tile(steps, n)
    for k, v in out["curves"].items():
        # (chunk, n_logs, n_evals) -> one row per (run, step)
        curves[k] = np.asarray(v, dtype=np.float64)[net_i, :, var_e].reshape(-1)
    return runs_df, pd.DataFrame(curves)


def to_arrow(df: pd.DataFrame, provenance: dict) -> pa.Table:
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(provenance).encode()
    return table.replace_schema_metadata(meta)


def write_chunk(out: Path, name: str, runs_df: pd.DataFrame, curves_df: pd.DataFrame, provenance: dict) -> None:
    """Curves first, then the runs file: the runs file is the chunk's commit marker."""
    atomic_write_table(to_arrow(curves_df, provenance), out / "curves" / name)
    atomic_write_table(to_arrow(runs_df, provenance), out / "runs" / name)


def manifest_path(out: Path, process_index: int) -> Path:
    return out / ("manifest.json" if process_index == 0 else f"manifest-p{process_index}.json")


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
