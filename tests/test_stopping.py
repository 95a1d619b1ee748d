"""Stopping on matched fit or on convergence (`stop`, `target_id_loss`, `stop_tol`, `stop_window`;
docs/interventions.md#stopping-at-matched-fit), and the `stopped_step` and `drift_trend` columns.

Identities in float64 (conftest.IDENTITY): in one padded, vmapped program whose runs stop at
different logged steps, each run equals the run alone trained for its `stopped_step` steps (final
metrics, critical shift included) and the fixed-step run up to its stop, and repeats its values at
the stop after it; a run that never meets its target equals the fixed-step run. `converged` stops
at the first logged point where the relative change over the window is within the tolerance,
computed here from the fixed-step curves, and not before. Ending early is measured, not asserted
(benchmarks/stopping.py, BENCHMARKS.md): here every run of a chunk stops before its last step.
"""

import functools

import numpy as np
import pytest

from contamination.config import ConfigError, from_dict, log_steps
from contamination.ids import config_id, run_id, training_key
from contamination.presets import preset
from contamination.simulate import simulate, simulate_batch
from contamination.spec import TRACED_FIELDS, static_spec

from conftest import IDENTITY, identity, small

STEPS, EVERY = 65, 10  # a short last block (5 steps) after the loop's blocks of 10


def runs(**kw):
    """Three runs of different widths (padded into one program) and seeds, fitting gradually:
    ID losses 0.71 -> 0.12-0.21 over 60 steps (float64)."""
    return [small("toy", core="linear", lr=0.003, steps=STEPS, log_every=EVERY, seed=s, width=w, **kw)
            for s, w in ((0, 16), (1, 9), (2, 12))]


def first_met(curves: dict, names, tol: float, window: int) -> int:
    """The first logged index at which every metric of `names` changed by at most `tol` of its size
    over `window` points (the `converged` rule, in NumPy), else the last index."""
    n = len(curves[names[0]])
    for i in range(window, n):
        if all(abs(curves[k][i] - curves[k][i - window]) <= tol * max(abs(curves[k][i]), abs(curves[k][i - window]))
               for k in names):
            return i
    return n - 1


def first_below(values, target) -> int:
    return int(np.flatnonzero(np.asarray(values) <= target)[0])


def slope_per_1000(values, steps, stop_index, window):
    lo = max(0, stop_index - window)
    return np.polyfit(np.asarray(steps[lo:stop_index + 1], float) / 1000.0, values[lo:stop_index + 1], 1)[0]


def assert_stopped_run(stopped, fixed, i, steps):
    """Run i of the stopped batch equals the fixed-step batch's run i up to its stop and repeats
    its values at the stop after it."""
    at = list(steps).index(int(stopped["final"]["stopped_step"][i]))
    for k, v in fixed["curves"].items():
        got = stopped["curves"][k][i]
        np.testing.assert_allclose(got[:at + 1], v[i][:at + 1], **IDENTITY, err_msg=k)
        np.testing.assert_array_equal(got[at:], np.full(len(got) - at, got[at]), err_msg=k)
    return at


# --- configuration -------------------------------------------------------------------------------

def test_stop_fields_at_default_change_no_id_and_unread_numbers_are_canonical():
    base = preset("toy_theory", width=64, seed=3)
    same = base.replace(stop="steps", target_id_loss=0.1, stop_tol=0.01, stop_window=5)
    assert (run_id(same), config_id(same), training_key(same)) == (run_id(base), config_id(base), training_key(base))
    # a number the mode does not read is stored at its default: the same run, the same id
    assert base.replace(target_id_loss=0.3) == base and base.replace(stop_tol=0.5) == base
    matched = base.replace(stop="id_loss", target_id_loss=0.3)
    assert matched.target_id_loss == 0.3 and matched.replace(stop_tol=0.5) == matched
    assert base.replace(stop="converged", stop_tol=0.5).stop_tol == 0.5
    ids = {run_id(c) for c in (base, matched, matched.replace(target_id_loss=0.2), base.replace(stop="converged"),
                               base.replace(stop_window=3))}
    assert len(ids) == 5
    # fixed steps and the stopping rules compile to two programs, the rule and its numbers traced
    assert static_spec(matched).stop == "rule" and static_spec(base).stop == "steps"
    assert {"target_id_loss", "stop_tol", "stop_window"} <= set(TRACED_FIELDS)
    assert static_spec(matched.replace(target_id_loss=0.2)) == static_spec(matched) == \
        static_spec(base.replace(stop="converged", stop_tol=0.5))


@pytest.mark.parametrize("values, words", [
    (dict(stop="early"), "stop"),
    (dict(stop="id_loss", target_id_loss=0.0), "target_id_loss"),
    (dict(stop="converged", stop_tol=-0.1), "stop_tol"),
    (dict(stop_window=0), "stop_window"),
    (dict(stop="converged", steps=100, log_every=50, stop_window=3), "stop_window"),
])
def test_stop_fields_are_validated(values, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(values)


# --- identities (float64) ------------------------------------------------------------------------

@functools.cache
def fixed_runs():
    """The three runs trained for all their steps (stop = "steps"); called under float64 only."""
    return simulate_batch(runs())


@pytest.fixture
def fixed64(x64):
    return fixed_runs()


@identity
def test_a_run_stopped_at_matched_fit_equals_the_run_alone_at_its_stopped_step(fixed64):
    """Runs stopping at steps 30 and 50 and one that never meets its target share a padded program;
    each equals the fixed-step run up to its stop, then repeats its values; its final metrics, the
    critical shift and `drift_trend` included, equal the run alone trained for `stopped_step` steps."""
    cfgs = [c.replace(stop="id_loss", target_id_loss=t) for c, t in zip(runs(), (0.5, 0.3, 0.1))]
    out = simulate_batch(cfgs)
    steps = log_steps(STEPS, EVERY)
    stopped = [int(s) for s in out["final"]["stopped_step"]]
    assert stopped == [30, 50, STEPS], stopped  # the third never reaches 0.1 (0.12 at step 60)
    for i, cfg in enumerate(cfgs):
        at = assert_stopped_run(out, fixed64, i, steps)
        id_loss = fixed64["curves"]["id_loss"][i]
        assert id_loss[at] <= cfg.target_id_loss and (at == len(steps) - 1 or (id_loss[:at] > cfg.target_id_loss).all())
        np.testing.assert_allclose(out["final"]["drift_trend"][i],
                                   slope_per_1000(fixed64["curves"]["bg_mean_proj"][i], steps, at, cfg.stop_window),
                                   **IDENTITY)
    # the never-stopped run is the fixed-step run, the loop's last short block included
    for k, v in fixed64["final"].items():
        np.testing.assert_allclose(out["final"][k][2], v[2], **IDENTITY, err_msg=k)
    alone = simulate(runs()[0].replace(steps=stopped[0]))  # widest run, padded nowhere else
    for k, v in alone["final"].items():
        if k != "drift_trend":  # its window ends at the stop in both, but the alone run's points are its own
            np.testing.assert_allclose(out["final"][k][0], v, **IDENTITY, err_msg=k)


@identity
def test_a_chunk_whose_runs_all_meet_their_target_stops_every_run_early(fixed64):
    """The same program with targets every run meets: every run stops before its last step (the loop
    ends when the last one does: BENCHMARKS.md measures the time), each still equal to the
    fixed-step run up to its stop."""
    cfgs = [c.replace(stop="id_loss", target_id_loss=t) for c, t in zip(runs(), (0.5, 0.3, 0.25))]
    out = simulate_batch(cfgs)
    assert (out["final"]["stopped_step"] < STEPS).all(), out["final"]["stopped_step"]
    for i in range(3):
        assert_stopped_run(out, fixed64, i, log_steps(STEPS, EVERY))


@identity
def test_converged_stops_at_the_first_point_within_tolerance_and_not_before(fixed64):
    tols = (0.4, 0.6, 0.3)
    cfgs = [c.replace(stop="converged", stop_tol=t, stop_window=w) for c, t, w in zip(runs(), tols, (1, 2, 1))]
    out = simulate_batch(cfgs)
    steps = log_steps(STEPS, EVERY)
    expected = []
    for i, cfg in enumerate(cfgs):
        curves = {k: fixed64["curves"][k][i] for k in ("train_loss", "bg_mean_proj")}
        expected.append(steps[first_met(curves, list(curves), cfg.stop_tol, cfg.stop_window)])
        assert_stopped_run(out, fixed64, i, steps)
    assert [int(s) for s in out["final"]["stopped_step"]] == expected
    assert min(expected) < STEPS  # at least one run stopped on convergence


@identity
def test_fixed_steps_drift_trend_is_the_slope_over_the_last_window(fixed64):
    steps = log_steps(STEPS, EVERY)
    for i in range(3):
        assert fixed64["final"]["stopped_step"][i] == STEPS
        np.testing.assert_allclose(fixed64["final"]["drift_trend"][i],
                                   slope_per_1000(fixed64["curves"]["bg_mean_proj"][i], steps, len(steps) - 1, 5),
                                   **IDENTITY)


@pytest.mark.slow  # 55 s: the geometric schedule's loop of uneven blocks (the linear one above)
@identity
def test_geometric_schedule_stops_as_the_linear_one():
    base = runs(log_schedule="geometric")
    fixed = simulate_batch(base)
    steps = log_steps(STEPS, EVERY, "geometric")  # 0, 1, 2, 4, 8, 16, 32, 65
    loss = fixed["curves"]["id_loss"]
    # met at logged points 5 and 6 (steps 16 and 32); the third never
    targets = [float(np.mean(loss[0, 4:6])), float(np.mean(loss[1, 5:7])), 0.5 * float(loss[2, -1])]
    out = simulate_batch([c.replace(stop="id_loss", target_id_loss=t) for c, t in zip(base, targets)])
    assert [assert_stopped_run(out, fixed, i, steps) for i in range(3)] == [5, 6, len(steps) - 1]
    alone = simulate(base[0].replace(steps=int(out["final"]["stopped_step"][0])))
    for k in ("id_loss", "ood_acc", "bg_mean_proj", "critical_shift", "failure_explained"):
        np.testing.assert_allclose(out["final"][k][0], alone["final"][k], **IDENTITY, err_msg=k)


@pytest.mark.slow  # 100 s on the shared 2-core CPU: the student's loop stops on its ID representation error
@identity
def test_distillation_student_stops_at_its_target_fit():
    cfgs = [small("distill", width=w, rep_dim=8, seed=s, steps=60, log_every=10, lr=0.01) for s, w in ((0, 16), (1, 12))]
    fixed = simulate_batch(cfgs)
    err = fixed["curves"]["student_rep_err_id"]
    targets = [float(np.mean(err[i, 2:4])) for i in range(2)]  # met by logged point 3
    out = simulate_batch([c.replace(stop="id_loss", target_id_loss=t) for c, t in zip(cfgs, targets)])
    steps = log_steps(60, 10)
    for i in range(2):
        at = assert_stopped_run(out, fixed, i, steps)
        assert at == first_below(err[i], targets[i]) < len(steps) - 1
    alone = simulate(cfgs[0].replace(steps=int(out["final"]["stopped_step"][0])))
    for k, v in alone["final"].items():
        if k != "drift_trend":
            np.testing.assert_allclose(out["final"][k][0], v, **IDENTITY, err_msg=k)


@pytest.mark.slow  # 40 s: the CNN on a CPU runs its networks one after another (`lax.map`)
@identity
def test_digits_cnn_stops_at_its_target_fit():
    cfgs = [preset("digits", model="cnn", digit_classes=[3, 8], n_classes=2, n_train=250, n_test=100, steps=40,
                   log_every=10, width=w, seed=s) for s, w in ((0, 4), (1, 6))]
    fixed = simulate_batch(cfgs)
    loss = fixed["curves"]["id_loss"]
    targets = [float(np.mean(loss[i, 1:3])) for i in range(2)]  # met by logged point 2
    out = simulate_batch([c.replace(stop="id_loss", target_id_loss=t) for c, t in zip(cfgs, targets)])
    for i in range(2):
        assert assert_stopped_run(out, fixed, i, log_steps(40, 10)) == first_below(loss[i], targets[i]) < 4


def primitives(jaxpr) -> list[str]:
    """The primitives of a jaxpr, those of its loops' and calls' bodies included."""
    out = []
    for eqn in jaxpr.eqns:
        out.append(eqn.primitive.name)
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += primitives(inner)
    return out


@pytest.mark.parametrize("mode", ["steps", "rule"])
@pytest.mark.parametrize("schedule", ["linear", "geometric"])
def test_the_loop_holds_one_copy_of_measure_and_step(mode, schedule):
    """A program compiles each copy of the metrics and of the step in it: the loop holds one of each
    (step 0's measurement and a short last block inside the one loop: STEPS leaves one), and still
    measures at every logged step, after the steps before it. `measure` is marked by a `sin`,
    `step` by a `cos`."""
    import jax
    import jax.numpy as jnp

    from contamination.loop import Carry, StopRule, train_and_log

    def measure(params):
        return {"train_loss": params, "seen": params + 0.0 * jnp.sin(params)}

    def step(carry, _):
        return carry._replace(params=carry.params + 1.0 + 0.0 * jnp.cos(carry.params)), None

    carry = Carry(jnp.float32(0.0), (), jnp.int32(0), jnp.bool_(False), jnp.int32(-1))
    rule = StopRule("rule", 0, -1.0, 0.0, 2) if mode == "rule" else StopRule()  # a target never met

    def run(c):
        return train_and_log(step, c, measure, STEPS, EVERY, schedule, rule, "train_loss", ("train_loss",))

    names = primitives(jax.make_jaxpr(run)(carry).jaxpr)
    assert (names.count("sin"), names.count("cos")) == (1, 1)
    out = jax.jit(run)(carry)
    np.testing.assert_array_equal(out["curves"]["seen"], log_steps(STEPS, EVERY, schedule))
    assert float(out["params"]) == STEPS and int(out["final"]["stopped_step"]) == STEPS
