"""Issue 14: deeper networks and K classes.

- depth 1 and two classes reproduce the code before them (`tests/data/presets-reference.json`);
- `widths` and `depth` describe the same networks, ids included;
- padded deeper networks (wider layers, more layers, more of every other axis) equal their
  unpadded runs, in float64 to rtol 1e-9 (conftest.IDENTITY); a depth x width grid is one program with `--min-efficiency 0`;
- the science, across seeds: a deep linear network stays uncontaminated while a deep ReLU
  network's first layer contaminates; with K classes and fresh batches a ReLU network loses OOD
  margin while a softmax linear model with biases does not (on a fixed training set the linear
  model loses margin too, by over-fitting: docs/findings-depth-classes.md).
"""

import json
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from contamination import lowering
from contamination.config import ConfigError, from_dict
from contamination.ids import run_id
from contamination.presets import preset
from contamination.simulate import simulate, simulate_batch
from contamination.spec import stack_traced, static_spec
from contamination.train import compiled_batch_run, program_options

from conftest import IDENTITY, identity, small

RTOL, ATOL = IDENTITY["rtol"], IDENTITY["atol"]
REFERENCE = json.loads((pathlib.Path(__file__).parent / "data" / "presets-reference.json").read_text())
SHIPPED = {"toy", "toy_theory", "theory", "distill"}


def _case(i):
    case = REFERENCE["cases"][i]
    plain = case["preset"] in SHIPPED and not set(case["overrides"]) - {"steps", "log_every"}
    return pytest.param(i, id=f"{case['preset']}-{i}", marks=() if plain else pytest.mark.slow)


# Tolerances of the float32 reference curves, which move with the CPU's instruction set (an
# identity of two programs is tested in float64 instead; conftest.IDENTITY):
# - count-valued metrics at their resolution: accuracies within two test samples (2 / n_test),
#   `contaminated_frac` within two neurons (2 / width), `act_asym` (a mean over neurons of gate
#   frequencies) within 1 / n_test: one test sample's gate flipped in every neuron, or a few dozen
#   single flips (the issue that set these measured 1.1e-4 on an Intel Xeon for `toy`, 1e-3 allowed);
# - continuous metrics within ten times the largest difference from the committed curves measured
#   over every case, logged step and instruction set (native AVX-512, AVX2, SSE4_2 on an AMD EPYC:
#   `tests/data/isa-spread.json`, written by `tests/data/measure_isa_spread.py`), and never below 1e-6:
#   ten, for CPUs not measured (the Xeon's act_asym difference was 1.6x our largest).
SPREAD = json.loads((pathlib.Path(__file__).parent / "data" / "isa-spread.json").read_text())["metrics"]
COUNT_ACCURACIES = ("id_acc", "ood_acc", "student_probe_id_acc", "student_probe_ood_acc", "teacher_probe_id_acc",
                    "teacher_probe_ood_acc")


def reference_atol(metric: str, cfg) -> float:
    if metric in COUNT_ACCURACIES:
        return 2.0 / cfg.n_test
    if metric == "contaminated_frac":
        return 2.0 / cfg.width
    if metric == "act_asym":
        return 1.0 / cfg.n_test
    return max(10.0 * SPREAD[metric]["abs"], 1e-6)


# Overrides per preset that give back the preset the reference was written with (the file's `legacy`
# key; tests/data/measure_isa_spread.py applies them too)
LEGACY_PRESET = REFERENCE["legacy"]


@pytest.mark.reference
@pytest.mark.parametrize("i", [_case(i) for i in range(len(REFERENCE["cases"]))])
def test_depth_one_and_two_classes_reproduce_the_code_before_them(i):
    """Every shipped preset (and, under `make test-all`, variants of its choices) gives the curves
    the code of commit 5aca587 gave, every metric, within the float32 tolerance above (the four
    metrics issue 26 redefined: the curves of the commit the file's `redefined` key names)."""
    case = REFERENCE["cases"][i]
    # the distill preset's teacher as at 5aca587 (issue 26 moved the preset to spread units and the
    # student's batch mode; the old behaviour stays reachable by naming it)
    legacy = LEGACY_PRESET.get(case["preset"], {})
    cfg = preset(case["preset"], **{**legacy, **case["overrides"]})
    out = simulate(cfg)["curves"]
    for k, expected in case["curves"].items():
        np.testing.assert_allclose(np.asarray(out[k], float), np.asarray(expected, float), rtol=0,
                                   atol=reference_atol(k, cfg), err_msg=k)


@pytest.mark.reference
def test_the_default_emitters_reproduce_the_reference_too(monkeypatch):
    """The tests compile their small programs with XLA's older CPU emitters (contamination/lowering.py),
    a long sweep's programs keep the default ones: the `toy` case compiled with those gives the
    committed curves too."""
    monkeypatch.setattr(lowering, "LEGACY_EMITTERS_MAX_FLOPS", 0)
    case = REFERENCE["cases"][0]
    cfg = preset(case["preset"], **case["overrides"])
    assert program_options(static_spec(cfg), 1) == ()
    out = simulate(cfg)["curves"]
    for k, expected in case["curves"].items():
        np.testing.assert_allclose(np.asarray(out[k], float), np.asarray(expected, float), rtol=0,
                                   atol=reference_atol(k, cfg), err_msg=k)


@pytest.mark.reference
def test_reference_tolerances_fail_a_changed_run():
    """The tolerances are tight enough to see a real change: the `toy` case with a 1% larger learning
    rate, or one more step logged per block, misses them (a margin of ten over the rounding spread)."""
    case = REFERENCE["cases"][0]
    assert case["preset"] == "toy" and not set(case["overrides"]) - {"steps", "log_every"}
    cfg = preset("toy", **case["overrides"])
    changed = simulate(cfg.replace(lr=cfg.lr * 1.01))["curves"]
    missed = [k for k, expected in case["curves"].items()
              if not np.allclose(np.asarray(changed[k], float), np.asarray(expected, float), rtol=0,
                                 atol=reference_atol(k, cfg))]
    assert {"train_loss", "id_loss", "ood_loss", "core_norm"} <= set(missed), missed


def test_widths_and_depth_describe_the_same_networks():
    assert from_dict({"widths": [64]}) == from_dict({"width": 64})
    two = from_dict({"widths": [32, 32]})
    assert (two.width, two.depth, two.widths, two.hidden_widths) == (32, 2, (), (32, 32))
    assert two == from_dict({"width": 32, "depth": 2})
    mixed = from_dict({"widths": [48, 16, 8]})
    assert (mixed.width, mixed.depth, mixed.hidden_widths) == (48, 3, (48, 16, 8))
    # the default network keeps its id; a deeper one gets its own
    base = preset("toy")
    assert run_id(base.replace(widths=[256])) == run_id(base)
    assert len({run_id(base), run_id(base.replace(depth=2)), run_id(base.replace(n_classes=3))}) == 3
    assert static_spec(mixed).hidden == (16, 8) and static_spec(mixed).depth == 3


def test_a_grid_axis_of_widths_lists_expands_and_labels_its_column(tmp_path):
    from sweeps.grid import load
    from sweeps.results import config_columns

    path = tmp_path / "w.toml"
    path.write_text('preset = "toy"\nseeds = 1\n[axes]\nwidths = [[32], [32, 32], [64, 16]]\n')
    cfgs = [r.config for r in load(str(path)).runs()]
    assert [c.hidden_widths for c in cfgs] == [(32,), (32, 32), (64, 16)]
    assert [config_columns(c)["widths"] for c in cfgs] == ["32", "32,32", "64,16"]
    assert [config_columns(c)["depth"] for c in cfgs] == [1, 2, 2]


@pytest.mark.parametrize("values,field", [
    ({"widths": [16, 0]}, "widths"), ({"widths": "wide"}, "widths"), ({"depth": 0}, "depth"),
    ({"n_classes": 1}, "n_classes"), ({"n_classes": 5, "core_dim": 4}, "core_dim"),
    ({"experiment": "distill", "depth": 2}, "experiment"), ({"experiment": "distill", "n_classes": 3}, "experiment"),
    ({"n_classes": 8, "online": True, "batch_size": 4}, "batch_size"),
])
def test_bad_depth_and_class_settings_are_refused_in_one_line(values, field):
    with pytest.raises(ConfigError, match=f"^{field}") as e:
        from_dict(values)
    assert "\n" not in str(e.value)


# --- exact padding of depth, hidden widths, and K classes ------------------------------

@pytest.mark.slow  # (by default: the grid test below compares a padded depth-2 run with it alone)
@identity
def test_padded_deeper_networks_equal_their_unpadded_runs():
    """Runs of depths 1, 2 and 3 and mixed widths in one program (every layer padded to the widest,
    the shallower runs skipping the extra layers) equal each run alone; layers a run does not have
    measure NaN."""
    base = small("toy", width=16, core_dim=4, bg_dim=4, input_dim=24, n_train=40, n_test=32, steps=30)
    runs = [base.replace(widths=[8, 12], seed=3, n_test=20, input_dim=16), base.replace(width=20, seed=2),
            base.replace(widths=[20, 12, 18], seed=1, lr=0.02)]
    together = simulate_batch(runs)
    for i, cfg in enumerate(runs[:2]):  # (the deepest run padded is the property test below)
        alone = simulate(cfg)["curves"]
        for k, v in alone.items():
            np.testing.assert_allclose(together["curves"][k][i], v, rtol=RTOL, atol=ATOL, err_msg=f"run {i}: {k}")
        for layer in range(cfg.depth + 1, 4):
            assert np.isnan(together["curves"][f"rep_shift_{layer}"][i]).all()
            assert np.isnan(together["curves"][f"contamination_ratio_{layer}"][i]).all()
        assert np.isfinite(together["curves"][f"rep_shift_{cfg.depth}"][i]).all()
        assert np.isfinite(together["curves"][f"contamination_ratio_{cfg.depth}"][i][1:]).all()


@st.composite
def deep_shapes(draw, n_classes):
    core = draw(st.integers(max(1, n_classes if n_classes > 2 else 1), 5))
    bg = draw(st.integers(1, 4))
    depth = draw(st.integers(1, 3))
    return dict(widths=[draw(st.integers(1, 10)) for _ in range(depth)], core_dim=core, bg_dim=bg,
                input_dim=draw(st.integers(core + bg, 14)), n_train=draw(st.integers(n_classes, 18)),
                n_test=draw(st.integers(n_classes, 18)), seed=draw(st.integers(0, 2**31)),
                lr=draw(st.sampled_from([0.01, 0.05])))


SMALL_PAD = dict(width=10, hidden=(10, 10), core_dim=5, bg_dim=4, input_dim=14, n_train=18, n_test=18)
BIG_PAD = dict(width=15, hidden=(15, 15), core_dim=7, bg_dim=6, input_dim=21, n_train=27, n_test=24)


@pytest.mark.parametrize("n_classes,extra", [pytest.param(2, {}, marks=pytest.mark.slow),
                                              (3, {"loss": "hinge", "core": "linear"})])
# derandomize: the same examples every run. A random draw once found (with the code of 2026-11-28,
# start of session 4 too) a 3-class hinge run, widths [10, 3], seed 398, whose id_loss after 3-6
# steps differed by 7.6e-5 (relative) between the two paddings: a sample at the hinge's kink, where
# rounding picks the subgradient (the same runs with the logistic loss agree to the last bit).
@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@identity
def test_padding_amount_does_not_change_a_deep_or_k_class_run(n_classes, extra, data):
    """Property: for random depths (1-3), per-layer widths and sizes, a run padded a little equals
    the run padded a lot (two programs of three layers, each compiled once)."""
    runs = data.draw(st.lists(deep_shapes(n_classes), min_size=3, max_size=3))
    base = small("toy", **extra, n_classes=n_classes, steps=6, log_every=3, core_dim=5, n_train=18, n_test=18)
    cfgs = [small("toy", **extra, n_classes=n_classes, steps=6, log_every=3, **r) for r in runs]
    outs = [compiled_batch_run(static_spec(base)._replace(**pad))(stack_traced(cfgs, depth=3))
            for pad in (SMALL_PAD, BIG_PAD)]
    for k in outs[0]["curves"]:
        np.testing.assert_allclose(np.asarray(outs[0]["curves"][k]), np.asarray(outs[1]["curves"][k]),
                                   rtol=RTOL, atol=ATOL, err_msg=k)


@identity
def test_depth_by_width_grid_is_one_program_with_min_efficiency_0(tmp_path):
    """A grid over depth x width x activation trains as one compiled program, and a run of it equals
    the same run alone."""
    import pandas as pd

    from sweeps.engine import run_grid
    from sweeps.grid import load

    grid_file = tmp_path / "deep.toml"
    grid_file.write_text('preset = "toy_theory"\nseeds = 2\n[fixed]\ncore_dim = 4\nbg_dim = 4\ninput_dim = 16\n'
                         'n_train = 32\nn_test = 32\nsteps = 20\nlog_every = 10\nlr = 0.02\n'
                         '[axes]\ndepth = [1, 2, 3]\nwidth = [8, 16]\nactivation = ["relu", "linear"]\n')
    grid = load(str(grid_file))
    summary = run_grid(grid, tmp_path / "out", min_efficiency=0, progress=False, cache_dir=str(tmp_path / "cache"))
    assert summary.compiles == 1 and summary.done == 24
    runs = pd.read_parquet(tmp_path / "out" / "runs")
    assert len(runs) == 24 and set(runs["padded_width"]) == {16}
    assert set(runs["widths"]) == {"8", "16", "8,8", "16,16", "8,8,8", "16,16,16"}
    deep = next(r.config for r in grid.runs() if r.config.depth == 2 and r.config.width == 8
                and r.config.activation == "relu" and r.config.seed == 1)
    row = runs[runs["run_id"] == run_id(deep)].iloc[0]
    alone = simulate(deep)["final"]
    for k in ("id_loss", "ood_loss", "bg_mean_proj", "rep_shift_2", "contamination_ratio_2"):
        assert row[k] == pytest.approx(float(alone[k]), rel=RTOL, abs=ATOL), k
    assert np.isnan(row["rep_shift_3"]) and np.isnan(row["contamination_ratio_3"])


# --- the science, across seeds ---------------------------------------------------------

SEEDS = range(4)
# The quickstart sizes of test_science.py: 8 + 8 features in d = 64, n = 256, 2000 steps.
SIZES = dict(width=64, core_dim=8, bg_dim=8, input_dim=64, n_train=256, n_test=256, steps=2000, log_every=100)
INIT_MEAN_PROJ = 1 / np.sqrt(3 * 64 * 64)  # bg_mean_proj's spread at init (test_science.py)


def test_deep_linear_network_stays_uncontaminated_and_deep_relu_first_layer_contaminates():
    """toy_theory (hinge, SGD, linear core, frozen output) at depths 2 and 3, in one program.
    Measured (seeds 0-3): ReLU bg_mean_proj 0.14-0.15 (depth 2) and 0.09-0.11 (depth 3), OOD - ID
    loss 0.35-0.46, contaminated share 0.20-0.39; linear: bg_mean_proj within 0.003 of its init,
    OOD - ID loss under 0.01, no contaminated neuron."""
    cfgs = [preset("toy_theory", **SIZES, lr=0.01, depth=d, activation=a, seed=s)
            for a in ("relu", "linear") for d in (2, 3) for s in SEEDS]
    c = simulate_batch(cfgs)["curves"]
    relu, lin = slice(0, 8), slice(8, 16)
    assert (c["id_loss"][:, -1] < 0.05).all()  # every network fits
    assert (c["bg_mean_proj"][relu, -1] > 10 * INIT_MEAN_PROJ).all(), c["bg_mean_proj"][relu, -1]
    assert (np.abs(c["bg_mean_proj"][lin, -1] - c["bg_mean_proj"][lin, 0]) < 3 * INIT_MEAN_PROJ).all()
    assert (c["contaminated_frac"][relu, -1] > 0.1).all() and (c["contaminated_frac"][lin, -1] < 0.02).all()
    gap = c["ood_loss"][:, -1] - c["id_loss"][:, -1]
    assert (gap[relu] > 0.2).all() and (np.abs(gap[lin]) < 0.03).all(), gap
    assert (c["act_asym"][lin, -1] < 1e-6).all()


def _k_class(**kw):
    cfgs = [preset("toy", **{**SIZES, "lr": 1e-3, **kw}, n_classes=4, core="linear", activation=a, seed=s)
            for a in ("relu", "linear") for s in SEEDS]
    c = simulate_batch(cfgs)["curves"]
    return {k: (v[:4, -1], v[4:, -1]) for k, v in c.items()}


def test_k_class_relu_loses_ood_margin_and_a_softmax_linear_model_does_not():
    """Four classes, softmax cross-entropy, AdamW, biases, fresh batches of 64 (the population
    setting). Measured (seeds 0-3): ReLU keeps 0.44-0.51 of its ID margin OOD and drifts 0.16-0.17
    along the background mean; the linear model keeps 0.99-1.01 and stays under 0.015."""
    c = _k_class(online=True, batch_size=64)
    (relu_id, lin_id), (relu_ood, lin_ood) = c["id_margin"], c["ood_margin"]
    assert (c["id_acc"][0] > 0.99).all() and (c["id_acc"][1] > 0.99).all()
    assert (relu_ood / relu_id < 0.7).all(), relu_ood / relu_id
    assert (np.abs(lin_ood / lin_id - 1) < 0.05).all(), lin_ood / lin_id
    relu_bg, lin_bg = c["bg_mean_proj"]
    assert (relu_bg > 0.08).all() and (np.abs(lin_bg) < 0.03).all(), (relu_bg, lin_bg)
    assert (c["act_asym"][1] < 1e-6).all() and (c["act_asym"][0] > 0.2).all()


@pytest.mark.slow
def test_on_a_fixed_training_set_the_k_class_linear_model_loses_margin_too():
    """The control: full batch on the 256 training points, against the fresh batches of 64 above
    (a change of batch mode *and* batch size: grid fixed_vs_fresh separates the two, issue 26).
    Measured (seeds 0-3): the linear model keeps 0.67-0.84 of its margin (ReLU 0.45-0.47) with no
    drift along the background mean; in minibatches of 64 of the same set, 0.86-0.94."""
    c = _k_class()
    (relu_id, lin_id), (relu_ood, lin_ood) = c["id_margin"], c["ood_margin"]
    assert (lin_ood / lin_id < 0.95).all(), lin_ood / lin_id
    assert (relu_ood / relu_id < lin_ood / lin_id).all()
    assert (np.abs(c["bg_mean_proj"][1]) < 0.04).all()
