"""Experiments as plug-ins: the registry from `experiment` names to the modules that define them.

An experiment is one module that defines `EXPERIMENT = Experiment(name, metrics, training)`,
registered below with the config fields only it reads:
`training(static, traced) -> loop.Training` builds one run (its step, initial carry and
measure) from its compile spec and traced values; `loop.run_training` does the rest (optimizer
steps under the divergence guard, the scan, logging). To add one, write the module and name it
here; `config.CHOICES["experiment"]` reads the names from this registry.
"""

from __future__ import annotations

import importlib
from typing import Callable, NamedTuple

class Entry(NamedTuple):
    module: str
    own_fields: tuple[str, ...]  # config fields only this experiment reads (the others ignore them)


REGISTRY = {
    # the network trained on labels (docs/simulator.md)
    "classify": Entry("contamination.classify", ()),
    # a student trained on a teacher's representation (section 5)
    "distill": Entry("contamination.distill", ("rep_dim", "teacher", "teacher_bias", "teacher_steps", "teacher_lr",
                                               "probe_ridge", "teacher_bias_unit", "teacher_data")),
}


def ignored_fields(name: str) -> set[str]:
    """Fields experiment `name` does not read: the other experiments' own fields. They cannot
    change its runs, so they stay out of its ids."""
    own = set(REGISTRY[name].own_fields)
    return {f for e in REGISTRY.values() for f in e.own_fields} - own


class Experiment(NamedTuple):
    name: str
    metrics: tuple[str, ...]  # the metric names of its curves and final values, in order
    training: Callable  # (static, traced) -> loop.Training
    # (static) -> further metric names that depend on the program (e.g. one per hidden layer)
    spec_metrics: Callable | None = None
    # (static) -> the metric names in place of `metrics` for some programs (e.g. another model's)
    metrics_of: Callable | None = None

    def metric_names(self, static) -> tuple[str, ...]:
        base = self.metrics_of(static) if self.metrics_of else self.metrics
        return base + (self.spec_metrics(static) if self.spec_metrics else ())


def get(name: str) -> Experiment:
    """The experiment registered under `name` (its module is imported on first use)."""
    return importlib.import_module(REGISTRY[name].module).EXPERIMENT
