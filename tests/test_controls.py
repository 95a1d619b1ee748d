"""Issue 26, item 6: controls that change one cause.

- A grid that compares a fixed training set with fresh batches does so at one batch size.
- The effective-robustness baseline trains as the students it is compared with.
- Optimizers are compared at matched ID fit (analysis/matched.py), tested on a synthetic table.
- The core teacher's bias is in units of its units' pre-activation spread (`teacher_bias_unit`).
"""

from __future__ import annotations

import tomllib

import jax
import numpy as np
import pandas as pd
import pytest

from analysis.distill import data_mode
from analysis.matched import matched_rates, matched_runs, matched_table
from contamination.ids import run_id, training_key
from contamination.presets import preset
from contamination.setup import prepare
from contamination.spec import static_spec, traced_values
from sweeps.grid import GRID_DIR, load


def _scales():
    for path in sorted(GRID_DIR.glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        for scale in ["default", *doc.get("scales", {})]:
            yield path.stem, scale


SCALES = list(_scales())
COMPARED_APART = ("online", "batch_size", "seed")  # what a fixed-vs-fresh comparison may change


def _comparisons(name, scale):
    """Groups of a grid's runs that differ only in their data mode (and seed): {rest: {(online, size)}}."""
    groups: dict = {}
    for run in load(name, scale).runs():
        c = run.config
        rest = tuple(sorted((k, str(v)) for k, v in c.to_dict().items() if k not in COMPARED_APART))
        groups.setdefault(rest, set()).add((c.online, c.batch_size or c.n_train))
    return groups


@pytest.mark.parametrize("name,scale", SCALES)
def test_a_grid_comparing_fixed_and_fresh_data_uses_one_batch_size(name, scale):
    """Wherever a grid trains one config both on its fixed set and on fresh batches, every batch size
    of one mode is a batch size of the other (a full batch counts as a batch of n_train), so the
    comparison changes the data and not the batch size (issue 26: at distill_controls' full scale
    the fixed arm took full batches of 1000 against fresh batches of 512)."""
    for modes in _comparisons(name, scale).values():
        fixed = {b for online, b in modes if not online}
        fresh = {b for online, b in modes if online}
        if fixed and fresh:
            assert fixed == fresh, (name, scale, sorted(fixed), sorted(fresh))


def test_fixed_vs_fresh_has_batch_size_as_its_own_axis():
    """The K = 4 over-fitting control: both data modes at each of several batch sizes."""
    for scale in ("default", "full"):
        modes = set().union(*_comparisons("fixed_vs_fresh", scale).values())
        sizes = {b for _, b in modes}
        assert len(sizes) >= 2 and modes == {(o, b) for o in (False, True) for b in sizes}, modes


@pytest.mark.parametrize("students,baseline", [("distill_controls", "distill_baseline")])
def test_the_effective_robustness_baseline_trains_as_its_students(students, baseline):
    """At every scale, each data mode (fresh or fixed, batch size) of the students is a mode the
    baseline's standard networks trained in, on the same data sizes (issue 26: they trained full
    batch on the fixed set while the students saw fresh batches)."""
    for scale in ("default", "reference", "full"):
        s = pd.DataFrame([{**r.config.to_dict()} for r in load(students, scale).runs()])
        b = pd.DataFrame([{**r.config.to_dict()} for r in load(baseline, scale).runs()])
        assert (b["teacher"] == "standard").all()
        data = ["core_dim", "bg_dim", "input_dim", "n_train"]
        want = set(zip(*(s[c] for c in data), data_mode(s)))
        have = set(zip(*(b[c] for c in data), data_mode(b, teacher=True)))
        assert want <= have, (scale, sorted(want - have))


def test_data_mode_reads_the_teachers_batch_mode():
    df = pd.DataFrame({"online": [True, False, False, True], "batch_size": [64, 0, 32, 64],
                       "n_train": [256, 256, 256, 256], "teacher_data": ["student", "student", "student", "full"]})
    assert list(data_mode(df)) == ["fresh 64", "fixed 256", "fixed 32", "fresh 64"]
    assert list(data_mode(df, teacher=True)) == ["fresh 64", "fixed 256", "fixed 32", "fixed 256"]
    # tables from before teacher_data: the teacher trained full batch on the fixed set
    assert list(data_mode(df.drop(columns="teacher_data"), teacher=True)) == ["fixed 256"] * 4


# --- the baseline teacher's training, in JAX --------------------------------------------------------

TINY = dict(core_dim=4, bg_dim=4, input_dim=16, width=8, rep_dim=8, n_train=32, n_test=32, steps=1, log_every=1,
            teacher="standard", teacher_steps=40, teacher_lr=1e-2)


def _teacher(cfg):
    from contamination.distill import TEACHER_STREAM, trained_teacher

    s, t = static_spec(cfg), traced_values(cfg)
    setup = prepare(s, t)
    key = jax.random.fold_in(jax.random.wrap_key_data(t.data_key, impl="threefry2x32"), TEACHER_STREAM)
    teacher, diverged = trained_teacher(key, s, setup.data, setup.sizes, t)
    assert not bool(diverged)
    return np.asarray(teacher.w), np.asarray(teacher.b)


@pytest.mark.parametrize("seed", [100, 101])
def test_the_standard_teacher_trains_in_the_students_batch_mode(seed):
    """`teacher_data = "student"`: batches of the whole fixed set are its full batch (the same
    teacher to float32 rounding), fresh batches give another teacher; `full` ignores the student's
    mode (the first rounds' baseline)."""
    base = preset("distill", **TINY, seed=seed)
    full = _teacher(base.replace(teacher_data="full", online=True, batch_size=16))
    fixed_whole = _teacher(base.replace(teacher_data="student", online=False, batch_size=32))
    fixed_full = _teacher(base.replace(teacher_data="student", online=False, batch_size=0))
    fresh = _teacher(base.replace(teacher_data="student", online=True, batch_size=16))
    np.testing.assert_allclose(fixed_whole[0], full[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fixed_full[0], full[0], rtol=1e-6, atol=1e-7)
    assert np.abs(fresh[0] - full[0]).max() > 1e-2


def test_new_fields_at_their_defaults_keep_ids():
    """teacher_bias_unit and teacher_data at their defaults (the old behaviour) stay out of ids and
    training keys; away from them the run is another run."""
    cfg = preset("toy", experiment="distill", teacher="standard", online=True, batch_size=64)
    explicit = cfg.replace(teacher_bias_unit="absolute", teacher_data="full")
    assert run_id(explicit) == run_id(cfg) and training_key(explicit) == training_key(cfg)
    assert run_id(cfg.replace(teacher_data="student")) != run_id(cfg)
    assert run_id(cfg.replace(teacher_bias_unit="spread")) != run_id(cfg)
    # a classifier does not read them
    toy = preset("toy")
    assert run_id(toy.replace(teacher_data="student")) == run_id(toy)


# --- optimizers at matched ID fit -----------------------------------------------------------------

def _table():
    """Synthetic runs: SGD fits less at each rate, Adam more; two seeds each, one background axis."""
    rows = []
    fits = {("adam", 1e-3): 0.020, ("adam", 2e-3): 0.008, ("adam", 4e-3): 0.004,
            ("sgd", 0.05): 0.030, ("sgd", 0.2): 0.009, ("sgd", 0.4): 0.005}
    for bg in ("mean 0.5", "mean 0"):
        for (opt, lr), fit in fits.items():
            for seed, noise in ((0, 0.9), (1, 1.1)):
                rows.append({"background": bg, "optimizer": opt, "momentum": 0.9, "weight_decay": 0.0, "lr": lr,
                             "seed": seed, "id_loss": fit * noise, "ood_loss": fit * noise * 10,
                             "experiment": "classify", "diverged": False,
                             "training": f"{opt} {lr:g}"})
    return pd.DataFrame(rows)


def test_the_matched_rate_is_the_one_whose_id_loss_reaches_the_target():
    runs = _table()
    sel = matched_rates(runs, "id_loss", 0.01, by=["background"])
    pick = {(r.background, r.optimizer): r.lr for r in sel.itertuples()}
    # the largest seed mean at or under 0.01: Adam 2e-3 (0.008), SGD 0.2 (0.009)
    assert pick == {("mean 0.5", "adam"): 2e-3, ("mean 0.5", "sgd"): 0.2, ("mean 0", "adam"): 2e-3,
                    ("mean 0", "sgd"): 0.2}
    assert sel["reached"].all() and np.allclose(sel["target"], 0.01)
    # a target no rate reaches is said so, not matched
    sel = matched_rates(runs, "id_loss", 0.0045, by=["background"])
    got = {r.optimizer: (r.reached, r.lr) for r in sel.itertuples() if r.background == "mean 0"}
    assert got["adam"] == (True, 4e-3) and got["sgd"][0] is False or not got["sgd"][0]
    # default target: the loosest fit every optimizer reaches (SGD's best, 0.005): Adam 4e-3, SGD 0.4
    sel = matched_rates(runs, "id_loss", by=["background"])
    assert np.allclose(sel["target"], 0.005)
    assert {r.optimizer: r.lr for r in sel.itertuples()} == {"adam": 4e-3, "sgd": 0.4}
    chosen = matched_runs(runs, sel)
    assert len(chosen) == 2 * 2 * 2 and set(chosen["lr"]) == {4e-3, 0.4}


def test_a_diverged_rate_is_not_a_match():
    runs = _table()
    runs.loc[(runs["optimizer"] == "sgd") & (runs["lr"] == 0.4) & (runs["seed"] == 1), "diverged"] = True
    sel = matched_rates(runs, "id_loss", 0.01, by=["background"])
    assert set(sel.loc[sel["optimizer"] == "sgd", "lr"]) == {0.2}
    sel = matched_rates(runs, "id_loss", by=["background"])  # SGD's best is now 0.2's 0.009
    assert np.allclose(sel["target"], 0.009) and set(sel.loc[sel["optimizer"] == "adam", "lr"]) == {2e-3}


def test_the_matched_table_groups_by_the_other_axes_not_by_the_label_of_the_rate():
    table, metric, by = matched_table(_table(), ["background", "training"])
    assert metric == "id_loss" and by == ["background"]
    assert len(table) == 4 and set(table["lr"]) == {4e-3, 0.4}
    assert np.allclose(table["ood_loss"] / table["id_loss"], 10)


# --- teacher_bias in units of the pre-activation spread -------------------------------------------

def _teacher_of(core, core_dim, unit, seed, bias=2.0):
    """The core teacher of a distill config, its pre-activations on the ID training inputs, the
    same draw's absolute biases and its units' spreads."""
    from contamination.distill import TEACHER_STREAM, core_teacher, pre_activation_spread

    cfg = preset("distill", core=core, core_dim=core_dim, bg_dim=core_dim, input_dim=4 * core_dim, n_train=512,
                 seed=seed, teacher_bias=bias, teacher_bias_unit=unit)
    s, t = static_spec(cfg), traced_values(cfg)
    setup = prepare(s, t)
    key = jax.random.fold_in(jax.random.wrap_key_data(t.data_key, impl="threefry2x32"), TEACHER_STREAM)
    train = setup.data.train
    teacher = core_teacher(key, setup.data.M, s.core_dim, setup.sizes.core, s.rep_dim, t.teacher_bias,
                           train=train if unit == "spread" else None)
    absolute = core_teacher(key, setup.data.M, s.core_dim, setup.sizes.core, s.rep_dim, t.teacher_bias)
    pre = np.asarray(train.x @ teacher.w.T + teacher.b)
    return pre, np.asarray(teacher.b), np.asarray(absolute.b), np.asarray(pre_activation_spread(teacher.w, train))


@pytest.mark.parametrize("seed", [100, 101, 102])
def test_teacher_bias_in_spread_units_is_the_absolute_draw_times_each_units_spread(seed):
    _, b, b_abs, spread = _teacher_of("linear", 8, "spread", seed)
    np.testing.assert_allclose(b, b_abs * spread, rtol=1e-5)
    assert spread.min() > 0.1


def _skew(core, core_dim, unit):
    """How decisively the teacher's units are on or off: the mean over units of |share of ID inputs
    where the unit is active - 1/2|, over held-out seeds 100-102."""
    return float(np.mean([np.abs((_teacher_of(core, core_dim, unit, s)[0] > 0).mean(0) - 0.5).mean()
                          for s in (100, 101, 102)]))


def test_teacher_bias_in_spread_units_means_the_same_across_core_dimensions():
    """On the linear core a unit's pre-activation spread grows with core_dim (about 1.5 at 8, 2.7 at
    32), so an absolute bias of 2 switches units off less decisively as the core grows; 2 spreads
    do the same at every size. Measured (seeds 100-102): skew 0.319 (core_dim 4) and 0.164 (32) in
    absolute units, 0.322 and 0.326 in spreads (non-linear core: 0.30 and 0.36 at every size)."""
    absolute = _skew("linear", 4, "absolute"), _skew("linear", 32, "absolute")
    spread = _skew("linear", 4, "spread"), _skew("linear", 32, "spread")
    assert abs(spread[0] - spread[1]) < 0.03, spread
    assert absolute[0] - absolute[1] > 0.1, absolute
