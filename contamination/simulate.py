"""Convenience entry points: run configs and get plain numpy results back."""

from __future__ import annotations

import jax
import numpy as np

from .config import Config, log_steps, stack_traced, static_spec, traced_values
from .train import compiled_batch_run, compiled_single_run


def _to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def simulate(cfg: Config) -> dict:
    """Train one config; returns {"steps": [...], "curves": {...}, "final": {...}} as numpy."""
    out = _to_numpy(compiled_single_run(static_spec(cfg))(traced_values(cfg)))
    out["steps"] = np.array(log_steps(cfg.steps, cfg.log_every))
    return out


def simulate_batch(cfgs: list[Config], width: int | None = None) -> dict:
    """Train configs sharing one static spec (widths padded to `width`) in one vmapped program."""
    specs = {static_spec(c, width or max(c.width for c in cfgs)) for c in cfgs}
    if len(specs) != 1:
        raise ValueError(f"configs do not share one static spec: {specs}")
    out = _to_numpy(compiled_batch_run(specs.pop())(stack_traced(cfgs)))
    out["steps"] = np.array(log_steps(cfgs[0].steps, cfgs[0].log_every))
    return out
