"""Validate user-named axes, metrics and values, and pick rows by axis value."""

from __future__ import annotations


import numpy as np
import pandas as pd

from contamination.config import suggest

from .load import AnalysisError


def check_axis(name: str, allowed: list[str], what: str = "axis") -> str:
    if name not in allowed:
        raise AnalysisError(f"unknown {what} '{name}'{suggest(name, allowed)}; allowed: {', '.join(allowed) or '(none)'}")
    return name


def check_metric(name: str, allowed: list[str]) -> str:
    return check_axis(name, allowed, "metric")


def values_of(df: pd.DataFrame, axis: str) -> list:
    """An axis's values in plotting order: categories in grid order, numbers ascending."""
    col = df[axis]
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.dropna().unique())
        return [c for c in col.cat.categories if c in present]
    vals = pd.unique(col.dropna())
    try:
        return sorted(vals.tolist())
    except TypeError:
        return list(vals)


def parse_value(df: pd.DataFrame, axis: str, text: str):
    """The axis value whose printed form (or number) matches `text`; one-line error naming the allowed ones."""
    vals = values_of(df, axis)
    for v in vals:
        if str(v) == text or (isinstance(v, bool) and text.lower() == str(v).lower()):
            return v
    try:
        x = float(text)
        for v in vals:
            if isinstance(v, (int, float, np.integer, np.floating)) and np.isclose(float(v), x, rtol=1e-9):
                return v
    except ValueError:
        pass
    raise AnalysisError(f"{axis}={text}: no such value; allowed: {', '.join(map(str, vals))}")


def select(df: pd.DataFrame, where: dict) -> pd.DataFrame:
    """Rows whose axis columns equal the given values (already parsed by `parse_value`)."""
    mask = pd.Series(True, index=df.index)
    for axis, v in where.items():
        mask &= df[axis] == v
    return df[mask]


def parse_where(df: pd.DataFrame, items: list[str], axes: list[str]) -> dict:
    """`AXIS=VALUE` strings -> {axis: value}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise AnalysisError(f"--where {item}: expected AXIS=VALUE, e.g. activation=relu")
        axis, text = item.split("=", 1)
        check_axis(axis.strip(), axes)
        out[axis.strip()] = parse_value(df, axis.strip(), text.strip())
    return out
