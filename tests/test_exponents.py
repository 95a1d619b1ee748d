"""Scaling exponents (analysis/exponents.py): the fits on synthetic power laws, the time scales read
from curves, and the shipped scaling_exponents grid at a tiny scale through the real command."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import load
from analysis.__main__ import main
from analysis.exponents import SPECS, crossing_step, half_rise_step, loglog_fit, mean_weighted_bg, value_at
from analysis.report import build_figures
from sweeps.engine import run_grid
from sweeps.grid import load as load_grid

from test_analysis import check_figures

REPO = Path(__file__).resolve().parents[1]
X = np.geomspace(4, 64, 5)


def power_law(rng, slope: float, noise: float, seeds: int, c: float = 3.0, seed_offset: float = 0.0):
    """y = c x^slope times lognormal noise per point (and a lognormal factor per seed), on X."""
    x = np.tile(X, seeds)
    s = np.repeat(np.arange(seeds), len(X))
    y = c * x ** slope * np.exp(rng.normal(0.0, noise, len(x)) + rng.normal(0.0, seed_offset, seeds)[s])
    return x, y, s


def test_the_interval_covers_the_true_slope_at_its_level():
    """Over 300 synthetic families (4 seeds x 5 sizes, 20% lognormal noise and a factor per seed),
    the t interval over the seeds' slopes holds the true slope about 95% of the time (binomial sd
    1.3%), and each fit's slope lies inside its own interval."""
    rng = np.random.default_rng(0)
    hits = []
    for rep in range(300):
        f = loglog_fit(*power_law(rng, -0.7, 0.2, 4, seed_offset=0.3), n_boot=100, rng=rep)
        assert f.low < f.slope < f.high and f.n_seeds == 4 and f.n_x == 5 and f.n_points == 20
        hits.append(f.low <= -0.7 <= f.high)
    assert 0.90 <= np.mean(hits) <= 0.985, np.mean(hits)


def test_a_wrong_slope_is_outside_at_low_noise():
    """At 2% noise the interval holds the slope and leaves out slopes 0.05 away; the level is the
    geometric mean of y over the family."""
    rng = np.random.default_rng(1)
    for a in (-1.0, -0.5, 0.0, 1.0):
        x, y, s = power_law(rng, a, 0.02, 4)
        f = loglog_fit(x, y, s)
        assert f.low < a < f.high, (a, f)
        assert not f.low < a - 0.05 < f.high and not f.low < a + 0.05 < f.high, (a, f)
        assert f.boot_low < f.slope < f.boot_high
        assert f.level == pytest.approx(np.exp(np.mean(np.log(y))), rel=1e-9)
        assert abs(f.intercept - np.log(3.0)) < 0.05


def test_noise_widens_the_interval_and_bad_points_are_counted():
    rng = np.random.default_rng(2)
    narrow = loglog_fit(*power_law(rng, -1.0, 0.02, 4))
    wide = loglog_fit(*power_law(rng, -1.0, 0.3, 4))
    assert wide.high - wide.low > 5 * (narrow.high - narrow.low)
    x, y, s = power_law(rng, -1.0, 0.02, 4)
    y[[0, 7]] = [0.0, np.nan]
    f = loglog_fit(x, y, s)
    assert f.n_dropped == 2 and f.n_points == 18 and f.low < -1.0 < f.high
    one = loglog_fit(X, 3.0 / X, np.zeros(len(X)))
    assert one.slope == pytest.approx(-1.0) and math.isnan(one.low) and one.n_seeds == 1


def test_crossings_are_read_between_logged_points():
    """A curve 1 - exp(-t / tau) logged on a geometric schedule crosses 1/2 at tau ln 2 (to the
    log-step interpolation's accuracy), and half its rise from 0.2 to 0.9 where it reaches 0.55."""
    steps = np.unique(np.round(np.geomspace(1, 5000, 120)))
    steps = np.concatenate([[0], steps])
    tau = 150.0
    v = 1 - np.exp(-steps / tau)
    assert crossing_step(steps, v, 0.5) == pytest.approx(tau * math.log(2), rel=0.01)
    w = 0.2 + 0.7 * v
    assert half_rise_step(steps, w) == pytest.approx(tau * math.log(2), rel=0.01)
    assert math.isnan(crossing_step(steps, v, 1.5))  # never reached
    assert math.isnan(crossing_step(steps, v + 1.0, 0.5))  # starts above
    coarse = np.array([0, 500, 1000, 1500])
    assert math.isnan(crossing_step(coarse, 1 - np.exp(-coarse / tau), 0.5))  # in the first interval
    assert math.isnan(half_rise_step(steps, np.full(len(steps), 0.3)))  # no rise
    law = 2.0 / np.sqrt(np.maximum(steps, 1.0))  # a power law: log-log interpolation is exact
    assert value_at(steps, law, 400.0) == pytest.approx(0.1, rel=1e-9)
    assert math.isnan(value_at(steps, v, 2 * steps[-1])) and math.isnan(value_at(steps, v, math.nan))


def test_the_mean_weighted_projection_scales_the_unit_one():
    df = pd.DataFrame({"bg_train_low": [0.0, -0.5], "bg_train_high": [1.0, 0.5], "bg_dim": [16, 4],
                       "bg_mean_proj": [0.2, 0.3]})
    assert mean_weighted_bg(df).tolist() == pytest.approx([0.5 * 4 * 0.2, 0.0])


@pytest.fixture(scope="module")
def tiny_exponents(tmp_path_factory):
    """The shipped scaling_exponents grid at a tiny scale: 2 seeds, width 32 (its time scales are
    linear in m: a quarter of the steps), 400 steps logged 20 times, 256 test points, one compiled
    program."""
    text = (REPO / "sweeps" / "grids" / "scaling_exponents.toml").read_text()
    for old in ("seeds = 4\n", "width = 128\n", "steps = 1500\n", "log_every = 50\n"):
        assert text.count(old) == 1, old
    text = (text.replace("seeds = 4\n", "seeds = 2\n")
            .replace("width = 128\n", "width = 32\nn_train = 256\nn_test = 256\n")
            .replace("steps = 1500\n", "steps = 400\n").replace("log_every = 50\n", "log_every = 20\n"))
    base = tmp_path_factory.mktemp("exponents")
    (base / "scaling_exponents.toml").write_text(text)
    run_grid(load_grid(str(base / "scaling_exponents.toml")), base / "results", progress=False, min_efficiency=0.0)
    return base / "results"


def test_the_command_reports_t1_in_d0_with_an_interval(tiny_exponents, tmp_path):
    """`python -m analysis exponents` on the grid: T1's exponent in d0 with a finite interval around
    it, every fit of the grid present, and a figure per fit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    csv = tmp_path / "fits.csv"
    r = subprocess.run([sys.executable, "-m", "analysis", "exponents", str(tiny_exponents), "--csv", str(csv)],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "T1_vs_d0" in r.stdout
    fits = pd.read_csv(csv).set_index("fit")
    assert set(fits.index) == {s.name for s in SPECS} and len(fits) == len(SPECS)
    t1 = fits.loc["T1_vs_d0"]
    assert np.isfinite([t1["slope"], t1["low"], t1["high"]]).all() and t1["low"] < t1["slope"] < t1["high"], t1
    assert t1["n_seeds"] == 2 and t1["n_x"] == 5 and t1["family"].startswith("d = 1024")
    figures = sorted(p.name for p in (tiny_exponents / "figures").glob("exponent_*.png"))
    assert figures == sorted(f"exponent_{f}.png" for f in fits.index)


def test_the_report_draws_the_exponents(tiny_exponents):
    panels = build_figures(load(tiny_exponents))
    mine = [p for p in panels if p.section == "Scaling exponents"]
    assert len(mine) == len(SPECS) and all("slope [95% over seeds]" in p.note for p in mine)
    assert check_figures(mine) == len(SPECS)


def test_a_grid_without_a_family_is_refused(tiny_exponents, tmp_path, capsys):
    """One line and status 2 where no runs differ in d or d0 alone: the tiny grid's runs at d = 64
    and d = 1024 only (real Parquet tables, one runs and one curves file)."""
    import shutil

    for table in ("runs", "curves"):
        df = pd.concat([pd.read_parquet(f) for f in sorted((tiny_exponents / table).glob("*.parquet"))])
        runs = df if table == "runs" else None
        if table == "runs":
            keep = set(runs.loc[runs["input_dim"].isin([64, 1024]) & (runs["core_dim"] == 4), "run_id"])
        (tmp_path / table).mkdir()
        df[df["run_id"].isin(keep)].to_parquet(tmp_path / table / "part.parquet")
    shutil.copy(tiny_exponents / "manifest.json", tmp_path / "manifest.json")
    assert len(load(tmp_path).runs) == 2 * 2 * 2
    assert main(["exponents", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "d or in d0" in err and len(err.strip().splitlines()) == 1, err


def test_families_hold_everything_but_their_size_and_keep_to_the_theorys_setting():
    """A d family fixes d0, a d0 family fixes d and the core share; a distillation grid's runs or a
    K-class classifier's are not the theorems' and form none."""
    from analysis.exponents import SPECS as specs, families, measure

    rows = [dict(run_id=f"{d0}-{d}-{s}", seed=s, activation="relu", core_dim=d0 // 2, bg_dim=d0 // 2, input_dim=d,
                 width=64, lr=0.5, weight_decay=0.0, bg_train_low=0.0, bg_train_high=1.0, bg_norm=1.0, id_loss=1.0,
                 ood_loss=1.0, experiment="classify", n_classes=2)
            for s in (0, 1) for d0, d in ((8, 64), (8, 128), (8, 256), (4, 256), (16, 256), (4, 64), (16, 512))]
    meas = measure(pd.DataFrame(rows), None)
    by_name = {s.name: s for s in specs}
    (fixed, g), = families(meas, by_name["T0_vs_d"])
    assert sorted(g["input_dim"].unique()) == [64, 128, 256] and (g["d0"] == 8).all()
    (fixed, g), = families(meas, by_name["T1_vs_d0"])
    assert sorted(g["d0"].unique()) == [4, 8, 16] and (g["input_dim"] == 256).all()
    for other in (dict(experiment="distill"), dict(n_classes=4)):
        assert not families(measure(pd.DataFrame(rows).assign(**other), None), by_name["T1_vs_d0"]), other
