"""Command line: `python -m analysis report|phase|curves|table|boundary|exponents NAME_OR_DIR [options]`.

NAME means results/NAME; a path to an existing directory, or gs://BUCKET/PREFIX or
s3://BUCKET/PREFIX (an object store, see sweeps/storage.py), is used as-is. User mistakes
(unknown directory, axis, metric or value) are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from sweeps.storage import Location, StorageError, location, staged

from .aggregate import aggregate
from .boundary import boundary_setting, boundary_table
from .curves import PAPER_PANELS, collapse_figure, curves_figure
from .exponents import T1_LEVEL, exponent_parts, exponent_table, summary
from .load import AnalysisError, attach, axis_names, load
from .phase import phase_figure, phase_table
from .report import phase_stem, write_report
from .select import check_axis, check_metric, parse_where, select
from .style import save_as


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description="Aggregate and plot sweep results.")
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("report", help="figures (png + svg), summary.csv and report.md for a results directory")
    sp.add_argument("results", help="NAME (results/NAME), a results directory, or gs://... / s3://...")
    sp.add_argument("--out", default=None, help="write here instead of the results directory")

    sp = sub.add_parser("phase", help="a heatmap of one metric over two axes (faceted over a third)")
    sp.add_argument("results", help="NAME (results/NAME), a results directory, or gs://... / s3://...")
    sp.add_argument("--x", required=True, help="axis across")
    sp.add_argument("--y", required=True, help="axis up")
    sp.add_argument("--metric", default="ood_acc", help="metric to colour by (default ood_acc)")
    sp.add_argument("--facet", default=None, help="a third axis: one panel per value")
    sp.add_argument("--where", action="append", default=[], metavar="AXIS=VALUE",
                    help="keep only runs at this value of an axis (repeatable); other axes are averaged over")
    sp.add_argument("--out", default=None, help="figure file (.png, .svg, .pdf); default "
                    "DIR/figures/phase_METRIC_X_Y.png (+ _by_FACET)")
    sp.add_argument("--csv", default=None, help="also write the aggregated table behind the figure")

    sp = sub.add_parser("curves", help="training curves: seed means with 95%% CI bands against steps")
    sp.add_argument("results", help="NAME (results/NAME), a results directory, or gs://... / s3://...")
    sp.add_argument("--panel", action="append", default=None, metavar="M1,M2",
                    help="metrics of one panel, comma-separated (repeatable; default id_loss,ood_loss and "
                         "core_norm,bg_norm)")
    sp.add_argument("--hue", default=None, help="axis told apart by colour")
    sp.add_argument("--row", default=None, help="axis with one row of panels per value")
    sp.add_argument("--where", action="append", default=[], metavar="AXIS=VALUE", help="as for phase")
    sp.add_argument("--rescale", action="store_true",
                    help="each metric against steps and against lr * step / width (eta t / m), a line per (lr, width)")
    sp.add_argument("--band", choices=("std", "ci95"), default="std",
                    help="shading: ± 1 std over seeds (default) or the 95%% CI of the mean")
    sp.add_argument("--out", default=None, help="figure file; default DIR/figures/curves_<metrics>.png")

    sp = sub.add_parser("boundary", help="print where a metric's seed mean crosses a level (a phase boundary)")
    sp.add_argument("results", help="NAME (results/NAME), a results directory, or gs://... / s3://...")
    sp.add_argument("--metric", default=None, help="metric (default: the one `sweeps refine` used)")
    sp.add_argument("--level", type=float, default=None, help="level (default: the one `sweeps refine` used)")
    sp.add_argument("--axes", default=None, help="comma-separated numeric axes (default: refine's, else every numeric axis)")
    sp.add_argument("--csv", default=None, help="write the table here instead of printing it")

    sp = sub.add_parser("exponents", help="scaling exponents with 95%% intervals over seeds: T0 against d, T1, "
                        "ID and OOD risk against d0, a linear network's background weights against 1/sqrt(d)")
    sp.add_argument("results", help="NAME (results/NAME), a results directory, or gs://... / s3://...")
    sp.add_argument("--t1-level", type=float, default=None,
                    help="the mean-weighted background projection whose crossing is T1 (default 0.25)")
    sp.add_argument("--out", default=None, help="folder for the figures (default DIR/figures)")
    sp.add_argument("--csv", default=None, help="also write the fits (numbers) here")

    sp = sub.add_parser("table", help="print (or --csv write) final metrics aggregated over seeds")
    sp.add_argument("results", help="NAME (results/NAME), a results directory, or gs://... / s3://...")
    sp.add_argument("--by", default=None, help="comma-separated axes to group by (default: every grid axis)")
    sp.add_argument("--metrics", default=None, help="comma-separated metrics (default: all)")
    sp.add_argument("--csv", default=None, help="write the table here instead of printing it")
    return p


def _report(args) -> int:
    res = load(args.results)
    report = write_report(res, args.out)
    figures = location(report).parent / "figures"
    print(f"figures: {figures} ({len(figures.files())} files)")
    print(f"report:  {report}")
    return 0


def _write_figure(fig, out: Location) -> Location:
    """Save one figure (format from the suffix) at a local path or an object-store location."""
    with staged(out.parent) as d:
        save_as(fig, d / out.name)
    return out


def _write_csv(table, where: str) -> None:
    out = location(where)
    with staged(out.parent) as d:
        table.to_csv(d / out.name, index=False)


def _phase(args) -> int:
    res = load(args.results)
    axes = axis_names(res)
    x, y = check_axis(args.x, axes), check_axis(args.y, axes)
    metric = check_metric(args.metric, res.metrics)
    facet = check_axis(args.facet, axes) if args.facet else None
    named = [a for a in (x, y, facet) if a]
    if len(set(named)) != len(named):
        raise AnalysisError(f"--x, --y and --facet must name different axes, got {', '.join(named)}")
    where = parse_where(res.runs, args.where, axes)
    runs = select(res.runs, where)
    grid_axes = [a for a in res.axes if a in runs]
    averaged = [a for a in grid_axes if a not in (*named, *where) and runs[a].nunique() > 1]
    table = phase_table(runs, x, y, metric, facet)
    fig = phase_figure(table, x, y, metric, facet, averaged=averaged, where=where)
    out = location(args.out) if args.out else res.location / "figures" / f"{phase_stem(metric, x, y, facet)}.png"
    print(f"figure: {_write_figure(fig, out)}")
    if args.csv:
        _write_csv(table, args.csv)
        print(f"table:  {args.csv}")
    n_div = int(table["n_diverged"].sum())
    if n_div:
        print(f"note: {n_div} diverged run{'s' if n_div != 1 else ''} excluded from the means")
    return 0


def _curves(args) -> int:
    res = load(args.results)
    axes = axis_names(res)
    metrics = res.metrics
    panels = [[check_metric(m.strip(), metrics) for m in p.split(",") if m.strip()] for p in args.panel] \
        if args.panel else [list(p) for p in PAPER_PANELS]
    hue = check_axis(args.hue, axes) if args.hue else None
    row = check_axis(args.row, axes) if args.row else None
    where = parse_where(res.runs, args.where, axes)
    curves = attach(res.curves, res.runs, [a for a in (hue, row, *where) if a])
    curves = select(curves, where)
    averaged = [a for a in res.axes if a in res.runs and a not in (hue, row, *where) and res.runs[a].nunique() > 1]
    if args.rescale:
        if hue or row:
            raise AnalysisError("--rescale draws one line per (lr, width); drop --hue and --row")
        curves = attach(curves, res.runs, ["lr", "width"])
        averaged = [a for a in averaged if a not in ("lr", "width")]
        fig = collapse_figure(curves, [m for p in panels for m in p], averaged=averaged, band=args.band)
    else:
        fig = curves_figure(curves, panels, hue=hue, row=row, averaged=averaged, band=args.band)
    stem = "curves_" + "_".join(m for p in panels for m in p) + ("_rescaled" if args.rescale else "")
    out = location(args.out) if args.out else res.location / "figures" / f"{stem}.png"
    print(f"figure: {_write_figure(fig, out)}")
    return 0


def _exponents(args) -> int:
    res = load(args.results)
    level = T1_LEVEL if args.t1_level is None else args.t1_level
    if not level > 0:
        raise AnalysisError(f"--t1-level must be positive, got {level:g}")
    parts = exponent_parts(res.runs, res.curves, level)
    if not parts:
        raise AnalysisError(f"{res.name}: no runs that differ only in d or in d0 (three sizes or more, two seeds "
                            "or more, the rest fixed): nothing to fit (sweeps/grids/scaling_exponents.toml has them)")
    folder = location(args.out) if args.out else res.location / "figures"
    for spec, _, fig in parts:
        print(f"figure: {_write_figure(fig, folder / f'exponent_{spec.name}.png')}")
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 80):
        print(f"T1: the step at which the mean-weighted background projection reaches {level:g}; "
              "slopes on log-log axes, 95% intervals over seeds")
        print(summary(parts).drop(columns="paper").to_string(index=False))
    if args.csv:
        fits = [(spec, label, g, f) for spec, mine, _ in parts for label, g, f in mine]
        _write_csv(exponent_table(fits), args.csv)
        print(f"table:  {args.csv}")
    return 0


def _table(args) -> int:
    res = load(args.results)
    axes = axis_names(res)
    by = [check_axis(a.strip(), axes) for a in args.by.split(",") if a.strip()] if args.by is not None \
        else [a for a in res.axes if a in res.runs]
    metrics = [check_metric(m.strip(), res.metrics) for m in args.metrics.split(",")] if args.metrics \
        else res.metrics
    table = aggregate(res.runs, by, metrics)
    if args.csv:
        _write_csv(table, args.csv)
        print(f"table: {args.csv}")
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            print(table.to_string(index=False))
    return 0


def _boundary(args) -> int:
    res = load(args.results)
    axes = [a.strip() for a in args.axes.split(",") if a.strip()] if args.axes else None
    setting = boundary_setting(res, args.metric, args.level, axes)
    if setting is None:
        raise AnalysisError("--metric and --level: this directory was not refined; say which boundary")
    ax, facets, metric, level = setting
    check_metric(metric, res.metrics)
    table = boundary_table(res.runs, ax, facets, metric, level)
    if args.csv:
        _write_csv(table, args.csv)
        print(f"table: {args.csv}")
    elif table.empty:
        print(f"no crossing of {metric} = {level:g} between neighbouring points")
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            print(f"{metric} = {level:g}: {len(table)} crossings (95% interval low..high)")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"report": _report, "phase": _phase, "curves": _curves, "table": _table,
                "boundary": _boundary, "exponents": _exponents}[args.command](args)
    except (AnalysisError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
