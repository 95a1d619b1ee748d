"""Exact padding over every shape axis, and one trained network for several evaluation variants.

A run padded into a program with larger sizes (width, core_dim, bg_dim, input_dim, n_train,
n_test) gives the curves of the same run alone, in float64 to rtol 1e-9 (conftest.IDENTITY):
per-row draws restricted to the true sizes are the unpadded draws, padding carries exact zeros or
masks, and every mean and fan-in uses the true sizes.
"""

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from contamination.presets import preset
from contamination.spec import stack_traced, static_spec
from contamination.simulate import simulate, simulate_batch
from contamination.train import compiled_batch_run

from conftest import IDENTITY, identity, small

RTOL, ATOL = IDENTITY["rtol"], IDENTITY["atol"]


def assert_same(a, b, rtol=RTOL, atol=ATOL):
    for k in b:
        np.testing.assert_allclose(np.asarray(a[k], float), np.asarray(b[k], float), rtol=rtol, atol=atol, err_msg=k)


def row(out, i):
    return {k: v[i] for k, v in out["curves"].items()}


# --- every axis padded at once, against the run alone -------------------------------

@pytest.mark.parametrize("name,extra", [
    # (toy_theory, the linear core with hinge, SGD and a frozen output, is covered below)
    ("toy", {"activation": "sigmoid"}),  # non-linear core, logistic, AdamW, trained output; f(0) != 0
    # (under `make test-all`; by default the property tests below cover these choices)
    pytest.param("theory", {"batch_size": 8}, marks=pytest.mark.slow),  # online batches, no biases, N(0, 1/d) init
    pytest.param("toy", {"batch_size": 16, "optimizer": "adam", "activation": "gelu"},
                 marks=pytest.mark.slow),  # minibatches: n_train static
])
@identity
def test_every_axis_padded_equals_alone(name, extra):
    """A small run padded on every axis at once, beside a larger one, equals the small run alone.
    (That the amount of padding does not matter, for random sizes, is the property test below.)"""
    a = small(name, **extra, width=16, core_dim=4, bg_dim=4, input_dim=32, n_train=64, n_test=64, seed=0)
    b = small(name, **extra, width=7, core_dim=3, bg_dim=2, input_dim=13, n_train=64, n_test=30, seed=5, lr=0.02)
    pad = dict(width=24, core_dim=6, bg_dim=5, input_dim=40, n_test=80)
    if not extra.get("batch_size") or name == "theory":
        pad["n_train"] = 70  # padded where the training set is used whole (or only measured)
    batch = simulate_batch([a, b], **pad)
    assert_same(row(batch, 1), simulate(b)["curves"])


@pytest.mark.parametrize("teacher", ["standard", pytest.param("trained", marks=pytest.mark.slow)])
@identity
def test_teacher_steps_padded_equals_alone(teacher):
    """A distillation run whose teacher trains for fewer steps than the program's: the steps past
    its own leave the teacher as it was, so it equals the run alone (and the step count matters:
    the same run with the program's step count differs)."""
    short = small("distill", teacher=teacher, rep_dim=8, teacher_steps=7, steps=20, log_every=10, seed=3)
    batch = simulate_batch([short.replace(teacher_steps=30), short])
    assert_same(row(batch, 1), simulate(short)["curves"])
    assert not np.allclose(row(batch, 0)["teacher_core_norm"], row(batch, 1)["teacher_core_norm"], rtol=1e-3)


# --- random shapes: a run's numbers do not depend on how much it is padded -----------

SMALL_PAD = dict(width=12, core_dim=4, bg_dim=4, input_dim=16, n_train=20, n_test=20)
BIG_PAD = dict(width=17, core_dim=6, bg_dim=5, input_dim=23, n_train=29, n_test=26)


@st.composite
def shapes(draw):
    core, bg = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return dict(width=draw(st.integers(1, 12)), core_dim=core, bg_dim=bg,
                input_dim=draw(st.integers(core + bg, 16)), n_train=draw(st.integers(2, 20)),
                n_test=draw(st.integers(2, 20)), seed=draw(st.integers(0, 2**31)),
                lr=draw(st.sampled_from([0.01, 0.05])))


def programs(name, **extra):
    base = small(name, **extra, steps=6, log_every=3)
    return [compiled_batch_run(static_spec(base)._replace(**pad)) for pad in (SMALL_PAD, BIG_PAD)]


@pytest.mark.parametrize("name,extra", [("toy_theory", {}),
                                        pytest.param("toy", {"activation": "tanh"}, marks=pytest.mark.slow),
                                        ("theory", {"batch_size": 4})])
@settings(max_examples=12, deadline=None, derandomize=True,  # the same examples every run (test_depth_classes.py)
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(shapes(), min_size=3, max_size=3))
@identity
def test_padding_amount_does_not_change_a_run(name, extra, runs):
    """Property: for random true sizes, a run padded a little equals the run padded a lot (two
    programs, each compiled once). With the test above (padded == alone) this is exactness."""
    cfgs = [small(name, **extra, steps=6, log_every=3, **r) for r in runs]
    traced = stack_traced(cfgs)
    little, lots = (program(traced) for program in programs(name, **extra))
    for k in little["curves"]:
        np.testing.assert_allclose(np.asarray(little["curves"][k]), np.asarray(lots["curves"][k]),
                                   rtol=RTOL, atol=ATOL, err_msg=k)
        # NaN where the loss has no gradient at all, or a layer does not separate the classes (e.g. a
        # dead width-1 ReLU); contamination_ratio is NaN at step 0 (nothing learned yet) and
        # contamination_sign where no neuron counts
        values = np.asarray(lots["curves"][k])
        if k.startswith("contamination_ratio"):
            values = values[:, 1:]
        if k not in ("bg_grad_balance", "contamination_sign") and not k.startswith("rep_shift"):
            assert np.isfinite(values).all(), k


@identity
def test_padded_entries_are_exact_zeros():
    """Padded inputs, dictionary entries and weights are zero, before and after training."""
    from contamination.classify import make_training
    from contamination.setup import prepare

    cfg = small("toy", width=5, core_dim=2, bg_dim=3, input_dim=9, n_train=10, n_test=12)
    s = static_spec(cfg)._replace(width=8, core_dim=4, bg_dim=4, input_dim=16, n_train=16, n_test=16)
    traced = stack_traced([cfg])
    one = jax.tree_util.tree_map(lambda v: v[0], traced)
    setup = prepare(s, one)
    M, train = np.asarray(setup.data.M), setup.data.train
    assert not M[2:4].any() and not M[7:].any() and not M[:, 9:].any()
    np.testing.assert_allclose(M[[0, 1, 4, 5, 6], :9] @ M[[0, 1, 4, 5, 6], :9].T, np.eye(5), atol=1e-12)
    assert not np.asarray(train.x)[10:].any() and not np.asarray(train.x)[:, 9:].any()
    assert np.asarray(train.y)[10:].tolist() == [0.0] * 6 and float(np.asarray(train.mask).sum()) == 10
    step, carry = make_training(s, one)[:2]
    carry = jax.lax.scan(step, carry, None, length=5)[0]
    w = np.asarray(carry.params.w).T  # training layout (d, m) -> (m, d)
    assert not w[5:].any() and not w[:, 9:].any() and w[:5, :9].all()


# --- train once, evaluate many ----------------------------------------------------

@pytest.mark.parametrize("name,extra", [
    ("toy", {}),
    # (under `make test-all`; by default test_distill.py checks padded distill runs)
    pytest.param("distill", {"rep_dim": 8, "teacher": "trained", "teacher_steps": 10}, marks=pytest.mark.slow),
])
@identity
def test_evaluation_variants_equal_separate_runs(name, extra):
    """Runs that differ only in bg_ood (and probe_ridge) share one trained network: each variant's
    metrics equal the run trained alone."""
    base = small(name, **extra, seed=4)
    variants = [base, base.replace(bg_ood=[-0.5, 0.5]), base.replace(bg_ood=[-2.0, -1.0])]
    if name == "distill":
        variants.append(base.replace(probe_ridge=0.3, bg_ood=[0.0, 1.0]))
    out = compiled_batch_run(static_spec(base, n_evals=len(variants)))(stack_traced([variants]))
    for e, cfg in enumerate(variants):
        alone = simulate(cfg)["curves"]
        assert_same({k: np.asarray(v)[0, :, e] for k, v in out["curves"].items()}, alone)
    ood = np.asarray(out["curves"]["ood_acc" if name == "toy" else "student_probe_ood_acc"])[0, -1]
    assert len(set(ood.round(6))) > 1  # the variants do differ


def test_traced_values_refuse_runs_of_different_networks():
    a = preset("toy")
    with pytest.raises(ValueError, match="EVAL_ONLY_FIELDS"):
        stack_traced([[a, a.replace(lr=0.5)]])
