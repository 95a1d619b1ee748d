"""The `classify` experiment: the network trained on the labels (docs/simulator.md, "The model"),
measured by `metrics.evaluate` at every logged step (`contamination/classify.py`)."""

from __future__ import annotations

from . import Experiment


EXPERIMENT = Experiment(
    "classify", "contamination.metrics:METRICS",
    training="contamination.classify:make_training",
    flops="contamination.cost:classifier_flops",
    memory_bytes="contamination.cost:classifier_memory_bytes",
    spec_metrics="contamination.classify:spec_metrics",
    metrics_of="contamination.classify:metrics_of",
    fit_metric="id_loss",
    compared=("id_loss", "ood_loss", "id_acc", "ood_acc", "bg_mean_proj", "bg_shift_rms", "contaminated_frac"),
)
