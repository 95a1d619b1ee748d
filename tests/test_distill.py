"""Representation distillation, simulated (PAPER.md section 5): the claims at reduced sizes, 4 seeds.

Sizes (issue 12's): d_core = d_bg = 16 in d = 128, student width 256, rep_dim 64, core teacher
(biases 3 N(0,1)), Adam at lr 2e-3 for 3000 steps (twice the preset's lr, so the student fits
ID in time), on **fresh batches** of 512 ID inputs each step (the preset's population setting;
n = 512 points for the probes). Background mean 0.5 ([0, 1] -> OOD [-1, 0]) against mean 0 at
the same OOD shift ([-0.5, 0.5] -> [-1.5, -0.5]). The fixed-set rows (full batch on n = 512)
are the over-fitting control. `python -m sweeps run distill_controls --scale reference` makes
the table in docs/distillation.md. The default suite's students (FAST) are half as wide (128)
on fresh batches of 256, a quarter of the compute; the measured values in the comments are
theirs, over seeds 0-7 (the tests use 0-3).
"""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from contamination.config import ConfigError
from contamination.ids import run_id, config_id
from contamination.presets import preset
from contamination.simulate import simulate, simulate_batch
from conftest import IDENTITY, identity, small

SEEDS = range(4)
SIZES = dict(width=256, core_dim=16, bg_dim=16, input_dim=128, n_train=512, n_test=512, steps=3000,
             log_every=1000, lr=2e-3, online=True, batch_size=512)
FIXED = dict(online=False, batch_size=0)
ZERO_MEAN = dict(bg_train=[-0.5, 0.5], bg_ood=[-1.5, -0.5])  # the same OOD shift (-1) as [0, 1] -> [-1, 0]


# Every claim of the default suite holds here over seeds 0-7, with the margins in the comments
# (at SIZES: ID error 0.0015-0.0029, ratio 336-1140x, contaminated share 0.31-0.48, seeds 0-7).
FAST = dict(SIZES, width=128, batch_size=256)


def run(seeds=SEEDS, sizes=FAST, **kw):
    cfgs = [preset("distill", **{**sizes, **kw}, seed=s) for s in seeds]
    return simulate_batch(cfgs)["curves"]


@pytest.fixture(scope="module")
def relu():
    return run(activation="relu", core="nonlinear")


@pytest.fixture(scope="module")
def linear():
    return run(activation="linear", core="nonlinear")


@pytest.fixture(scope="module")
def zero_mean():
    return run(activation="relu", core="nonlinear", **ZERO_MEAN)


def last(curves, k):
    return curves[k][:, -1]


def ratio(curves):
    return last(curves, "student_rep_err_ood") / last(curves, "student_rep_err_id")


def test_distill_preset_trains_on_fresh_batches():
    cfg = preset("distill")
    assert cfg.online and cfg.batch_size > 0


def test_background_mean_contaminates_the_relu_student(relu):
    """Fresh data, background mean 0.5: the student fits the teacher ID and not OOD."""
    id_err, ood_err = last(relu, "student_rep_err_id"), last(relu, "student_rep_err_ood")
    assert (id_err < 0.01).all(), id_err  # measured 0.0047-0.0083
    assert (ratio(relu) >= 50).all(), (id_err, ood_err)  # measured 116-298x


def test_relu_student_probe_loses_ood_teacher_does_not(relu):
    """The probe's OOD accuracy varies a lot across seeds (0.50-0.91 in seeds 0-7; mean 0.83 in
    seeds 0-3 against the teacher's 0.98, 0.70 against 0.87 in seeds 0-7), so it is tested on its
    mean; the teacher cannot see the background and keeps its probe."""
    t_id, t_ood = last(relu, "teacher_probe_id_acc"), last(relu, "teacher_probe_ood_acc")
    s_id, s_ood = last(relu, "student_probe_id_acc"), last(relu, "student_probe_ood_acc")
    np.testing.assert_array_equal(t_ood, t_id)  # on the paired OOD set its representation is unchanged
    assert (t_ood >= 0.95).all(), t_ood  # measured 0.97-0.99 (seeds 0-3; 0.947 at seed 5)
    assert (s_id > 0.9).all(), s_id  # the student's probe matches the teacher's ID (measured 0.96-0.99)
    assert s_ood.mean() < t_ood.mean() - 0.1, (s_ood, t_ood)


def test_zero_mean_background_at_the_same_shift_does_not_contaminate(zero_mean):
    """Fresh data, zero-mean background moved by the same OOD shift: nothing to learn."""
    assert (ratio(zero_mean) <= 3).all(), ratio(zero_mean)  # measured 1.03-1.14
    assert (last(zero_mean, "student_probe_ood_acc") >= 0.9).all()  # measured 0.97-0.99
    assert (np.abs(last(zero_mean, "bg_mean_proj")) < 0.02).all()


@pytest.mark.slow
def test_fixed_set_zero_mean_is_over_fitting_not_contamination():
    """On a fixed set of n = 512 the zero-mean row fails OOD too (issue 12's table: OOD error
    2.5, probe 0.52), but through background weights of no consistent sign: a large `bg_norm`
    with `bg_mean_proj` ~ 0. Fresh data remove it (the test above)."""
    fixed = run(seeds=range(2), sizes=SIZES, activation="relu", core="nonlinear", **ZERO_MEAN, **FIXED)
    fresh = run(seeds=range(2), sizes=SIZES, activation="relu", core="nonlinear", **ZERO_MEAN)
    assert (last(fixed, "student_rep_err_ood") > 10 * last(fresh, "student_rep_err_ood")).all()
    assert (last(fixed, "bg_norm") > 3 * last(fresh, "bg_norm")).all()  # incoherent background weights
    assert (np.abs(last(fixed, "bg_mean_proj")) < 0.05).all()  # ... along no mean direction


def test_student_background_weights_grow_teacher_has_none(relu):
    assert (last(relu, "bg_mean_proj") > 0.05).all()  # coherent: along the background mean (measured 0.22-0.29)
    assert (relu["contaminated_frac"][:, -1] > 0.3).all()  # measured 0.41-0.55
    assert (relu["core_norm"][:, -1] > 3 * relu["core_norm"][:, 0]).all()  # measured 6.3-7.6x
    assert (np.abs(relu["teacher_bg_norm"]) < 1e-4).all()
    assert (relu["teacher_core_norm"] > 1.0).all()


def test_linear_student_control(relu, linear):
    """A linear student cannot fit the ReLU teacher, but with fresh data its OOD error equals
    its ID error (no contamination, no over-fitting)."""
    id_err, ood_err = last(linear, "student_rep_err_id"), last(linear, "student_rep_err_ood")
    assert (id_err > 0.05).all(), id_err  # measured 0.075-0.12
    assert (ood_err < 1.5 * id_err).all(), (id_err, ood_err)  # measured at most 1.006x
    assert (ratio(relu) > 20 * ood_err / id_err).all()  # measured 5.8-15x that
    assert (np.abs(last(linear, "bg_mean_proj")) < 0.2 * last(relu, "bg_mean_proj")).all()
    # a linear map of the inputs cannot separate the radius-coded classes: its probe is at chance
    assert (np.abs(last(linear, "student_probe_id_acc") - 0.5) < 0.1).all()


@pytest.mark.slow
def test_linear_teacher_is_a_control_that_fits():
    """`teacher = "linear"` on a linear core: the linear student represents it exactly, its probe
    reads the labels OOD as the teacher's does, while a ReLU student of the same teacher is
    contaminated (so the linear student controls the probe as well as the error ratio)."""
    kw = dict(seeds=range(2), sizes=SIZES, teacher="linear", core="linear")
    lin, rel = run(activation="linear", **kw), run(activation="relu", **kw)
    assert (last(lin, "student_rep_err_ood") < 0.01).all(), last(lin, "student_rep_err_ood")
    assert (last(lin, "student_probe_ood_acc") >= last(lin, "teacher_probe_ood_acc") - 0.02).all()
    assert (last(lin, "teacher_probe_ood_acc") > 0.95).all()
    assert (last(rel, "student_rep_err_ood") > 10 * last(lin, "student_rep_err_ood") + 0.05).all()
    assert (last(rel, "student_probe_ood_acc") < last(lin, "student_probe_ood_acc")).all()


def test_standard_teacher_sees_the_background():
    """`teacher = "standard"` (the effective-robustness baseline): trained on the whole input, it
    learns background weights, and its probe loses accuracy OOD where the trained teacher's does not."""
    cfgs = [preset("distill", **{**SIZES, "steps": 1, "log_every": 1, "teacher": "standard", "teacher_steps": 300},
                   seed=s) for s in (0, 1)]
    c = simulate_batch(cfgs)["curves"]
    assert (c["teacher_probe_id_acc"] > 0.9).all(), c["teacher_probe_id_acc"]
    assert (c["teacher_bg_norm"] > 0.05).all(), c["teacher_bg_norm"]
    assert (c["teacher_probe_ood_acc"] < c["teacher_probe_id_acc"]).all()


@identity
def test_padded_distill_equals_unpadded():
    """Padding is exact for the student and the trained teacher: masked neurons (sigmoid(0) != 0),
    true fan-in, per-row draws, every size padded (width, features, input dimension, samples). (The
    engine test below covers a width-padded ReLU student with the core teacher.)"""
    cfgs = [small("distill", width=w, activation="sigmoid", teacher="trained", teacher_steps=20, rep_dim=8, seed=w,
                  core_dim=c, input_dim=d, n_train=n, n_test=n)
            for w, c, d, n in ((5, 3, 20, 50), (16, 4, 32, 64))]
    padded = simulate_batch(cfgs, width=24, core_dim=6, bg_dim=5, input_dim=40, n_train=70, n_test=72)
    for i, cfg in list(enumerate(cfgs))[:1]:  # the smaller one, padded on every axis
        alone = simulate(cfg)
        for k, v in alone["curves"].items():
            np.testing.assert_allclose(padded["curves"][k][i], v, **IDENTITY, err_msg=k)
        assert not alone["final"]["diverged"]


def test_classify_ids_and_outputs_unchanged_by_distill_fields():
    base = preset("toy")
    other = preset("toy", rep_dim=7, teacher="trained", teacher_bias=0.5, probe_ridge=0.1)
    assert run_id(base) == run_id(other) and config_id(base) == config_id(other)
    assert run_id(preset("distill")) != run_id(preset("distill", rep_dim=7))


@pytest.mark.parametrize("field,value,needle", [
    ("experiment", "regress", "experiment: unknown value 'regress'; allowed: classify, distill"),
    ("teacher", "clip", "teacher: unknown value 'clip'; allowed: core, trained, linear, standard"),
    ("rep_dim", 0, "rep_dim: must be a positive integer"),
    ("teacher_steps", -1, "teacher_steps: must be a positive integer"),
    ("teacher_bias", -1.0, "teacher_bias: must be >= 0"),
    ("probe_ridge", 0.0, "probe_ridge: must be > 0"),
])
def test_bad_distill_fields_refused(field, value, needle):
    with pytest.raises(ConfigError) as e:
        preset("distill", **{field: value})
    assert needle in str(e.value) and "\n" not in str(e.value)


# 200 teacher steps: enough for the trained teacher's probe to read the labels at these sizes (float64,
# seeds 0-7, core_dim 4 and 6: ID probe accuracy 0.91-1.00; after 20 steps, 0.64-0.92)
TINY_TEACHER_STEPS = 200
TINY_FIXED = dict(bg_dim=4, input_dim=32, n_train=64, n_test=64, rep_dim=8, teacher_steps=TINY_TEACHER_STEPS,
                  steps=30, log_every=10)
TINY_GRID = """
description = "tiny distill grid"
preset = "distill"
seeds = 2

[fixed]
""" + "".join(f"{k} = {v}\n" for k, v in TINY_FIXED.items()) + """

[axes]
width = [8, 12]
teacher = ["core", "trained"]
core_dim = [4, 6]
"""

COLUMNS = ("student_rep_err_id", "student_rep_err_ood", "teacher_probe_id_acc", "teacher_probe_ood_acc",
           "student_probe_id_acc", "student_probe_ood_acc", "bg_norm", "bg_signed", "core_norm", "teacher_bg_norm")


@pytest.fixture(scope="module")
def engine_out(tmp_path_factory):
    """A tiny distill grid through the real engine, in float64 (its rows are compared with runs alone)."""
    from contamination.numerics import float64
    from sweeps.engine import run_grid
    from sweeps.grid import load

    tmp = tmp_path_factory.mktemp("distill")
    path = tmp / "tiny_distill.toml"
    path.write_text(TINY_GRID)
    out = tmp / "out"
    with float64():
        summary = run_grid(load(str(path)), out, progress=False)
    return out, summary


# One run of the grid, alone: the single-run command's, in float64 (the engine's row must equal it).
ALONE = dict(TINY_FIXED, width=8, teacher="core", core_dim=4, seed=0)


@pytest.fixture(scope="module")
def single_run_json():
    """`python -m contamination.run --x64` on ALONE: what the command prints, parsed."""
    cmd = [sys.executable, "-m", "contamination.run", "--preset", "distill", "--x64"]
    for k, v in ALONE.items():
        cmd += ["--set", f"{k}={v}"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def test_single_run_command_prints_distill_json(single_run_json):
    res = single_run_json
    assert res["config"]["experiment"] == "distill" and res["dtype"] == "float64"
    assert preset("distill", **ALONE).to_dict() == res["config"]
    for k in COLUMNS + ("diverged",):
        assert k in res["final"], k


@identity
def test_engine_runs_a_distill_grid(engine_out, single_run_json):
    out, summary = engine_out
    assert summary.done == 16
    runs, curves = pd.read_parquet(out / "runs"), pd.read_parquet(out / "curves")
    assert len(runs) == 16 and runs["run_id"].is_unique
    assert len(curves) == 16 * 4 and set(curves["step"]) == {0, 10, 20, 30}
    for c in COLUMNS:
        assert c in runs and c in curves, c
        assert np.isfinite(runs[c]).all(), c
    assert set(runs["teacher"]) == {"core", "trained"} and (runs["experiment"] == "distill").all()
    assert not runs["diverged"].any()
    # The engine's rows are the single-run results; width 8 was padded into the width-12 program.
    assert set(runs["padded_width"]) == {12}
    r = runs[runs["run_id"] == run_id(preset("distill", **ALONE))].iloc[0]
    assert (r["width"], r["teacher"], r["core_dim"], r["seed"]) == (8, "core", 4, 0)
    alone = single_run_json["final"]  # the run alone, computed by the single-run command
    for c in COLUMNS:
        np.testing.assert_allclose(r[c], alone[c], **IDENTITY, err_msg=c)


def test_trained_teacher_cannot_see_background(engine_out):
    """`teacher = "trained"`: trained on labels from the core coordinates only (the tiny grid's
    trained teachers, float64: two widths, two core sizes, seeds 0-1). Its probe reads the labels
    (measured over seeds 0-7 at these sizes: 0.91-1.00 ID) exactly as well OOD."""
    out, _ = engine_out
    runs = pd.read_parquet(out / "runs")
    t = runs[runs["teacher"] == "trained"]
    assert len(t) == 8
    assert (t["teacher_probe_id_acc"] > 0.9).all(), t["teacher_probe_id_acc"]
    np.testing.assert_array_equal(t["teacher_probe_ood_acc"], t["teacher_probe_id_acc"])
    assert (np.abs(t["teacher_bg_norm"]) < 1e-4).all()


def test_distill_figures_and_report(engine_out):
    import re

    from analysis import load, write_report
    from analysis.distill import effective_robustness_figure, ood_gap_phase_figure

    out, _ = engine_out
    runs = pd.read_parquet(out / "runs")
    fig = effective_robustness_figure(runs, facet="teacher")
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    fig = ood_gap_phase_figure(runs, facet="teacher")
    assert "pooled over" not in fig._suptitle.get_text()
    ood_gap_phase_figure(runs, metric="student_rep_err_ood", facet=None)
    report = write_report(load(str(out)))
    text = report.read_text()
    for stem in ("effective_robustness", "phase_student_ood_gap"):
        png = out / "figures" / f"{stem}.png"
        assert png.exists() and png.stat().st_size > 0 and f"figures/{stem}.png" in text
    assert "student_probe_ood_acc" in text  # the headline table shows the distill metrics
    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (report.parent / link).exists(), link


@pytest.mark.slow
def test_preset_sizes_relu_vs_linear():
    """The preset untouched but for width (256) and activation: PAPER.md section 5's quick check.
    Fresh batches (the preset since results version 3), seeds 0-2: ReLU student ID error
    0.003-0.006, OOD error 0.96-1.20 (the fixed-set preset's 2.5 +- 1.2 was partly over-fitting)."""
    def at(**kw):
        return simulate_batch([preset("distill", width=256, log_every=5000, seed=s, **kw) for s in range(3)])["final"]

    r, lin = at(), at(activation="linear")
    assert (r["student_rep_err_id"] < 0.035).all() and (r["student_rep_err_ood"] > 0.5).all()
    assert (r["student_rep_err_ood"] > 50 * r["student_rep_err_id"]).all()
    assert (r["student_probe_ood_acc"] < r["teacher_probe_ood_acc"] - 0.05).all()
    assert (lin["student_rep_err_ood"] < 1.5 * lin["student_rep_err_id"]).all()


def summary(curves: dict) -> dict:
    return {k: f"{np.mean(v[:, -1]):.4g} ± {np.std(v[:, -1]):.2g} (min {np.min(v[:, -1]):.4g}, "
               f"max {np.max(v[:, -1]):.4g}; at step 0: {np.mean(v[:, 0]):.3g})" for k, v in curves.items()}


if __name__ == "__main__":
    # `python tests/test_distill.py`: the numbers behind the tests; `... preset`: at the preset's sizes.
    at_preset = sys.argv[1:] == ["preset"]
    for name, act in (("relu student", "relu"), ("linear student", "linear")):
        if at_preset:
            cfgs = [preset("distill", width=256, activation=act, log_every=5000, seed=s) for s in range(3)]
            curves = simulate_batch(cfgs)["curves"]
        else:
            curves = run(core="nonlinear", activation=act)
        print(name, json.dumps(summary(curves), indent=1, ensure_ascii=False))
