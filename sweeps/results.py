"""A results directory: version guard, crash-safe Parquet chunks, the tables' rows, the manifest.

The directory is a `storage.Location`: a local folder or a prefix in an object store.

Commit protocol (crash safety): each Parquet file is serialised in memory and published whole
(see `storage`); for each finished chunk the curves file is published, then the runs file under
the same name. A run is done when its row is in a readable `runs/` file. On start, temporaries,
curves files without their runs file (a crash between the two writes) and files whose Parquet
footer does not read are removed with a warning, so a killed sweep resumes with no lost and no
duplicate rows. With several writers (the hosts of a slice, the shards of an array job), chunk
names carry the writer's tag (`p{index}-`, `s{K}of{N}-`: `writer_tag`), and a writer removes only
its own temporaries and orphaned curves files (another's may be between its two writes). What is done
is read from the runs files' `run_id` column alone, or from the hosts' indexes of their runs
files (`done_runs`, `write_index`).
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contamination.config import FIELDS, from_dict, log_steps
from contamination.ids import RESULTS_VERSION, hex_ids
from contamination.loop import LOOP_METRICS
from contamination.retrain import RETRAIN_METRICS
from contamination.shift import SHIFT_CURVES, SHIFT_METRICS

from .grid import Grid
from .storage import UNREADABLE, Location


def pandas():
    """pandas, imported where first used: a sweep starts training without it (0.2-0.3 s of its
    start-up; the engine imports it in a thread while the first chunk trains, `engine.Pipeline.train_chunks`)."""
    import pandas as pd

    return pd


if TYPE_CHECKING:
    import pandas as pd


FINAL_ONLY = SHIFT_METRICS + RETRAIN_METRICS + LOOP_METRICS  # measured once, on the final network (or curve)

RANGE_COLUMNS = {"bg_train": ("bg_train_low", "bg_train_high"), "bg_ood": ("bg_ood_low", "bg_ood_high")}
PROVENANCE_KEY = b"contamination"
TABLES = ("runs", "curves", "shifts")
# Tables written before a chunk's runs file (its commit marker), in this order
BEFORE_RUNS = ("curves", "shifts")


class ResultsError(ValueError):
    """The results directory cannot take this sweep (one line, nothing written)."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def manifest_names(out: Location) -> list[str]:
    return out.files(prefix="manifest", suffix=".json")


def results_version(out: Location) -> int | None:
    """The simulator results version `out` was written with: None when it holds no results,
    1 for results written before versions were recorded."""
    versions = {json.loads(out.read_text(m)).get("results_version", 1) for m in manifest_names(out)}
    if not versions and out.files("runs", suffix=".parquet"):
        versions = {1}
    if len(versions) > 1:
        raise ResultsError(f"{out}: holds results of several simulator versions ({sorted(versions)}); "
                           "split them before resuming")
    return versions.pop() if versions else None


def check_version(out: Location) -> None:
    """Refuse to mix simulator versions in one directory: their numbers do not compare."""
    found = results_version(out)
    if found is not None and found != RESULTS_VERSION:
        raise ResultsError(
            f"{out}: written by simulator results version {found}, this code writes version {RESULTS_VERSION} "
            "(the data or init draws changed, so every number would differ); give another --out, "
            "or move the old results away to rerun them")


def numerics_of(out: Location) -> tuple[str | None, set[str]]:
    """The float width and the matmul precisions `out` holds (None, empty: no results yet).
    Results written before either was recorded are float32 at `highest` (a CPU's arithmetic)."""
    manifests = [json.loads(out.read_text(m)) for m in manifest_names(out)]
    if not manifests and not out.files("runs", suffix=".parquet"):
        return None, set()
    dtypes = {m.get("dtype", "float32") for m in manifests} or {"float32"}
    precisions = set().union(*[m.get("precisions", ["highest"]) for m in manifests]) or {"highest"}
    if len(dtypes) > 1:
        raise ResultsError(f"{out}: holds results computed in several float widths ({sorted(dtypes)}); "
                           "split them before resuming")
    return dtypes.pop(), precisions


def check_numerics(out: Location, precisions, dtype: str) -> None:
    """Refuse to mix float widths or matmul precisions in one directory: their numbers differ by
    more than the effects a table compares (docs/results.md#numerics)."""
    precisions = set(precisions)
    if len(precisions) > 1:
        raise ResultsError(f"precision: the grid mixes matmul precisions {sorted(precisions)}; one directory holds "
                           "one precision, so give each its own grid and --out")
    found_dtype, found = numerics_of(out)
    if found_dtype is not None and found_dtype != dtype:
        flag = "without --x64" if found_dtype == "float32" else "with --x64 (or JAX_ENABLE_X64=1)"
        raise ResultsError(f"{out}: holds {found_dtype} results and this sweep computes in {dtype}; run it {flag}, "
                           "or give another --out")
    if found and found != precisions:
        raise ResultsError(f"{out}: holds results at precision {', '.join(sorted(found))} and this grid asks for "
                           f"{', '.join(sorted(precisions))}; give another --out")


def table_bytes(table: pa.Table) -> bytes:
    """The Parquet file of `table`, complete in memory (so it is published in one write)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def writer_tag(process_index: int = 0, process_count: int = 1, shard: str = "") -> str:
    """Who writes into a results directory: "" (one process), `p{index}` (a host of a slice) or
    a shard's tag (`shards.tag`). It prefixes the writer's chunk names and names its manifest
    and index, so that writers that run at once never write the same file."""
    return shard or (f"p{process_index}" if process_count > 1 else "")


def chunk_prefix(tag: str) -> str:
    """Chunk names of a writer: `{tag}-` (none for a single process)."""
    return f"{tag}-" if tag else ""


def recover(out: Location, prefix: str = "", keep: tuple[str, ...] = ()) -> None:
    """Remove temporaries, and the curves files whose runs file never landed, of the writer whose
    chunk names start with `prefix` ("": every writer's), leaving alone those of the prefixes in
    `keep` (writers running now: theirs may be between two writes)."""
    def mine(name: str) -> bool:
        return name.startswith(prefix) and not (keep and name.startswith(tuple(keep)))

    for table in TABLES:
        for name in out.files(table, prefix=".tmp-", hidden=True):
            if mine(name[len(".tmp-"):]):
                out.delete(table, name)
    if not prefix and not keep:  # the directory's only writer: its manifests' and indexes' temporaries too
        for name in out.files(prefix=".tmp-", hidden=True):
            out.delete(name)
    committed = set(out.files("runs", suffix=".parquet"))
    for table in BEFORE_RUNS:
        for name in out.files(table, suffix=".parquet", prefix=prefix):
            if name not in committed and mine(name):
                warn(f"{out}: removing {table}/{name}, whose runs file never landed (a run stopped between the two)")
                out.delete(table, name)


# Each host's index of the runs files it knows (hidden, beside the manifest): a resume takes
# the run ids of a runs file from it while the file's size and modification time are those the
# index recorded, instead of reading every runs file's footer (on a CPU, where chunks hold a few
# runs, 10^5 runs are tens of thousands of files). A file that changed, or that no index names,
# is read (and removed when it does not read); entries of files that are gone are ignored.
INDEX_PREFIX = ".run-index-"
READ_THREADS = 16  # runs files read at once from an object store (each read waits on the network)
INDEX_EVERY_S = 120.0  # a run also writes its index after a chunk when this long has passed since the last


def index_name(writer: str | int) -> str:
    """A writer's index (`writer_tag`; a process index `k` means `pk`, and "" is `p0`)."""
    tag = f"p{writer}" if isinstance(writer, int) else writer or "p0"
    return f"{INDEX_PREFIX}{tag}.parquet"


class Done:
    """The runs already written: each one's run id (as a uint64 digest, `ids.id_keys`) and the
    runs file that holds it (an index into `files`)."""

    def __init__(self, files: list[str], file_of: np.ndarray, keys: np.ndarray, changed: bool = False):
        self.files = files
        self._parts = [(np.asarray(file_of, np.int32), np.asarray(keys, np.uint64))]
        self.changed = changed  # whether the indexes on disk miss some of this (`write_index`)

    def add(self, name: str, keys: np.ndarray) -> None:
        """A runs file this process has just written."""
        self._parts.append((np.full(len(keys), len(self.files), np.int32), np.asarray(keys, np.uint64)))
        self.files.append(name)
        self.changed = True

    def _joined(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._parts) > 1:
            self._parts = [tuple(np.concatenate(c) for c in zip(*self._parts))]
        return self._parts[0]

    @property
    def file_of(self) -> np.ndarray:
        """int32, per run: its file in `files`."""
        return self._joined()[0]

    @property
    def keys(self) -> np.ndarray:
        """uint64, per run: its run id."""
        return self._joined()[1]


def done_run_ids(out: Location) -> set[str]:
    """Run ids in readable runs files; a runs file whose footer does not read is removed with its curves."""
    return set(hex_ids(done_runs(out).keys))


def done_run_keys(out: Location) -> np.ndarray:
    """The run ids of `done_runs` as sorted, distinct uint64 digests."""
    return np.unique(done_runs(out).keys)


def done_runs(out: Location, remove: bool = True) -> Done:
    """The runs in readable runs files (reading nothing else of them).

    A file an index (`write_index`) names, unchanged, is taken from it; the others are read, the
    `run_id` column alone (Parquet column projection; several at once from an object store),
    and one whose footer (or run_id column) does not read is removed with its curves, with a
    warning (skipped, with `remove` False)."""
    listed = out.listing("runs", suffix=".parquet")
    if not listed:
        return Done([], np.zeros(0, np.int32), np.zeros(0, np.uint64))
    files, file_of, keys, stale = read_index(out, listed)
    known = set(files)
    new = [n for n in listed if n not in known]
    for name, got in zip(new, read_run_keys(out, new)):
        if got is None and not remove:
            continue
        if got is None:
            warn(f"{out}: removing runs/{name} and its curves: not a readable Parquet file; its runs will train again")
            out.delete("runs", name)
            for table in BEFORE_RUNS:
                out.delete(table, name)
            continue
        file_of.append(np.full(len(got), len(files), np.int32))
        keys.append(got)
        files.append(name)
    return Done(files, np.concatenate(file_of), np.concatenate(keys), changed=bool(new) or stale)


def read_index(out: Location, listed: dict[str, tuple[int, int]]) \
        -> tuple[list[str], list[np.ndarray], list[np.ndarray], bool]:
    """The files of `listed` (name -> size, mtime) that some index names with their size and
    mtime (each from the first index naming it), the index of each of their runs' file and its
    key; and whether an index names a file that is gone or changed. An index that does not read
    is ignored."""
    at: dict[str, int] = {}
    file_of, keys = [np.zeros(0, np.int32)], [np.zeros(0, np.uint64)]
    stale = False
    for name in out.files(prefix=INDEX_PREFIX, suffix=".parquet", hidden=True):
        try:
            with out.fs.open_input_file(out.path(name)) as f:
                table = pq.ParquetFile(f).read()
            column = table.column("file").combine_chunks()
            if not pa.types.is_dictionary(column.type):
                column = column.dictionary_encode()
            rows = column.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            size, mtime = (table.column(c).to_numpy() for c in ("size", "mtime_ns"))
            run_keys = table.column("run_key").to_numpy().astype(np.uint64)
        except (*UNREADABLE, KeyError, ValueError):
            continue
        names = column.dictionary.to_pylist()
        first = np.full(len(names), -1, np.int64)
        first[rows[::-1]] = np.arange(len(rows))[::-1]  # each file's first row
        index = np.full(len(names), -1, np.int64)
        for k, n in enumerate(names):
            valid = first[k] >= 0 and listed.get(n) == (int(size[first[k]]), int(mtime[first[k]]))
            stale |= not valid
            if valid and n not in at:
                index[k] = at[n] = len(at)
        got = index[rows]
        keep = got >= 0
        file_of.append(got[keep].astype(np.int32))
        keys.append(run_keys[keep])
    return list(at), file_of, keys, stale


def write_index(out: Location, writer: str | int, done: Done) -> None:
    """Record `done` as this host's index (each file with the size and mtime it has now), where
    it changed; a best effort: a resume without it reads the runs files."""
    if not done.changed:
        return
    try:
        listed = out.listing("runs", suffix=".parquet")
        stats = np.array([listed.get(n, (-1, -1)) for n in done.files], np.int64).reshape(-1, 2)
        here = np.array([n in listed for n in done.files], bool)[done.file_of]  # files since removed: left out
        file_of = done.file_of[here]
        size, mtime = stats[:, 0], stats[:, 1]
        table = pa.table({"file": pa.DictionaryArray.from_arrays(pa.array(file_of, pa.int32()),
                                                                 pa.array(done.files, pa.string())),
                          "size": pa.array(size[file_of]), "mtime_ns": pa.array(mtime[file_of]),
                          "run_key": pa.array(done.keys[here], pa.uint64())})
        out.write_bytes(table_bytes(table), index_name(writer))
        done.changed = False
    except (*UNREADABLE, ValueError) as e:
        warn(f"{out}: could not write {index_name(writer)} ({e}); the next resume reads the runs files")


def read_run_keys(out: Location, names: list[str]) -> list[np.ndarray | None]:
    """The run ids (uint64 digests) of each runs file, its `run_id` column alone; None where the
    file does not read."""
    def one(name: str) -> np.ndarray | None:
        try:
            with out.fs.open_input_file(out.path("runs", name)) as f:
                column = pq.ParquetFile(f).read(columns=["run_id"], use_threads=False).column("run_id")
            return id_column_keys(column)
        except (*UNREADABLE, KeyError, ValueError):
            return None

    if out.local or len(names) < 2:
        return [one(n) for n in names]
    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(one, names))


def id_column_keys(column: pa.ChunkedArray) -> np.ndarray:
    """uint64 digests of an id column's 16-hex-digit values (others, and nulls, are no run's id)."""
    out = [np.zeros(0, np.uint64)]
    for chunk in column.chunks:
        chunk = pc.drop_null(chunk.cast(pa.string()))
        ok = pc.match_substring_regex(chunk, "^[0-9a-f]{16}$")
        if not pc.all(ok).as_py():
            chunk = chunk.filter(ok)
        if len(chunk):
            offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
            text = chunk.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]
            out.append(np.frombuffer(bytes.fromhex(text.decode()), ">u8").astype(np.uint64))
    return np.concatenate(out)


def widths_label(widths) -> str:
    """A network's hidden widths as a table value: "64" (one layer), "64,32" (two), ..."""
    return ",".join(str(int(w)) for w in widths)


def config_columns(config) -> dict:
    """A run's config as table columns: ranges as low/high columns, `widths` as `widths_label`
    of every hidden layer (so one column tells every network's shape, whatever set it)."""
    row = {}
    for k, v in config.to_dict().items():
        if k in RANGE_COLUMNS:
            row[RANGE_COLUMNS[k][0]], row[RANGE_COLUMNS[k][1]] = float(v[0]), float(v[1])
        elif k == "widths":
            row[k] = widths_label(config.hidden_widths)
        elif k == "digit_classes":  # "" (all ten) or e.g. "3,8"
            row[k] = widths_label(v)
        else:
            row[k] = v
    return row


def config_from_row(row):
    """The Config of a runs-table row (a `pd.Series` or dict): the inverse of `config_columns`."""

    def plain(v):
        return v.item() if isinstance(v, np.generic) else v

    values = {}
    for name in FIELDS:
        if name in RANGE_COLUMNS:
            lo, hi = RANGE_COLUMNS[name]
            values[name] = [float(row[lo]), float(row[hi])]
        elif name not in row:  # a field added after the table was written: its default
            continue
        elif name in ("widths", "digit_classes"):
            values[name] = [int(w) for w in str(row[name] or "").split(",") if w]
        else:
            values[name] = plain(row[name])
    return from_dict(values)


def axis_columns(grid: Grid) -> list[str]:
    """Config columns that vary across the grid (ranges expanded), then label columns."""
    cols = []
    for f in grid.varying_fields:
        cols += list(RANGE_COLUMNS.get(f, (f,)))
    return cols + grid.label_axes


def build_tables(grid: Grid, networks: list, out: dict, extra: dict,
                 metrics: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """The runs rows, the long-format curves rows and the shifts rows (`shift_rows`) of one chunk
    of trained networks.

    `out` is the program's output for the chunk: metrics (chunk, [n_logs,] n_evals); run `e`
    of network `i` is variant `e` (padded networks and variants are dropped). `metrics` are the
    grid's metric columns: those this program does not measure (another experiment's, a deeper
    layer's) are NaN, so every file of a grid has the same columns.
    """
    n_chunk, n_logs, n_evals = next(iter(out["curves"].values())).shape
    nan = np.full((n_chunk, n_logs, n_evals), np.nan)
    once = [m for m in FINAL_ONLY if m in (metrics or out["final"])]  # measured on the final network only
    missing = [m for m in (metrics or []) if m not in out["curves"] and m not in once]
    out = {"curves": {**out["curves"], **{m: nan for m in missing}},
           "final": {**out["final"], **{m: nan[:, -1] for m in missing + once if m not in out["final"]}},
           "shifts": out.get("shifts")}
    if metrics:
        order = [m for m in metrics if m in out["curves"]] + [m for m in out["curves"] if m not in metrics]
        out["curves"] = {m: out["curves"][m] for m in order}
    rows, curve_index = [], []
    for i, net in enumerate(networks):
        for e, r in enumerate(net.runs):
            row = {"run_id": r.run_id, "config_id": r.config_id, "network_id": net.id, "grid": grid.name,
                   "scale": grid.scale, **config_columns(r.config), **r.labels, "round": r.round}
            for k in [*out["curves"], *once]:
                row[k] = float(out["final"][k][i, e])
            row["diverged"] = bool(out["final"]["diverged"][i])
            row["diverged_step"] = int(out["final"]["diverged_step"][i])
            row["stopped_step"] = int(out["final"]["stopped_step"][i, e])
            row.update(extra)
            rows.append(row)
            curve_index.append((i, e))
    runs_df = pandas().DataFrame(rows)
    first = networks[0].config
    steps = np.asarray(log_steps(first.steps, first.log_every, first.log_schedule))
    L, n = len(steps), len(rows)
    net_i, var_e = (np.array(ix) for ix in zip(*curve_index))
    curves = long_keys(grid, runs_df, L)
    curves["step"] = np.tile(steps, n)
    for k, v in out["curves"].items():
        # (chunk, n_logs, n_evals) -> one row per (run, step)
        curves[k] = np.asarray(v, dtype=np.float64)[net_i, :, var_e].reshape(-1)
    return runs_df, pandas().DataFrame(curves), shift_rows(grid, runs_df, out["shifts"], net_i, var_e)


def long_keys(grid: Grid, runs_df: pd.DataFrame, repeats: int) -> dict[str, np.ndarray]:
    """The key columns of a long table (curves, shifts): each run's ids, seed and axis columns,
    repeated for its `repeats` rows."""
    return {c: np.repeat(runs_df[c].to_numpy(), repeats) for c in ["run_id", "config_id", "seed", *axis_columns(grid)]}


def shift_rows(grid: Grid, runs_df: pd.DataFrame, shifts: dict | None, net_i, var_e) -> pd.DataFrame | None:
    """The `shifts` table of a chunk: one row per run and ladder point (None where the program
    measures no shift curve, e.g. another experiment's)."""
    if not shifts:
        return None
    cols = long_keys(grid, runs_df, np.asarray(shifts["shift"]).shape[-1])
    for k in SHIFT_CURVES:  # (chunk, n_evals, points) -> one row per (run, point)
        cols[k] = np.asarray(shifts[k], dtype=np.float64)[net_i, var_e, :].reshape(-1)
    return pandas().DataFrame(cols)


def to_arrow(df: pd.DataFrame, provenance: dict) -> pa.Table:
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(provenance).encode()
    return table.replace_schema_metadata(meta)


def write_chunk(out: Location, name: str, runs_df: pd.DataFrame, curves_df: pd.DataFrame, provenance: dict,
                shifts_df: pd.DataFrame | None = None) -> None:
    """Curves and shifts first, then the runs file: the runs file is the chunk's commit marker."""
    out.write_bytes(table_bytes(to_arrow(curves_df, provenance)), "curves", name)
    if shifts_df is not None:
        out.write_bytes(table_bytes(to_arrow(shifts_df, provenance)), "shifts", name)
    out.write_bytes(table_bytes(to_arrow(runs_df, provenance)), "runs", name)


def manifest_name(tag: str) -> str:
    """A writer's manifest (`writer_tag`): `manifest.json` for one process and a slice's host 0."""
    return "manifest.json" if tag in ("", "p0") else f"manifest-{tag}.json"


def write_manifest(out: Location, name: str, grid: Grid, provenance: dict, invocation: dict,
                   previous: dict | None = None) -> dict:
    """manifest.json (per host): the grid, provenance and one entry per invocation (resumes append)."""
    if previous is None:
        previous = json.loads(out.read_text(name)) if out.exists(name) else {}
        history = previous.get("invocations", [])
    else:
        history = previous["invocations"][:-1]
    manifest = {
        "grid": grid.name, "scale": grid.scale, "path": grid.path, "description": grid.description,
        "grid_sha256": grid.sha256, "grid_text": grid.text, "preset": grid.preset, "seeds": list(grid.seeds),
        "fixed": grid.fixed, "axes": grid.axis_values, "axis_columns": axis_columns(grid),
        "label_axes": grid.label_axes, "headline": grid.headline, **provenance,
        "invocations": history + [invocation],
    }
    out.write_text(json.dumps(manifest, indent=2, default=str), name)
    return manifest
