"""Read a results directory (`runs/`, `curves/`, `shifts/`, `manifest.json`) into typed DataFrames.

The directory may be local or a prefix in an object store (`gs://...`, `s3://...`; see
`sweeps/storage.py`). Only committed chunks are read: a runs file whose Parquet footer reads,
and the curves file of the same name (a curves file without its runs file is a chunk still
being written by another host, or one a killed run left behind).

Numeric axes stay numeric; label columns and string-valued axes become ordered
categoricals in the grid's order, so groupbys, tables and figures follow the grid file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

from contamination.metrics import METRICS
from sweeps.results import RANGE_COLUMNS
from sweeps.storage import UNREADABLE, Location, StorageError, check_reachable, is_uri, location

RESULTS_ROOT = Path("results")
# Metrics computed here from logged ones: name -> (inputs, function of the frame).
DERIVED = {"ood_minus_id_loss": (("ood_loss", "id_loss"), lambda df: df["ood_loss"] - df["id_loss"]),
           # the share of the ID margin a network keeps OOD (1: none lost)
           "margin_kept": (("ood_margin", "id_margin"), lambda df: df["ood_margin"] / df["id_margin"])}


class AnalysisError(ValueError):
    """A user-caused error (unknown results directory, axis, metric or value): one line."""


@dataclasses.dataclass(frozen=True)
class Results:
    """One results directory: `runs` (a row per run), `curves` (a row per run and logged step), the manifest."""

    location: Location
    runs: pd.DataFrame
    curves: pd.DataFrame
    manifest: dict
    # a row per run and point of its shift ladder (empty where no run measured one)
    shifts: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    @property
    def path(self) -> Path | str:
        """The local directory, or the URI of an object-store prefix."""
        return self.location.local_path() if self.location.local else self.location.uri

    @property
    def name(self) -> str:
        return self.manifest.get("grid") or self.location.name

    @property
    def axes(self) -> dict[str, list]:
        """Grid axis name -> values in grid order (labels for table-valued and range axes)."""
        return {a: _axis_values(a, v) for a, v in self.manifest.get("axes", {}).items()}

    @property
    def metrics(self) -> list[str]:
        """Metric columns present in `runs`: the manifest's, then the derived ones."""
        return metric_columns(self.runs, self.manifest)

    @property
    def n_diverged(self) -> int:
        return int(self.runs["diverged"].sum()) if "diverged" in self.runs else 0


def resolve(name_or_dir: str | Path | Location) -> Location:
    """A URI (gs://, s3://) or an existing directory is used as-is; a bare NAME means results/NAME."""
    if isinstance(name_or_dir, Location) or is_uri(name_or_dir):
        try:
            loc = location(name_or_dir)
            check_reachable(loc)
        except StorageError as e:
            raise AnalysisError(str(e)) from None
        return loc
    p = Path(name_or_dir)
    if p.is_dir():
        return location(p)
    q = RESULTS_ROOT / str(name_or_dir)
    if q.is_dir():
        return location(q)
    known = sorted(d.name for d in RESULTS_ROOT.iterdir() if (d / "runs").is_dir()) if RESULTS_ROOT.is_dir() else []
    looked = str(p) if p == q else f"{p} and {q}"
    raise AnalysisError(f"{name_or_dir}: no such results directory (looked for {looked}); "
                        f"results available in {RESULTS_ROOT}/: {', '.join(known) or '(none)'}")


def load(name_or_dir: str | Path | Location) -> Results:
    """Read the runs and curves tables and the manifest of a results directory (NAME means results/NAME;
    gs://BUCKET/PREFIX and s3://BUCKET/PREFIX read an object store)."""
    loc = resolve(name_or_dir)
    run_names = loc.files("runs", suffix=".parquet")
    if not run_names:
        raise AnalysisError(f"{loc}: no runs/*.parquet here; train the grid first (python -m sweeps run NAME)")
    manifest = read_manifest(loc)
    runs = _read(loc, "runs", run_names)
    committed = set(runs.pop("_file").unique()) if len(runs) else set()
    curves_names = [n for n in loc.files("curves", suffix=".parquet") if n in committed]
    curves = _read(loc, "curves", curves_names).drop(columns="_file") if curves_names else \
        pd.DataFrame({"run_id": [], "step": []})
    shift_names = [n for n in loc.files("shifts", suffix=".parquet") if n in committed]
    shifts = _read(loc, "shifts", shift_names).drop(columns="_file") if shift_names else pd.DataFrame()
    runs, curves, shifts = _typed(runs, manifest), _typed(curves, manifest), _typed(shifts, manifest)
    for table in (curves, shifts):
        if "diverged" in runs and "run_id" in table:
            table["diverged"] = table["run_id"].map(runs.set_index("run_id")["diverged"]).fillna(False).astype(bool)
    return Results(loc, with_derived(runs), with_derived(curves), manifest, shifts)


def read_manifest(loc: Location) -> dict:
    """manifest.json (host 0's), else the first writer's manifest present, else {}; with several
    writers (hosts, shards: `manifest-pK.json`, `manifest-sKofN.json`), the invocations of all,
    in order of their start, each naming its manifest (`writer`)."""
    names = loc.files(prefix="manifest", suffix=".json")
    name = "manifest.json" if "manifest.json" in names else (names[0] if names else None)
    if name is None:
        return {}
    manifest = json.loads(loc.read_text(name))
    if len(names) > 1:
        invocations = [{**inv, "writer": n} for n in names
                       for inv in (manifest if n == name else json.loads(loc.read_text(n))).get("invocations", [])]
        manifest["invocations"] = sorted(invocations, key=lambda inv: str(inv.get("started", "")))
    return manifest


def _read_one(loc: Location, table: str, name: str) -> pd.DataFrame | None:
    try:
        df = loc.read_parquet(table, name).to_pandas()
    except UNREADABLE as e:
        print(f"warning: {loc}: skipping {table}/{name}, not a readable Parquet file ({str(e)[:100]})",
              file=sys.stderr)
        return None
    df["_file"] = name
    return df


def _read(loc: Location, table: str, names: list[str]) -> pd.DataFrame:
    """The files' rows, with a `_file` column; unreadable files are skipped with a warning.
    An object store is read by several threads (each file is a round trip)."""
    workers = 1 if loc.local else 16
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        frames = [f for f in pool.map(lambda n: _read_one(loc, table, n), names) if f is not None]
    if not frames:
        raise AnalysisError(f"{loc}: no readable {table}/*.parquet")
    return pd.concat(frames, ignore_index=True)


def _axis_values(axis: str, values: list) -> list:
    if axis in RANGE_COLUMNS:
        return [range_label(*v) for v in values]
    if axis == "widths":  # the table's label of every hidden width (sweeps.results.widths_label)
        return [",".join(str(w) for w in (v if isinstance(v, list) else [v])) for v in values]
    return list(values)


def range_label(low: float, high: float) -> str:
    return f"[{float(low):g}, {float(high):g}]"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _typed(df: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """Range axes get a label column; string axes become ordered categoricals in grid order."""
    df = df.copy()
    for axis, values in manifest.get("axes", {}).items():
        lo_hi = RANGE_COLUMNS.get(axis)
        if axis not in df and lo_hi and all(c in df for c in lo_hi):
            df[axis] = [range_label(lo, hi) for lo, hi in zip(df[lo_hi[0]], df[lo_hi[1]])]
        if axis not in df:
            continue
        order = _axis_values(axis, values)
        if all(isinstance(v, str) for v in order):
            extra = [v for v in pd.unique(df[axis].astype(str)) if v not in order]
            if extra and all(_is_number(v) for v in order + extra):  # refined labels: in numeric order
                order = sorted(order + extra, key=float)
                extra = []
            df[axis] = pd.Categorical(df[axis].astype(str), categories=order + extra, ordered=True)
    return df


def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add the derived metric columns (e.g. ood_minus_id_loss) whose inputs are present."""
    for name, (inputs, fn) in DERIVED.items():
        if name not in df and all(c in df for c in inputs):
            df[name] = fn(df)
    return df


# Columns of the runs table aggregated like metrics though no curve logs them: the step at which a
# run stopped (the steps to reach a target fit, with `stop = "id_loss"`).
RUN_METRICS = ("stopped_step",)


def metric_columns(df: pd.DataFrame, manifest: dict | None = None) -> list[str]:
    """The metric columns of a table: the manifest's list (or else the classifier's, `METRICS`), then
    the derived ones and RUN_METRICS."""
    names = list((manifest or {}).get("metrics") or METRICS) + list(DERIVED) + list(RUN_METRICS)
    return [m for m in dict.fromkeys(names) if m in df]


def axis_names(results: Results) -> list[str]:
    """Names usable as plot axes: the grid's axes, then the other varying config columns."""
    names = [a for a in results.axes if a in results.runs]
    names += [c for c in results.manifest.get("axis_columns", []) if c not in names and c in results.runs]
    return names


def attach(curves: pd.DataFrame, runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Curves with run-level columns (e.g. lr, width when they are fixed) joined on run_id."""
    missing = [c for c in columns if c not in curves]
    if not missing:
        return curves
    return curves.merge(runs[["run_id", *missing]], on="run_id", how="left")
