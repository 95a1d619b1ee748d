"""Convenience entry points: run configs and get plain numpy results back."""

from __future__ import annotations

import functools

import jax
import numpy as np

from .config import Config, log_steps
from . import experiments
from .loop import stop_rule, train_and_log, train_for
from .model import Params
from .numerics import matmul_precision
from .spec import padded_spec, stack_traced, static_spec, traced_values
from .train import compiled_batch_run, compiled_single_run, program_options


def _to_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _one_variant(out: dict) -> dict:
    """Drop the trailing evaluation-variant axis of a run that has one variant."""
    one = {"curves": {k: v[..., 0] for k, v in out["curves"].items()},
           "final": {k: (v if k.startswith("diverged") else v[..., 0]) for k, v in out["final"].items()}}
    if "shifts" in out:  # (..., n_evals, points)
        one["shifts"] = {k: v[..., 0, :] for k, v in out["shifts"].items()}
    return one


def simulate(cfg: Config) -> dict:
    """Train one config; returns {"steps": [...], "curves": {...}, "final": {...}} as numpy."""
    out = _one_variant(_to_numpy(compiled_single_run(static_spec(cfg))(traced_values(cfg))))
    out["steps"] = np.array(log_steps(cfg.steps, cfg.log_every, cfg.log_schedule))
    return out


def simulate_batch(cfgs: list[Config], **pad) -> dict:
    """Train configs in one vmapped program, each padded to the largest sizes of the batch and to
    any larger sizes given in `pad` (e.g. `width=24, input_dim=64`); they must share every other
    static field."""
    spec = padded_spec([static_spec(c) for c in cfgs])
    spec = spec._replace(**{k: max(v, getattr(spec, k)) for k, v in pad.items()})
    out = _one_variant(_to_numpy(compiled_batch_run(spec)(stack_traced(cfgs, depth=spec.depth))))
    out["steps"] = np.array(log_steps(cfgs[0].steps, cfgs[0].log_every, cfgs[0].log_schedule))
    return out


@functools.lru_cache(maxsize=None)
def _compiled_trainer(s):
    """`jit` of one run's training to its last step: (final params, final metrics, diverged)."""

    @functools.partial(jax.jit, compiler_options=dict(program_options(s, 1)) or None)
    @matmul_precision(s.precision)
    def train(traced):
        training = experiments.get(s.experiment).fn("training")(s, traced)
        if s.stop == "steps":
            carry = train_for(training.step, training.carry, s.steps)
            params, diverged = carry.params, carry.diverged
        else:  # the run stopped where the sweep's stopped it
            out = train_and_log(training.step, training.carry, training.measure, s.steps, s.log_every,
                                s.log_schedule, stop_rule(s, traced), experiments.get(s.experiment).fit_metric,
                                training.tracked)
            params, diverged = out["params"], out["final"]["diverged"]
        final = {k: v[0] for k, v in training.measure(params).items()}
        return params, {**final, "diverged": diverged}

    return train


def trained_first_layer(cfg: Config) -> tuple[np.ndarray, dict]:
    """Train one config for its `steps` and return its first layer's weights (width, input_dim),
    one row per hidden unit, with its final metrics (first evaluation variant) and `diverged`:
    the run the sweep trained, weights included (for pictures of what the network learned)."""
    if cfg.model != "mlp":
        raise ValueError(f"trained_first_layer: the first layer of model = {cfg.model!r} is not a matrix of "
                         "input weights")
    params, final = _to_numpy(_compiled_trainer(static_spec(cfg))(traced_values(cfg)))
    # The classifier trains in the (d, m) layout (`model.to_dm`); the distillation student does not.
    w = params.w.T if isinstance(params, Params) else params.w
    return w, final
