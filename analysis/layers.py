"""Figures for depth and K classes: contamination against depth or the number of classes, and
the OOD shift of every layer's representation relative to its class separation (`rep_shift_l`)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .aggregate import aggregate
from .select import values_of
from .style import NOISE_CAPTION, bounds, clipped_err, fmt_value, new_figure, noise_note, short

# OOD gap, drift along the background mean, share of contaminated neurons, margin kept OOD
# contamination_ratio: the first layer's drift relative to what it learned, so depths and K
# compare on one scale even where the first layer of a deep network barely trains
CONTAMINATION_PANELS = ("ood_minus_id_loss", "bg_mean_proj", "contaminated_frac", "contamination_ratio", "margin_kept")


def rep_shift_columns(df: pd.DataFrame) -> list[str]:
    """rep_shift_1, rep_shift_2, ... present in `df`, by layer."""
    cols = [c for c in df if re.fullmatch(r"rep_shift_\d+", c)]
    return sorted(cols, key=lambda c: int(c.rsplit("_", 1)[1]))


def _hue_values(runs: pd.DataFrame, hue: str | None) -> list:
    return values_of(runs, hue) if hue else [None]


def contamination_figure(runs: pd.DataFrame, x: str, hue: str | None = None, *, averaged=()):
    """The contamination metrics against `x` (depth, n_classes, ...), a line per `hue` value:
    seed mean with 95% CI error bars, pooled over `averaged`."""
    panels = [m for m in CONTAMINATION_PANELS if m in runs]
    table = aggregate(runs, [x] + ([hue] if hue else []), panels)
    xs = values_of(runs, x)
    pos = np.asarray(xs, dtype=float) if pd.api.types.is_numeric_dtype(runs[x]) else np.arange(len(xs))
    fig = new_figure(3.3 * len(panels) + 0.4, 3.3)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    noted = False
    for ax, m in zip(axes, panels):
        drawn, halves = [], []
        for h in _hue_values(runs, hue):
            rows = table if h is None else table[table[hue] == h]
            rows = rows.set_index(x).reindex(xs)
            err = clipped_err(rows[f"{m}_mean"], rows[f"{m}_ci95"], m)
            ax.errorbar(pos, rows[f"{m}_mean"], yerr=err, marker="o", capsize=3,
                        label=None if h is None else fmt_value(h))
            drawn.append(rows[f"{m}_mean"])
            halves.append(err.sum(axis=0) / 2)
        noted |= noise_note(ax, drawn, halves)
        lo, hi = bounds(m)
        if np.isfinite(lo) and np.isfinite(hi):  # a share: its whole range
            ax.set_ylim(lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo))
        ax.set_xticks(pos, [fmt_value(v) for v in xs])
        ax.set_xlabel(x)
        ax.set_ylabel(short(m))
        if m == "margin_kept":
            ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
    if hue:
        axes[0].legend(title=hue, frameon=False)
    n = table["n_runs"]
    fig.suptitle(f"Contamination against {x}\nmean ± 95% CI of {int(n.min())} runs per point"
                 + (f", pooled over {', '.join(averaged)}" if averaged else "")
                 + (f"\n{NOISE_CAPTION}" if noted else ""))
    return fig


def layer_figure(runs: pd.DataFrame, depth: str = "depth", facet: str | None = None, *, averaged=()):
    """rep_shift_l against the layer l, a line per depth, a panel per `facet` value: where along
    the network the background's shift survives (relative to what separates the classes)."""
    cols = rep_shift_columns(runs)
    facets = _hue_values(runs, facet)
    fig = new_figure(3.6 * len(facets) + 0.4, 3.4)
    axes = fig.subplots(1, len(facets), squeeze=False, sharey=True)[0]
    for ax, f in zip(axes, facets):
        sub = runs if f is None else runs[runs[facet] == f]
        table = aggregate(sub, [depth], cols)
        for _, row in table.iterrows():
            L = int(row[depth])
            layers = np.arange(1, L + 1)
            ax.errorbar(layers, [row[f"{c}_mean"] for c in cols[:L]],
                        yerr=[0 if np.isnan(row[f"{c}_ci95"]) else row[f"{c}_ci95"] for c in cols[:L]],
                        marker="o", capsize=3, label=f"depth {L}")
        ax.set_xticks(np.arange(1, len(cols) + 1))
        ax.set_xlabel("hidden layer")
        ax.set_title("" if f is None else f"{facet} = {fmt_value(f)}")
    axes[0].set_ylabel("OOD shift / class separation")
    axes[0].legend(frameon=False)
    fig.suptitle("Each layer's OOD shift relative to its class separation (rep_shift_l)"
                 + (f"\npooled over {', '.join(averaged)}" if averaged else ""))
    return fig
