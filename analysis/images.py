"""Pictures of real-data runs: bordered training digits and their OOD counterparts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .style import new_figure

N_SHOWN = 6


def _config(row: pd.Series, **changes):
    from contamination.presets import preset

    classes = [int(c) for c in str(row.get("digit_classes") or "").split(",") if c]
    return preset("digits", border=int(row["border"]), digit_classes=classes, n_classes=int(row["n_classes"]),
                  n_train=int(row["n_train"]), n_test=int(row["n_test"]), seed=int(row["seed"]),
                  bg_train=[row["bg_train_low"], row["bg_train_high"]],
                  bg_ood=[row["bg_ood_low"], row["bg_ood_high"]], **changes)


def examples_figure(runs: pd.DataFrame):
    """For each training border range of the runs (at most three): a row of training images and a
    row of the same test digits ID and OOD (border redrawn), drawn exactly as the runs drew them
    (seed of the first run)."""
    from contamination.data import ood_split
    from contamination.digits import as_image
    from contamination.setup import prepare
    from contamination.spec import static_spec, traced_values

    cols = ["bg_train_low", "bg_train_high", "bg_ood_low", "bg_ood_high"]
    firsts = runs.drop_duplicates(cols).head(3)
    fig = new_figure(1.3 * N_SHOWN + 1.2, 1.45 * 3 * len(firsts) + 0.6)
    axes = fig.subplots(3 * len(firsts), N_SHOWN, squeeze=False)
    for r, (_, row) in enumerate(firsts.iterrows()):
        cfg = _config(row)
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
