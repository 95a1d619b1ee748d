"""Analysis of sweep results: load the Parquet tables, aggregate over seeds, draw phase
diagrams and training curves, and write a report (`python -m analysis report NAME`)."""

from .aggregate import aggregate, t_halfwidth
from .curves import collapse_figure, collapse_score, curve_table, curves_figure
from .load import AnalysisError, Results, attach, load
from .phase import line_figure, phase_figure, phase_table
from .report import build_figures, headline_table, write_report

__all__ = ["AnalysisError", "Results", "aggregate", "attach", "build_figures", "collapse_figure", "collapse_score",
           "curve_table", "curves_figure", "headline_table", "line_figure", "load", "phase_figure", "phase_table",
           "t_halfwidth", "write_report"]
