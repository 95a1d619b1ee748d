"""Grid files: parse, validate and expand `sweeps/grids/NAME.toml` into run configs.

A grid is a base preset, fields fixed for every run, and axes whose cartesian product
(times the seeds) gives the runs. A `[scales.NAME]` table overrides `seeds`, `fixed` and
individual axes, so one file holds e.g. a CPU-sized default and a `full` accelerator scale.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import tomllib
from pathlib import Path
from typing import Any

from contamination.config import FIELDS, ConfigError, check_field, from_dict, suggest
from contamination.presets import PRESETS, preset

from .runs import Run, RunTable

GRID_DIR = Path(__file__).parent / "grids"
TOP_KEYS = ("description", "preset", "seeds", "fixed", "axes", "headline", "scales")
SCALE_KEYS = ("description", "seeds", "fixed", "axes")
RESERVED_COLUMNS = {"run_id", "config_id", "step", "grid", "scale", "bucket", "chunk", "round"}


class GridError(ValueError):
    """A user-caused grid error: one line naming the file and the key."""


@dataclasses.dataclass(frozen=True)
class Grid:
    name: str
    path: str
    text: str
    scale: str
    description: str
    preset: str
    seeds: tuple[int, ...]
    fixed: dict[str, Any]
    axes: dict[str, list]  # axis name -> values (scalars, or tables of fields)
    # Runs added by `sweeps refine` (rounds >= 1) on top of the axes' product: ordinary runs of the grid.
    extra: tuple = ()
    # The value of some axes the report leads with (axis name -> label or value), e.g. the OOD
    # shift at which the OOD-accuracy phase diagram is drawn first.
    headline: dict = dataclasses.field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def label_axes(self) -> list[str]:
        return [a for a, vals in self.axes.items() if isinstance(vals[0], dict)]

    @property
    def varying_fields(self) -> list[str]:
        """Config fields set by some axis (in axis order)."""
        out: list[str] = []
        for vals in self.axes.values():
            for v in vals:
                for f in (v.keys() if isinstance(v, dict) else []):
                    if f != "label" and f not in out:
                        out.append(f)
        out += [a for a, vals in self.axes.items() if not isinstance(vals[0], dict) and a not in out]
        return out

    @property
    def axis_values(self) -> dict[str, list]:
        """Each axis's values in grid order (labels for table-valued axes), for ordered categoricals."""
        return {a: [label_of(v) if isinstance(v, dict) else v for v in vals] for a, vals in self.axes.items()}

    def runs(self) -> list[Run]:
        """Every run as a `Run` (built on first use; the engine reads `table`, its columns)."""
        return list(self._runs)

    @functools.cached_property
    def _runs(self) -> tuple[Run, ...]:
        return tuple(self.table.runs())

    @functools.cached_property
    def table(self) -> RunTable:
        """The runs as columns: the axes' product (grid order, duplicates dropped), then the
        refined runs (`extra`) that are not grid runs already. Built once: `load` builds it to
        validate, and the engine reuses it."""
        extra = ((r.config, r.labels, r.round, (r.config.seed,)) for r in self.extra)
        return RunTable.build(itertools.chain(points(self), extra))


def label_of(table: dict) -> str:
    """The label of a table-valued axis value: its `label` key, else `k=v` pairs joined by ','."""
    if "label" in table:
        return str(table["label"])
    return ",".join(f"{k}={v}" for k, v in table.items())


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    return GRID_DIR / f"{name_or_path}.toml"


def _err(path: str, key: str, msg: str) -> GridError:
    return GridError(f"{path}: {key}: {msg}")


def _unknown(path: str, where: str, key: str, allowed) -> GridError:
    return _err(path, f"{where}{key}", f"unknown key{suggest(key, allowed)}; allowed: {', '.join(allowed)}")


def _seeds(path: str, key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _err(path, key, f"need at least one seed, got {value}")
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                 for s in value):
        if len(set(value)) != len(value):
            raise _err(path, key, "seeds must be distinct")
        if max(value) >= 2**63:
            raise _err(path, key, f"seed: must be in [0, 2^63), got {max(value)}")
        return tuple(value)
    raise _err(path, key, f"expected a positive integer (count) or a non-empty list of non-negative integers, got {value!r}")


def _check_fields(path: str, where: str, table: dict, allow_label: bool = False) -> None:
    for k in table:
        if allow_label and k == "label":
            continue
        try:
            check_field(k)
        except ConfigError:
            raise _unknown(path, where, k, list(FIELDS)) from None
        if k == "seed":
            raise _err(path, f"{where}{k}", "set seeds with the top-level `seeds` key")


def _check_axes(path: str, where: str, axes: Any) -> None:
    if not isinstance(axes, dict):
        raise _err(path, where.rstrip("."), "expected a table of axes")
    for name, vals in axes.items():
        key = f"{where}{name}"
        if not isinstance(vals, list):
            raise _err(path, key, f"expected a list of values, got {vals!r}")
        if not vals:
            raise _err(path, key, "empty axis: give at least one value")
        tables = [isinstance(v, dict) for v in vals]
        if any(tables) and not all(tables):
            raise _err(path, key, "mix of tables and scalars: use all tables or all scalars")
        if all(tables):
            if name in FIELDS or name in RESERVED_COLUMNS:
                raise _err(path, key, f"a table-valued axis names a label column; '{name}' is taken")
            for v in vals:
                if not v or set(v) == {"label"}:
                    raise _err(path, key, "a table value must set at least one field")
                _check_fields(path, f"{key}.", v, allow_label=True)
            labels = [label_of(v) for v in vals]
            if len(set(labels)) != len(labels):
                raise _err(path, key, "two values have the same label")
        else:
            _check_fields(path, where, {name: None})
            if len(set(map(repr, vals))) != len(vals):
                raise _err(path, key, "repeated value")


def load(name_or_path: str, scale: str | None = None) -> Grid:
    """Read and validate a grid file; every config is built (and checked) here."""
    p = resolve(name_or_path)
    path = str(p)
    if not p.exists():
        known = sorted(q.stem for q in GRID_DIR.glob("*.toml"))
        raise GridError(f"{path}: no such grid file; shipped grids: {', '.join(known)}")
    text = p.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise GridError(f"{path}: malformed TOML: {e}") from None
    for k in doc:
        if k not in TOP_KEYS:
            raise _unknown(path, "", k, TOP_KEYS)
    preset_name = doc.get("preset", "toy")
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise _err(path, "preset", f"unknown preset {preset_name!r}{suggest(preset_name, PRESETS)}; "
                                   f"allowed: {', '.join(PRESETS)}")
    fixed = doc.get("fixed", {})
    if not isinstance(fixed, dict):
        raise _err(path, "fixed", "expected a table of fields")
    _check_fields(path, "fixed.", fixed)
    axes = doc.get("axes", {})
    _check_axes(path, "axes.", axes)
    seeds = _seeds(path, "seeds", doc.get("seeds", 1))
    description = doc.get("description", "")
    scales = doc.get("scales", {})
    if not isinstance(scales, dict):
        raise _err(path, "scales", "expected a table of named scales")
    if scale is not None and scale != "default":
        if scale not in scales:
            raise _err(path, "scales", f"unknown scale {scale!r}; this grid has: default, {', '.join(scales) or '(none)'}")
        over = scales[scale]
        for k in over:
            if k not in SCALE_KEYS:
                raise _unknown(path, f"scales.{scale}.", k, SCALE_KEYS)
        if "fixed" in over:
            _check_fields(path, f"scales.{scale}.fixed.", over["fixed"])
            fixed = {**fixed, **over["fixed"]}
        if "axes" in over:
            _check_axes(path, f"scales.{scale}.axes.", over["axes"])
            axes = {**axes, **over["axes"]}
        if "seeds" in over:
            seeds = _seeds(path, f"scales.{scale}.seeds", over["seeds"])
        description = over.get("description", description)
    for name in axes:
        if name in fixed:
            raise _err(path, f"fixed.{name}", "is also an axis; set it in one place")
    headline = _headline(path, doc.get("headline", {}), axes)
    grid = Grid(name=p.stem, path=path, text=text, scale=scale or "default", description=str(description),
                preset=preset_name, seeds=seeds, fixed=dict(fixed), axes=dict(axes), headline=headline)
    grid.table  # validates every config before any work starts (and caches the runs' columns)
    return grid


def _headline(path: str, headline: Any, axes: dict) -> dict:
    """`headline = {AXIS = VALUE, ...}`: each a grid axis and one of its values (a label for a
    table-valued axis)."""
    if not isinstance(headline, dict):
        raise _err(path, "headline", f"expected a table of axis = value, got {headline!r}")
    for name, value in headline.items():
        if name not in axes:
            raise _unknown(path, "headline.", name, list(axes))
        values = [label_of(v) if isinstance(v, dict) else v for v in axes[name]]
        if value not in values:
            raise _err(path, f"headline.{name}", f"{value!r} is not a value of the axis; allowed: "
                       f"{', '.join(map(str, values))}")
    return dict(headline)


def _combos(grid: Grid):
    names = list(grid.axes)
    for values in itertools.product(*(grid.axes[n] for n in names)):
        fields: dict[str, Any] = {}
        labels: dict[str, str] = {}
        keys: dict[str, str] = {}
        for name, v in zip(names, values):
            if isinstance(v, dict):
                labels[name] = label_of(v)
                for f, fv in v.items():
                    if f != "label":
                        fields[f] = fv
                        keys[f] = f"axes.{name}"
            else:
                fields[name] = v
                keys[name] = f"axes.{name}"
        yield fields, labels, keys


def points(grid: Grid):
    """`(config, labels, round, seeds)` of each point of the axes' product, in grid order (axes
    outermost-first); each config is built and validated once, for all its seeds."""
    base = preset(grid.preset)
    for fields, labels, keys in _combos(grid):
        values = {**grid.fixed, **fields}
        try:
            cfg0 = from_dict(values, base=base)
        except ConfigError as e:
            field = str(e).split(":", 1)[0].split(",")[0].strip()
            where = keys.get(field, f"fixed.{field}" if field in grid.fixed else "fixed")
            raise GridError(f"{grid.path}: {where}: {e}") from None
        yield cfg0, labels, 0, grid.seeds


def expand(grid: Grid) -> list[Run]:
    """All runs of the grid, in grid order (axes outermost-first, then seeds); duplicates dropped."""
    return RunTable.build(points(grid)).runs()
