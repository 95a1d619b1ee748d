"""Pictures of real-data runs: bordered training digits and their OOD counterparts, and the
first-layer weights that networks trained on them learned."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .style import new_figure

N_SHOWN = 6


def examples_figure(runs: pd.DataFrame):
    """For each training border range of the runs (at most three): a row of training images and a
    row of the same test digits ID and OOD (border redrawn), drawn exactly as the runs drew them
    (seed of the first run)."""
    from contamination.data import ood_split
    from contamination.digits import as_image
    from contamination.setup import prepare
    from contamination.spec import static_spec, traced_values
    from sweeps.results import config_from_row

    cols = ["bg_train_low", "bg_train_high", "bg_ood_low", "bg_ood_high"]
    firsts = runs.drop_duplicates(cols).head(3)
    fig = new_figure(1.3 * N_SHOWN + 1.2, 1.45 * 3 * len(firsts) + 0.6)
    axes = fig.subplots(3 * len(firsts), N_SHOWN, squeeze=False)
    for r, (_, row) in enumerate(firsts.iterrows()):
        cfg = config_from_row(row)
        setup = prepare(static_spec(cfg), traced_values(cfg))
        data = setup.data
        ood = ood_split(data, cfg.core_dim, setup.sizes, np.asarray(cfg.bg_ood, np.float32))
        sets = [("train", data.train.x), ("ID test", data.test.x), ("OOD test", ood.x)]
        for s, (name, x) in enumerate(sets):
            for j in range(N_SHOWN):
                ax = axes[3 * r + s, j]
                ax.imshow(as_image(np.asarray(x[j]), cfg.border), cmap="RdBu_r", vmin=-1.5, vmax=1.5)
                ax.set_xticks([]), ax.set_yticks([])
            axes[3 * r + s, 0].set_ylabel(f"{name}\nborder U{list(cfg.bg_train if s < 2 else cfg.bg_ood)}",
                                          fontsize=8)
    fig.suptitle("Digits framed by a label-independent border: training, ID and OOD test images")
    return fig


N_UNITS = 5  # units drawn per network, besides the unit average


def _pictured(runs: pd.DataFrame, at_most: int = 4) -> pd.DataFrame:
    """One row (the lowest seed, widest width) per activation x training border x teacher, at most `at_most`."""
    df = runs[~runs.get("diverged", pd.Series(False, index=runs.index)).astype(bool)]
    if "model" in df:  # a CNN's filters are 3 x 3, not pictures of the input
        df = df[df["model"].astype(str) == "mlp"]
    if "teacher" in df and "student_probe_ood_acc" in df:  # a baseline network has no student to picture
        df = df[~((df["teacher"].astype(str) == "standard") & df["student_probe_ood_acc"].notna())]
    df = df.sort_values(["seed", "width"], ascending=[True, False], kind="stable")
    keys = [c for c in ("activation", "bg_train_low", "bg_train_high", "teacher") if c in df]
    return df.drop_duplicates(keys).head(at_most)


def weights_figure(runs: pd.DataFrame):
    """First-layer weights as images: for a few networks (`_pictured`), retrained from their table
    row's config exactly as the sweep trained them, the unit average and the N_UNITS units with
    the largest total border weight, each on its own symmetric colour scale (blue negative, red
    positive). A ReLU network that contaminates gives its units a coherent positive frame."""
    from contamination.digits import N_PIXELS, as_image
    from contamination.simulate import trained_first_layer
    from sweeps.results import config_from_row

    rows = _pictured(runs)
    if rows.empty:
        return None
    fig = new_figure(1.3 * (N_UNITS + 1) + 1.6, 1.6 * len(rows) + 0.7)
    axes = fig.subplots(len(rows), N_UNITS + 1, squeeze=False)
    for r, (_, row) in enumerate(rows.iterrows()):
        cfg = config_from_row(row)
        w, final = trained_first_layer(cfg)
        border_sum = w[:, N_PIXELS:].sum(axis=1)
        units = np.argsort(-np.abs(border_sum), kind="stable")[:N_UNITS]
        pictures = [("unit mean", w.mean(axis=0))] + [(f"unit {u}", w[u]) for u in units]
        for j, (name, vec) in enumerate(pictures):
            ax = axes[r, j]
            scale = float(np.abs(vec).max()) or 1.0
            ax.imshow(as_image(vec, cfg.border), cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(name, fontsize=7)
        ood = "ood_acc" if "ood_acc" in final else "student_probe_ood_acc"  # a student: its probe's
        axes[r, 0].set_ylabel(f"{cfg.activation}, width {cfg.width}\nborder U{list(cfg.bg_train)}\n"
                              f"{ood} {final[ood]:.3f}", fontsize=7)
    fig.suptitle("First-layer weights as images (seed %d; each picture on its own colour scale)"
                 % int(rows["seed"].iloc[0]))
    return fig
