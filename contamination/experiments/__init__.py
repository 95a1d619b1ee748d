"""The experiment protocol and its registry: every module of this package declares one experiment.

An experiment module defines `EXPERIMENT = Experiment(...)`: its name (the module's), its own
config fields with their metadata (`fields.Field`: `Config`, `spec.Static`, the traced values and
the id rules are derived from them), its validation, its metric names, its training `(static, traced) -> loop.Training` (built on `loop.run_training`'s generic
loop), its cost (`flops(static)`, `memory_bytes(static)`: required, so that the planner never
prices a new experiment as another), its plan text `describe(static)`, the ID fit metric and the
columns a matched comparison reports (`analysis/matched.py`), and its report panels. The registry
imports every module of this package (`pkgutil`), so adding an experiment is adding a module.

A declaration is read while `config.py` builds `Config` (a module imports only what does not
import the config), so the functions that need the simulator are named by dotted paths,
"package.module:function", imported on first use (`resolve`): the training, the cost, the
metric names that depend on the program and the report panels (`analysis/` is never imported by
`contamination/`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Callable, NamedTuple

from ..fields import Field


@functools.lru_cache(maxsize=None)
def resolve(path: str):
    """The object named by "package.module:attribute" (its module imported on first use)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def no_description(static) -> str:
    return ""


def no_extra_steps(static) -> int:
    return 0


def no_rules(cfg) -> None:
    return None


class Experiment(NamedTuple):
    name: str
    # the metric names of its curves and final values, in order (or the dotted path of that tuple)
    metrics: tuple[str, ...] | str
    training: str  # -> (static, traced) -> loop.Training
    flops: str  # -> (static) -> float: floating-point operations of one run (`cost.py`)
    memory_bytes: str  # -> (static) -> int: peak bytes one run holds on a device (`cost.py`)
    # its own config fields (`fields.Field`), which the others do not read (left out of their ids)
    fields: tuple[Field, ...] = ()
    # (cfg) -> None, raising `fields.ConfigError`: its rules on its own runs (`cfg.experiment` is it)
    validate: Callable = no_rules
    # (cfg) -> None: checks of its own fields' values, on every config (wherever they are set)
    check_fields: Callable = no_rules
    # (static) -> the words the plan prints after a bucket's sizes (e.g. a teacher's)
    describe: Callable = no_description
    # (static) -> optimizer steps a run takes besides its own `steps` (e.g. a teacher's training)
    extra_steps: Callable = no_extra_steps
    # -> (static) -> further metric names that depend on the program (e.g. one per hidden layer)
    spec_metrics: str | None = None
    # -> (static) -> the metric names in place of `metrics` for some programs (e.g. another model's)
    metrics_of: str | None = None
    # the ID fit, lower is better (what `stop = "id_loss"` and `analysis/matched.py` match on)
    fit_metric: str = "id_loss"
    # what a comparison at matched fit reports: the fit, then the OOD side (`analysis/matched.py`)
    compared: tuple[str, ...] = ()
    # -> (results, axes) -> report panels: "analysis.MODULE:function", MODULE the experiment's own
    panels: str | None = None

    def fn(self, what: str):
        """One of its functions (`training`, `flops`, ...) or its `metrics`, imported on first use."""
        f = getattr(self, what)
        return resolve(f) if isinstance(f, str) else f

    def metric_names(self, static) -> tuple[str, ...]:
        base = self.fn("metrics_of")(static) if self.metrics_of else self.fn("metrics")
        return base + (self.fn("spec_metrics")(static) if self.spec_metrics else ())

    @property
    def analysis_module(self) -> str | None:
        """The analysis module that may name this experiment (the one its panels live in)."""
        return self.panels.partition(":")[0] if self.panels else None


def _discover() -> dict[str, Experiment]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        exp = importlib.import_module(f"{__name__}.{info.name}").EXPERIMENT
        if exp.name != info.name:
            raise ValueError(f"experiments/{info.name}.py declares an experiment named {exp.name!r}")
        found[exp.name] = exp
    return found


DEFAULT = "classify"  # `Config.experiment`'s default: first in the registry, then the others by name
REGISTRY: dict[str, Experiment] = dict(sorted(_discover().items(), key=lambda kv: kv[0] != DEFAULT))


def ignored_fields(name: str) -> set[str]:
    """Fields experiment `name` does not read: the other experiments' own fields. They cannot
    change its runs, so they stay out of its ids."""
    return {f.name for e in REGISTRY.values() if e.name != name for f in e.fields}


def base_fields(fields):
    """Of `fields`, those every experiment shares (no experiment declares them)."""
    own = {f.name for e in REGISTRY.values() for f in e.fields}
    return [f for f in fields if f.name not in own]


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Experiment:
    """The experiment registered under `name`."""
    return REGISTRY[name]
