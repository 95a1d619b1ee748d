"""Shared figure conventions: the Agg backend, metric names in words, number formats, saving."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window (figures are built as bare `Figure`s anyway)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

LABELS = {
    "train_loss": "training loss",
    "id_loss": "ID loss", "ood_loss": "OOD loss",
    "id_acc": "ID accuracy", "ood_acc": "OOD accuracy",
    "id_margin": "ID margin", "ood_margin": "OOD margin",
    "core_norm": "core projection norm", "bg_norm": "learned background weight norm (net of init)",
    "bg_signed": "signed background projection", "act_asym": "activation asymmetry",
    "bg_mean_proj": "projection on the background mean", "bg_shift_rms": "RMS pre-activation shift OOD (learned weights)",
    "contaminated_frac": "contaminated neurons (share, either sign)",
    "contamination_sign": "mean sign of the contaminated neurons' drift",
    "contamination_ratio": "background / core (learned, mean-weighted)", "bg_grad_balance": "class gradient imbalance (ratio)",
    "bg_grad_net": "net class gradient along u", "bg_grad_total": "total class gradient along u",
    "ood_minus_id_loss": "OOD loss − ID loss", "margin_kept": "OOD margin / ID margin",
    "critical_shift": "critical background shift", "critical_shift_ablated": "critical shift, mean direction ablated",
    "ood_acc_ablated": "OOD accuracy, mean direction ablated", "id_acc_ablated": "ID accuracy, mean direction ablated",
    "ood_loss_ablated": "OOD loss, mean direction ablated", "failure_explained": "OOD failure the ablation undoes",
    **{f"rep_shift_{l}": f"layer {l}: OOD shift / class separation" for l in range(1, 33)},
    **{f"contamination_ratio_{l}": f"layer {l}: background / core (learned)" for l in range(1, 33)},
    "step": "step",
}
# Metrics whose sign matters: a diverging colour map centred on zero when the data cross it.
SIGNED = {"bg_signed", "bg_mean_proj", "ood_minus_id_loss", "id_margin", "ood_margin"}
ACCURACY = {"id_acc", "ood_acc", "id_acc_ablated", "ood_acc_ablated"}
# The range a metric cannot leave: bands and error bars are clipped to it (a t interval of a few
# seeds reaches past accuracy 1 or below loss 0, which no run can).
SHARES = ACCURACY | {"contaminated_frac", "failure_explained", "student_probe_id_acc", "student_probe_ood_acc"}
NONNEGATIVE = {"train_loss", "id_loss", "ood_loss", "ood_loss_ablated", "id_loss_ablated", "core_norm", "bg_norm",
               "bg_shift_rms", "bg_grad_net", "bg_grad_total", "bg_grad_balance", "act_asym", "critical_shift",
               "critical_shift_ablated"}


def bounds(metric: str) -> tuple[float, float]:
    """The interval `metric`'s values lie in (a share: [0, 1]; a loss or norm: [0, inf))."""
    if metric in SHARES:
        return 0.0, 1.0
    return (0.0, np.inf) if metric in NONNEGATIVE else (-np.inf, np.inf)


def clipped_band(mean, half, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The band mean ± half clipped to `bounds(metric)`: (lower, upper)."""
    mean, half = np.asarray(mean, dtype=float), np.asarray(half, dtype=float)
    return np.clip(mean - half, *bounds(metric)), np.clip(mean + half, *bounds(metric))


def clipped_err(mean, half, metric: str) -> np.ndarray:
    """Error bars mean ± half clipped to `bounds(metric)`: matplotlib's (2, n) yerr (NaN half: 0)."""
    mean = np.asarray(mean, dtype=float)
    lo, hi = clipped_band(mean, np.nan_to_num(np.asarray(half, dtype=float)), metric)
    # (a mean a rounding past its bound, e.g. 1 + 2e-16, keeps a zero-length bar on that side)
    return np.maximum(np.stack([mean - lo, hi - mean]), 0.0)


# Metrics drawn on a logarithmic colour scale (they span orders of magnitude).
LOGARITHMIC = {"critical_shift", "critical_shift_ablated"}

matplotlib.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "axes.grid": False, "font.size": 10,
                     "axes.titlesize": 10, "figure.titlesize": 12, "svg.fonttype": "none",
                     "axes.spines.top": False, "axes.spines.right": False})


NOISE_NOTE = "noise-note"  # the gid of `noise_note`'s text (the figure check finds it by it)
# What the note means, for the caption of a figure that has one
NOISE_CAPTION = ("band > range: that panel's widest band is wider than the range its lines span; where bands "
                 "overlap, its lines differ within the runs' spread")


def noise_note(ax, means, halfwidths) -> bool:
    """Say so on the panel (top right) where its widest band or error bar (2 x half-width) is
    wider than the range its lines span (`means`, `halfwidths`: the panel's arrays): where bands
    overlap, the lines' differences are within the runs' spread and a reader must not read a trend
    into them. Returns whether it did."""
    m = np.concatenate([np.asarray(v, dtype=float).ravel() for v in means]) if means else np.array([])
    h = np.concatenate([np.asarray(v, dtype=float).ravel() for v in halfwidths]) if halfwidths else np.array([])
    m, h = m[np.isfinite(m)], h[np.isfinite(h)]
    if not len(m) or not len(h):
        return False
    span, widest = float(m.max() - m.min()), 2.0 * float(h.max())
    if widest <= span:
        return False
    text = ax.text(0.98, 0.97, f"band {fmt(widest)} > range {fmt(span)}", transform=ax.transAxes, ha="right",
                   va="top", fontsize=7, color="0.35", zorder=5,
                   bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none", alpha=0.8))
    text.set_gid(NOISE_NOTE)
    return True


GROUP_LABELS = {("id_loss", "ood_loss"): "loss", ("id_acc", "ood_acc"): "accuracy",
                ("id_margin", "ood_margin"): "margin",
                # core_norm includes the init (~0.2 at step 0 in `toy`); bg_norm is net of it (0 at step 0)
                ("core_norm", "bg_norm"): "projection norm (core: total; background: learned)"}


def group_label(group) -> str:
    """A panel's y label: a common name for known pairs or for metrics of one kind (accuracies,
    losses: the legend tells them apart), else the metric names, wrapped."""
    group = tuple(group)
    if group in GROUP_LABELS:
        return GROUP_LABELS[group]
    for kind in ("accuracy", "loss"):
        if len(group) > 1 and all(m.endswith(("acc", "acc_ablated") if kind == "accuracy" else ("loss", "loss_ablated"))
                                  for m in group):
            return kind
    return wrap(", ".join(short(m) for m in group), 30)


def label(metric: str) -> str:
    """A metric's name in words, with its column name: 'OOD accuracy (ood_acc)'."""
    words = LABELS.get(metric)
    return f"{words} ({metric})" if words and words != metric else metric


def short(metric: str) -> str:
    return LABELS.get(metric, metric)


def fmt(v: float) -> str:
    """A compact number for cell annotations and tables."""
    if v is None or not np.isfinite(v):
        return "–"
    a = abs(v)
    if a == 0:
        return "0"
    if 0.01 <= a < 10:
        return f"{v:.3f}"
    if 10 <= a < 1000:
        return f"{v:.1f}"
    return f"{v:.2g}"


def fmt_value(v) -> str:
    """An axis value as a tick label: numbers as %g, everything else as its string."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (int, float, np.integer, np.floating)):
        return f"{v:g}"
    return str(v)


def wrap(text: str, width: int = 16) -> str:
    """Break a long tick label at commas or spaces into lines of about `width` characters."""
    if len(text) <= width:
        return text
    parts = re.split(r"(?<=[, ])", text)
    lines, cur = [], ""
    for p in parts:
        if cur and len(cur) + len(p) > width:
            lines.append(cur.rstrip())
            cur = ""
        cur += p
    lines.append(cur.rstrip())
    return "\n".join(lines)


def tick_labels(values, width: int = 16) -> list[str]:
    return [wrap(fmt_value(v), width) for v in values]


def is_geometric(values) -> bool:
    """Numeric, at least three, all positive, and a constant ratio between neighbours (e.g. widths 16..512)."""
    try:
        v = np.sort(np.asarray(pd.unique(pd.Series(list(values))), dtype=float))
    except (TypeError, ValueError):
        return False
    if len(v) < 3 or np.any(v <= 0):
        return False
    r = np.diff(np.log(v))
    return bool(np.all(r > 0) and np.allclose(r, r[0], rtol=1e-3))


def wide_positive(values, span: float = 20.0) -> bool:
    """Numeric, all positive and spanning at least `span`x: drawn on a log axis in line plots."""
    try:
        v = np.asarray(list(values), dtype=float)
    except (TypeError, ValueError):
        return False
    return bool(len(v) >= 2 and np.all(v > 0) and v.max() / v.min() >= span)


def plain_log_ticks(ax, values) -> None:
    """Log x axis labelled with plain numbers at 1-2-5 steps (powers of ten over wide ranges), no minor labels."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    decades = np.log10(v.max() / v.min()) if v.size else 0.0
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 1.6 else (1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def axis_label(axis: str, values) -> str:
    return f"{axis} (log scale)" if is_geometric(values) else axis


def text_colour(rgba) -> str:
    """Black on light cells, white on dark ones (perceived luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def save(fig, stem: Path, formats=("png", "svg")) -> list[Path]:
    """Write `stem.FORMAT` for each format; return the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in formats:
        p = stem.with_suffix(f".{f}")
        fig.savefig(p, bbox_inches="tight")
        paths.append(p)
    return paths


def save_as(fig, path: Path) -> Path:
    """Write one file, its format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def new_figure(width: float, height: float) -> Figure:
    """A bare Figure (no pyplot state to leak between calls) with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")
