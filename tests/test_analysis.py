"""The analysis package on real engine output: aggregation, figures, report, diverged runs, CLI."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import aggregate, load, phase_figure, phase_table, write_report
from analysis.curves import collapse_score, curves_figure
from analysis.phase import ID_FIT, UNDER_FIT_NOTE
from analysis.report import COLLAPSE_HEADER, HEADLINE, build_figures, headline_table
from analysis.style import fmt
from sweeps.engine import run_grid
from sweeps.grid import load as load_grid

from conftest import TINY_FIXED

REPO = Path(__file__).resolve().parents[1]
SMALL = f"""preset = "toy_theory"
[fixed]
{TINY_FIXED}"""
# Three axes: a geometric numeric one, a table-valued (label) one, a string one.
TINY = f"""description = "tiny: width x background x activation"
seeds = 3
{SMALL}
[axes]
width = [8, 16, 32]
background = [{{label = "mean 0.5", bg_train = [0.0, 1.0]}}, {{label = "mean 0", bg_train = [-0.5, 0.5]}}]
activation = ["relu", "linear"]
"""
# lr = 1e30 on a huge init makes those runs diverge; lr = 0.01 does not.
DIVERGE = f"""description = "tiny with diverging runs"
seeds = 2
{SMALL}
width = 32
activation = "relu"
init_scale = 1e10
[axes]
lr = [0.01, 1e30]
background = [{{label = "mean 0.5", bg_train = [0.0, 1.0]}}, {{label = "mean 0", bg_train = [-0.5, 0.5]}}]
"""
AXES = ["width", "background", "activation"]


@pytest.fixture(scope="module")
def results_root(tmp_path_factory):
    """results/tiny and results/diverge, trained by the engine (one padded bucket per activation)."""
    base = tmp_path_factory.mktemp("analysis")
    for name, text in (("tiny", TINY), ("diverge", DIVERGE)):
        grid_file = base / f"{name}.toml"
        grid_file.write_text(text)
        run_grid(load_grid(str(grid_file)), base / "results" / name, progress=False, min_efficiency=0.0)
    return base / "results"


@pytest.fixture(scope="module")
def tiny(results_root):
    return load(results_root / "tiny")


@pytest.fixture(scope="module")
def diverge(results_root):
    res = load(results_root / "diverge")
    assert res.runs["diverged"].any() and not res.runs["diverged"].all(), res.runs[["lr", "diverged"]]
    assert res.runs.loc[res.runs["diverged"], "lr"].eq(1e30).all()
    return res


def _read_raw(path: Path, table: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted((path / table).glob("*.parquet"))], ignore_index=True)


def _cli(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


# --- load ------------------------------------------------------------------------------

def test_load_types_follow_the_grid(tiny):
    runs, curves, m = tiny.runs, tiny.curves, tiny.manifest
    assert len(runs) == 3 * 2 * 2 * 3 and runs["run_id"].is_unique
    assert pd.api.types.is_integer_dtype(runs["width"]) and pd.api.types.is_integer_dtype(curves["width"])
    for df in (runs, curves):
        for axis in ("background", "activation"):
            assert isinstance(df[axis].dtype, pd.CategoricalDtype) and df[axis].cat.ordered
            assert list(df[axis].cat.categories) == m["axes"][axis]
    assert np.allclose(runs["ood_minus_id_loss"], runs["ood_loss"] - runs["id_loss"])
    assert set(m["metrics"]) <= set(tiny.metrics) and "ood_minus_id_loss" in tiny.metrics
    assert "diverged" in curves and not curves["diverged"].any()


def test_name_resolves_under_results(results_root, monkeypatch):
    monkeypatch.chdir(results_root.parent)
    assert load("tiny").path == Path("results") / "tiny"


# --- aggregation -----------------------------------------------------------------------

@pytest.mark.parametrize("which,by", [("tiny", AXES), ("tiny", ["activation"]), ("diverge", ["lr", "background"])])
def test_aggregate_equals_direct_pandas(which, by, tiny, diverge):
    res = {"tiny": tiny, "diverge": diverge}[which]
    metrics = ["ood_acc", "id_loss", "bg_signed", "act_asym"]
    got = aggregate(res.runs, by, metrics)
    raw = _read_raw(res.path, "runs")  # independently read; strings stay strings
    ok = raw[~raw["diverged"]]
    g = ok.groupby(by)[metrics]
    want = pd.concat({"mean": g.mean(), "std": g.std(), "count": g.count()}, axis=1)
    counts = raw.groupby(by).agg(n_runs=("run_id", "size"), n_diverged=("diverged", "sum"))
    key = lambda df: df[by].astype(str).agg("|".join, axis=1)  # noqa: E731
    got = got.set_index(key(got))
    counts.index = counts.index.map(lambda k: "|".join(map(str, k if isinstance(k, tuple) else (k,))))
    want.index = want.index.map(lambda k: "|".join(map(str, k if isinstance(k, tuple) else (k,))))
    assert sorted(got.index) == sorted(counts.index)
    assert (got.loc[counts.index, "n_runs"].to_numpy() == counts["n_runs"].to_numpy()).all()
    assert (got.loc[counts.index, "n_diverged"].to_numpy() == counts["n_diverged"].to_numpy()).all()
    assert (got["n"] == got["n_runs"] - got["n_diverged"]).all()
    for m in metrics:
        w = want.reindex(got.index)
        np.testing.assert_allclose(got[f"{m}_mean"], w[("mean", m)], rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(got[f"{m}_std"], w[("std", m)], rtol=1e-12, equal_nan=True)
        n = w[("count", m)].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            ci = stats.t.ppf(0.975, n - 1) * w[("std", m)].to_numpy() / np.sqrt(n)
        np.testing.assert_allclose(got[f"{m}_ci95"], ci, rtol=1e-10, equal_nan=True)
    if which == "diverge":
        all_diverged = got["n"] == 0
        assert all_diverged.any() and got.loc[all_diverged, "ood_acc_mean"].isna().all()


def test_aggregate_ignores_string_columns(tiny):
    out = aggregate(tiny.runs, [], ["ood_acc"])
    assert len(out) == 1 and out["n_runs"].iloc[0] == len(tiny.runs)
    assert np.isclose(out["ood_acc_mean"].iloc[0], tiny.runs["ood_acc"].mean())


# --- figures and report ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_report(tiny, tmp_path_factory):
    return write_report(tiny, tmp_path_factory.mktemp("report"))


def test_report_writes_every_figure(tiny_report):
    figs = sorted((tiny_report.parent / "figures").iterdir())
    stems = {f.stem for f in figs}
    for m in ("ood_acc", "ood_minus_id_loss", "bg_mean_proj"):
        assert f"phase_{m}_width_background_by_activation" in stems
    assert {"curves_loss_norm", "curves_background_by_activation", "collapse_eta_t_over_m"} <= stems
    assert {"phase_critical_shift_width_background_by_activation", "ood_acc_vs_shift", "ablation_recovery"} <= stems
    for f in figs:
        assert f.stat().st_size > 0, f
    pngs = [f for f in figs if f.suffix == ".png"]
    assert len(pngs) == len(figs) / 2 and all(f.with_suffix(".svg").exists() for f in pngs)
    for f in pngs:
        img = mpimg.imread(f)
        assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] > 200 and img.shape[1] > 300, img.shape
        assert img[..., :3].std() > 0.01  # not blank


def test_report_links_only_existing_files(tiny_report):
    text = tiny_report.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert len(links) >= 2 * 6 + 1
    for link in links:
        assert not Path(link).is_absolute()
        assert (tiny_report.parent / link).is_file(), link
    for words in ("## What was run", "## Headline table", "## Provenance", "tiny: width x background x activation",
                  "36 runs", "git commit", "mean ± 95%"):
        assert words in text, words
    header = next(line for line in text.splitlines() if line.startswith("| width"))
    for col in ("id_acc", "ood_acc", "id_loss", "ood_loss", "bg_mean_proj", "contaminated_frac", "act_asym",
                "bg_grad_balance", "n", "n_diverged"):
        assert f" {col} " in header
    assert "bg_signed" not in header
    assert ("*the drift along the background mean (left), the net and total class gradients along it per training "
            "sample (middle) and their ratio (right) by activation.*") in text
    assert f"{COLLAPSE_HEADER}:" in text  # width is an axis (lr fixed): the collapse figure and its scores


NEW_METRICS = ["bg_mean_proj", "bg_shift_rms", "contaminated_frac", "bg_grad_balance"]


def test_report_without_new_metric_columns(tiny):
    """Older results (none of the new columns) and distill-like ones (no bg_grad_balance) still report."""
    assert set(NEW_METRICS) <= set(tiny.runs) and set(NEW_METRICS) <= set(tiny.curves)
    balance = ["bg_grad_balance", "bg_grad_net", "bg_grad_total"]
    no_balance = dataclasses.replace(tiny, runs=tiny.runs.drop(columns=balance), curves=tiny.curves.drop(columns=balance))
    panels = {p.stem: p for p in build_figures(no_balance)}
    assert panels["curves_background_by_activation"].caption == "projection on the background mean by activation"
    assert "phase_bg_mean_proj_width_background_by_activation" in panels
    from contamination.shift import SHIFT_METRICS

    old = dataclasses.replace(tiny, runs=tiny.runs.drop(columns=[*NEW_METRICS, *balance[1:], *SHIFT_METRICS]),
                              curves=tiny.curves.drop(columns=[*NEW_METRICS, *balance[1:]]), shifts=pd.DataFrame())
    panels = {p.stem: p for p in build_figures(old)}
    assert "curves_background_by_activation" not in panels
    assert not any(s.startswith("phase_bg_mean_proj") for s in panels)
    assert {"phase_ood_acc_width_background_by_activation", "collapse_eta_t_over_m"} <= set(panels)
    assert "ood_minus_id_loss" in panels["collapse_eta_t_over_m"].note
    assert "bg_mean_proj" not in panels["collapse_eta_t_over_m"].note
    table = headline_table(old.runs, AXES)
    assert [c for c in table.columns if c in HEADLINE] == ["id_acc", "ood_acc", "id_loss", "ood_loss", "act_asym"]


def test_geometric_axis_is_labelled_log_scale(tiny):
    fig = phase_figure(phase_table(tiny.runs, "width", "background", "ood_acc"), "width", "background", "ood_acc",
                       averaged=["activation"])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "width (log scale)" and ax.get_ylabel() == "background"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "16", "32"]
    assert "pooled over activation" in fig._suptitle.get_text()
    assert len(fig.axes) == 2 and "OOD accuracy" in fig.axes[1].get_ylabel()  # the colour bar


# --- synthetic tables: collapse score, ID fit ---------------------------------------------

LRS, WIDTHS, STEPS = (0.25, 0.5, 1.0, 2.0), (32, 64, 128), np.arange(0, 1501, 25)


def _synthetic_curves(seeds: int = 3, noise: float = 0.01) -> pd.DataFrame:
    """A curves table over lr x width: `collapsing` is a function of lr * step / width, `lr_only` of lr * step."""
    rng = np.random.default_rng(0)
    frames = []
    for lr in LRS:
        for width in WIDTHS:
            for seed in range(seeds):
                frames.append(pd.DataFrame({
                    "run_id": f"lr{lr}_w{width}_s{seed}", "seed": seed, "lr": lr, "width": width, "step": STEPS,
                    "diverged": False,
                    "collapsing": 1 - np.exp(-lr * STEPS / width / 3) + noise * rng.standard_normal(len(STEPS)),
                    "lr_only": 1 - np.exp(-lr * STEPS / 100) + noise * rng.standard_normal(len(STEPS))}))
    return pd.concat(frames, ignore_index=True)


def test_collapse_score_tells_collapse_from_none():
    curves = _synthetic_curves()
    collapsing, lr_only = collapse_score(curves, "collapsing"), collapse_score(curves, "lr_only")
    assert 0 <= collapsing < 0.2, collapsing
    assert lr_only > 1, lr_only
    # Diverged runs are left out: a config whose runs all diverged (with garbage values) changes nothing.
    bad = curves[(curves["lr"] == 2.0) & (curves["width"] == 32)].assign(diverged=True, collapsing=1e9)
    bad["run_id"] += "_div"
    bad["lr"] = 4.0
    assert collapse_score(pd.concat([curves, bad], ignore_index=True), "collapsing") == pytest.approx(collapsing)
    one = curves[(curves["lr"] == 1.0) & (curves["width"] == 64)]
    assert np.isnan(collapse_score(one, "collapsing"))  # a single config: nothing to collapse
    flat = curves.assign(collapsing=0.5)
    assert np.isnan(collapse_score(flat, "collapsing"))  # no spread at equal steps


def test_report_of_lr_width_grid_states_collapse_scores(tmp_path):
    """A results directory with lr and width axes: report.md carries a collapse score per COLLAPSE_METRICS metric."""
    curves = _synthetic_curves(seeds=2).rename(columns={"collapsing": "bg_mean_proj"})
    curves["id_loss"], curves["ood_loss"] = 1.0, 1 + curves.pop("lr_only")  # ood_minus_id_loss: the lr-only curve
    last = curves[curves["step"] == STEPS[-1]].drop(columns=["step"]).reset_index(drop=True)
    runs = last.assign(config_id=last["run_id"].str.rsplit("_", n=1).str[0], id_acc=0.99, ood_acc=0.7)
    path = tmp_path / "lr_width"
    for table, df in (("runs", runs), ("curves", curves.drop(columns=["diverged"]))):
        (path / table).mkdir(parents=True)
        df.to_parquet(path / table / "part-0.parquet")
    (path / "manifest.json").write_text(json.dumps({
        "grid": "lr_width", "seeds": [0, 1], "axes": {"lr": list(LRS), "width": list(WIDTHS)},
        "metrics": ["id_loss", "id_acc", "ood_loss", "ood_acc", "bg_mean_proj"]}))
    res = load(path)
    text = write_report(res, tmp_path / "out").read_text()
    assert f"{COLLAPSE_HEADER}:" in text
    c = res.curves
    for m in ("bg_mean_proj", "ood_minus_id_loss"):
        row = next(line for line in text.splitlines() if line.startswith("| ") and f"({m})" in line)
        assert row.rstrip(" |").endswith(fmt(collapse_score(c, m))), row
    assert collapse_score(c, "bg_mean_proj") < 0.2 < 1 < collapse_score(c, "ood_minus_id_loss")


def _fit_runs(bad_acc: float = 0.8) -> pd.DataFrame:
    """Runs over lr x width (pooled over activation): the (lr 1, width 64) cell fits its ID data badly."""
    rng = np.random.default_rng(1)
    rows = []
    for lr in (0.1, 1.0):
        for width in (32, 64, 128):
            for act in ("relu", "linear"):
                for seed in range(3):
                    bad = lr == 1.0 and width == 64
                    rows.append({"run_id": f"{lr}_{width}_{act}_{seed}", "seed": seed, "lr": lr, "width": width,
                                 "activation": act, "diverged": False,
                                 "id_acc": (bad_acc if bad else 0.99) + 0.002 * rng.standard_normal(),
                                 "ood_acc": 0.6 + 0.1 * rng.random(), "bg_mean_proj": rng.standard_normal()})
    return pd.DataFrame(rows)


def _hatched(fig) -> list:
    return [p for p in fig.axes[0].patches if p.get_hatch()]


def test_phase_marks_cells_that_under_fit_id():
    runs = _fit_runs()
    table = phase_table(runs, "lr", "width", "ood_acc")
    marked = table.loc[table["under_fit"], ["lr", "width"]]
    assert marked.values.tolist() == [[1.0, 64]]
    assert (table["under_fit"] == (table["id_acc_mean"] < ID_FIT)).all() and ID_FIT == 0.97
    fig = phase_figure(table, "lr", "width", "ood_acc", averaged=["activation"])
    hatched = _hatched(fig)
    assert len(hatched) == 1 and hatched[0].get_hatch() == "//"
    x, y = hatched[0].get_xy()  # the cell at x index 1 (lr 1.0), y index 1 (width 64)
    assert (x + 0.5, y + 0.5) == (1, 1)
    assert UNDER_FIT_NOTE in fig._suptitle.get_text() and "0.97" in UNDER_FIT_NOTE
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert len(cells) == 6 and all(c != "no runs" for c in cells)  # the hatched cell's value is still written
    # id_acc itself is not hatched; without id_acc, nothing is marked; all fitting, nothing is marked.
    fig = phase_figure(phase_table(runs, "lr", "width", "id_acc"), "lr", "width", "id_acc")
    assert not _hatched(fig) and UNDER_FIT_NOTE not in fig._suptitle.get_text()
    table = phase_table(runs.drop(columns=["id_acc"]), "lr", "width", "bg_mean_proj")
    assert "under_fit" not in table and not _hatched(phase_figure(table, "lr", "width", "bg_mean_proj"))
    table = phase_table(_fit_runs(bad_acc=0.99), "lr", "width", "bg_mean_proj", facet="activation")
    assert not table["under_fit"].any()
    assert not _hatched(phase_figure(table, "lr", "width", "bg_mean_proj", "activation"))


# --- distillation: effective-robustness baseline, teacher bias x width --------------------

# Two training backgrounds, each with its own line of standard networks: OOD = slope * ID + intercept.
LINES = {(0.0, 1.0): (0.8, -0.1), (-0.5, 0.5): (0.6, 0.2)}
BACKGROUNDS = {"mean 0.5": (0.0, 1.0), "mean 0": (-0.5, 0.5)}
DATA = {"core_dim": 8, "bg_dim": 8, "input_dim": 64, "n_train": 256}
PROBE_COLS = ("teacher_probe_id_acc", "teacher_probe_ood_acc", "student_probe_id_acc", "student_probe_ood_acc")


def _distill_row(run_id, config_id, seed, bg, **kw) -> dict:
    lo, hi = BACKGROUNDS[bg]
    row = {"run_id": run_id, "config_id": config_id, "seed": seed, "diverged": False, "grid": "distill",
           "teacher": "core", "teacher_bias": 3.0, "width": 128, "rep_dim": 64, "teacher_steps": 300, **DATA,
           "core": "relu", "online": False, "batch_size": 0, "optimizer": "adam", "activation": "relu",
           "bg_train_low": lo, "bg_train_high": hi, "bg_ood_low": lo - 1, "bg_ood_high": hi - 1, "background": bg,
           "student_rep_err_id": 0.1, "student_rep_err_ood": 0.3}
    row.update(kw)
    return row


def _standard_runs(seeds=(0, 1), noise=1e-3, **kw) -> pd.DataFrame:
    """distill_baseline-like runs: standard networks over rep_dim x teacher_steps x background on LINES."""
    rng = np.random.default_rng(2)
    rows = []
    for bg, key in BACKGROUNDS.items():
        slope, intercept = LINES[key]
        for i, rep in enumerate((16, 64, 256)):
            for j, steps in enumerate((50, 300, 2000)):
                acc = 0.7 + 0.03 * i + 0.08 * j
                for seed in seeds:
                    t_id = acc + noise * rng.standard_normal()
                    rows.append(_distill_row(
                        f"std_{bg}_{rep}_{steps}_{seed}", f"std_{bg}_{rep}_{steps}", seed, bg, teacher="standard",
                        teacher_bias=1.0, rep_dim=rep, teacher_steps=steps, width=16, teacher_probe_id_acc=t_id,
                        teacher_probe_ood_acc=slope * t_id + intercept + noise * rng.standard_normal(),
                        student_probe_id_acc=0.5, student_probe_ood_acc=0.5, **kw))
    return pd.DataFrame(rows)


def _on_line(key, acc, adv):
    """(ID, OOD) accuracy `adv` above the line of background `key` at ID accuracy `acc`."""
    slope, intercept = LINES[key]
    return acc, slope * acc + intercept + adv


KINDS = {"ReLU, bias 3": ("core", 3.0, "relu", 0.2, 0.1),  # teacher 0.2 above the line, student 0.1
         "linear (linear core)": ("linear", 0.0, "linear", 0.0, 0.05)}  # teacher on the line


def _controls_runs(seeds=(0, 1)) -> pd.DataFrame:
    """distill_controls-like runs over teacher_kind x background: advantages known by construction."""
    rows = []
    for kind, (teacher, bias, core, t_adv, s_adv) in KINDS.items():
        for bg, key in BACKGROUNDS.items():
            t_id, t_ood = _on_line(key, 0.95, t_adv)
            s_id, s_ood = _on_line(key, 0.9, s_adv)
            for seed in seeds:
                rows.append(_distill_row(f"{kind}_{bg}_{seed}", f"{kind}_{bg}", seed, bg, teacher=teacher,
                                         teacher_bias=bias, core=core, teacher_kind=kind,
                                         teacher_probe_id_acc=t_id, teacher_probe_ood_acc=t_ood,
                                         student_probe_id_acc=s_id, student_probe_ood_acc=s_ood))
    return pd.DataFrame(rows)


def _write_results(path: Path, runs: pd.DataFrame, grid: str, axes: dict, scale: str = "default") -> Path:
    (path / "runs").mkdir(parents=True)
    runs.to_parquet(path / "runs" / "part-0.parquet")
    axis_columns = [c for c in runs.columns if c in (*DATA, "teacher", "teacher_bias", "core", "width", "rep_dim",
                                                     "teacher_steps", "bg_train_low", "bg_train_high", "bg_ood_low",
                                                     "bg_ood_high", *axes) and runs[c].nunique() > 1]
    (path / "manifest.json").write_text(json.dumps({
        "grid": grid, "scale": scale, "preset": "distill", "seeds": sorted(runs["seed"].unique().tolist()),
        "axes": axes, "axis_columns": axis_columns, "metrics": ["student_rep_err_id", "student_rep_err_ood",
                                                                *PROBE_COLS]}))
    return path


def test_baseline_line_recovers_each_backgrounds_line():
    from analysis.distill import baseline_line

    runs = _standard_runs()
    # Diverged runs and non-standard runs are left out, whatever their numbers.
    junk = runs.iloc[:3].assign(diverged=True, teacher_probe_ood_acc=0.0)
    junk["run_id"] += "_div"
    other = _controls_runs()
    line = baseline_line(pd.concat([runs, junk, other], ignore_index=True))
    assert set(line) == set(LINES)
    for key, (slope, intercept) in LINES.items():
        got_slope, got_intercept, n = line[key]
        assert n == 9
        assert got_slope == pytest.approx(slope, abs=0.02) and got_intercept == pytest.approx(intercept, abs=0.02)
    # One background with a single config has no line.
    one = runs[(runs["bg_train_low"] == 0.0) | (runs["config_id"] == runs["config_id"].iloc[-1])]
    assert set(baseline_line(one)) == {(0.0, 1.0)}
    # Standard networks that all fit (ID accuracies within MIN_ID_SPREAD): a flat line at their mean
    # OOD accuracy, not a slope fitted to a sliver of ID accuracy.
    easy = runs[runs["bg_train_low"] == 0.0].copy()
    rng = np.random.default_rng(0)
    per_config = {c: (0.97 + 0.02 * rng.random(), rng.random()) for c in easy["config_id"].unique()}
    easy["teacher_probe_id_acc"] = [per_config[c][0] for c in easy["config_id"]]
    easy["teacher_probe_ood_acc"] = [per_config[c][1] for c in easy["config_id"]]
    slope, intercept, n = baseline_line(easy)[(0.0, 1.0)]
    assert slope == 0.0 and intercept == pytest.approx(np.mean([v[1] for v in per_config.values()]))


def test_robustness_kept_is_the_students_share_of_the_teachers_advantage():
    from analysis.distill import robustness_kept

    line = {key: (slope, intercept, 9) for key, (slope, intercept) in LINES.items()}
    runs = _controls_runs()
    kept = robustness_kept(pd.concat([runs, _standard_runs()], ignore_index=True), line,
                           axes=["teacher_kind", "background"])
    assert len(kept) == len(KINDS) * len(BACKGROUNDS)  # the standard runs are not configs of this table
    assert {"teacher_kind", "background", "teacher", "teacher_bias", "activation", "bg_train_low", "bg_train_high",
            *PROBE_COLS, "teacher_adv", "student_adv", "kept"} <= set(kept.columns)
    assert (kept["n"] == 2).all()
    for row in kept.itertuples():
        _, _, _, t_adv, s_adv = KINDS[row.teacher_kind]
        slope, intercept = LINES[(row.bg_train_low, row.bg_train_high)]
        assert row.teacher_adv == pytest.approx(row.teacher_probe_ood_acc - slope * row.teacher_probe_id_acc
                                                - intercept)
        assert row.teacher_adv == pytest.approx(t_adv, abs=1e-9) and row.student_adv == pytest.approx(s_adv, abs=1e-9)
        if t_adv > 0.01:
            assert row.kept == pytest.approx(row.student_adv / row.teacher_adv) and row.kept == pytest.approx(0.5)
        else:
            assert np.isnan(row.kept)
    # No line for a background: NaN.
    only = {(0.0, 1.0): line[(0.0, 1.0)]}
    kept = robustness_kept(runs, only, axes=["teacher_kind", "background"])
    relu = kept[kept["teacher_kind"] == "ReLU, bias 3"].set_index("background")
    assert relu.loc["mean 0.5", "kept"] == pytest.approx(0.5) and np.isnan(relu.loc["mean 0", "kept"])


CONTROL_AXES = {"background": list(BACKGROUNDS), "teacher_kind": list(KINDS)}
BASELINE_AXES = {"rep_dim": [16, 64, 256], "teacher_steps": [50, 300, 2000], "background": list(BACKGROUNDS)}


def test_distill_report_states_effective_robustness_against_the_baseline(tmp_path):
    from analysis.distill import baseline_name, load_baseline
    from analysis.report import no_baseline

    root = tmp_path / "results"
    controls = load(_write_results(root / "distill_controls", _controls_runs(), "distill_controls", CONTROL_AXES))
    NO_BASELINE = no_baseline(controls)
    assert "make sweep GRID=distill_baseline" in NO_BASELINE
    # Runs on real digits look for the digits baseline, at their scale.
    digits = dataclasses.replace(controls, runs=controls.runs.assign(dataset="digits"),
                                 manifest={**controls.manifest, "scale": "full"})
    assert baseline_name(digits) == "digits_distill_baseline-full"
    assert "make sweep GRID=digits_distill_baseline" in no_baseline(digits)
    # Without the sibling baseline: the figure and a line saying how to get one.
    assert load_baseline(controls) is None
    text = write_report(controls, tmp_path / "alone", formats=("png",)).read_text()
    assert NO_BASELINE in text and "Effective robustness:" not in text
    assert NO_BASELINE.startswith("No effective-robustness baseline found")
    # A baseline at other data sizes does not count, and rows at other sizes are left out.
    other = _standard_runs(core_dim=16).assign(teacher_probe_ood_acc=0.3)
    other["config_id"] += "_d16"
    other["run_id"] += "_d16"
    _write_results(root / "distill_baseline", pd.concat([_standard_runs(), other], ignore_index=True),
                   "distill_baseline", BASELINE_AXES)
    base = load_baseline(controls)
    assert base is not None and len(base) == 36 and (base["core_dim"] == 8).all()
    assert load_baseline(dataclasses.replace(controls, manifest={**controls.manifest, "scale": "reference"})) is None
    panels = {p.stem: p for p in build_figures(controls)}
    note = panels["effective_robustness"].note
    assert note.startswith("Effective robustness: OOD probe accuracy above the line that standard networks "
                           "(distill_baseline, 18 configs) follow; `kept` is the share of the teacher's advantage "
                           "the student keeps.")
    for ax in panels["effective_robustness"].figure.axes:  # a panel per core (relu, linear): the baseline in each
        labels = ax.get_legend_handles_labels()[1]
        assert {"standard networks", "standard fit, bg_train [0, 1]", "standard fit, bg_train [-0.5, 0.5]",
                "teacher"} <= set(labels), labels
    text = write_report(controls, tmp_path / "with", formats=("png",)).read_text()
    assert note in text and NO_BASELINE not in text
    assert "| background | teacher_kind | teacher adv | student adv | kept |" in text
    table = [line for line in note.splitlines() if line.startswith("| mean")]
    assert len(table) == 4
    assert sorted(r for r in table if "ReLU, bias 3" in r) == ["| mean 0 | ReLU, bias 3 | +0.200 | +0.100 | 50% |",
                                                              "| mean 0.5 | ReLU, bias 3 | +0.200 | +0.100 | 50% |"]
    # The linear teacher is on the linear core, which this baseline does not cover: no line, nothing
    # compared (lines are per core type; a line fitted on another core would not apply).
    assert all(r.endswith("| – | – | – |") for r in table if "linear (linear core)" in r)
    # The baseline's own report: the standard points and lines, no student parts, no note.
    baseline = load(root / "distill_baseline")
    panels = build_figures(baseline)
    assert [p.stem for p in panels if p.section == "Distillation"] == ["effective_robustness"]
    panel = next(p for p in panels if p.stem == "effective_robustness")
    assert panel.note == "" and "baseline" in panel.caption
    fig = panel.figure
    labels = fig.axes[-1].get_legend_handles_labels()[1]
    assert "standard networks" in labels and "teacher" not in labels and not any("student" in s for s in labels)
    assert sum(s.startswith("standard fit, bg_train") for s in labels) == 2  # a line per background
    text = write_report(baseline, tmp_path / "baseline", formats=("png",)).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| rep_dim"))
    assert "teacher_probe_ood_acc" in header and "student" not in header


def _bias_runs() -> pd.DataFrame:
    rows = []
    for bias in (0.0, 1.0, 3.0):
        for width in (32, 64):
            for seed in (0, 1):
                rows.append(_distill_row(f"b{bias}_w{width}_{seed}", f"b{bias}_w{width}", seed, "mean 0.5",
                                         teacher_bias=bias, width=width, teacher_probe_id_acc=0.95,
                                         teacher_probe_ood_acc=0.9, student_probe_id_acc=0.95,
                                         student_probe_ood_acc=0.9 - 0.05 * bias + 0.001 * width,
                                         student_rep_err_ood=0.1 * bias))
    return pd.DataFrame(rows).drop(columns=["background"])


def test_teacher_bias_by_width_phase_panels(tmp_path):
    res = load(_write_results(tmp_path / "distill_bias", _bias_runs(), "distill_bias",
                              {"teacher_bias": [0.0, 1.0, 3.0], "width": [32, 64]}))
    panels = {p.stem: p for p in build_figures(res)}
    gap = panels["phase_student_ood_gap_teacher_bias_width"]
    assert gap.section == "Distillation"
    assert gap.caption == "the student's OOD gap (probe accuracy ID minus OOD) over width × teacher bias scale"
    assert "phase_student_rep_err_ood_teacher_bias_width" in panels
    assert "phase_student_ood_gap" not in panels  # core_dim is fixed
    cells = [t.get_text() for t in gap.figure.axes[0].texts]
    assert len(cells) == 6
    # Not an axis pair of the controls grid (width fixed there): no such panel.
    controls = load(_write_results(tmp_path / "distill_controls", _controls_runs(), "distill_controls",
                                   CONTROL_AXES))
    assert not any(s.startswith("phase_student") for s in (p.stem for p in build_figures(controls)))


# --- diverged runs ---------------------------------------------------------------------

def test_phase_diagram_states_diverged_runs(diverge):
    n_div = int(diverge.runs["diverged"].sum())
    table = phase_table(diverge.runs, "lr", "background", "ood_acc")
    assert table["n_diverged"].sum() == n_div
    assert table.loc[table["lr"] == 1e30, "mean"].isna().all()
    fig = phase_figure(table, "lr", "background", "ood_acc")
    title = fig._suptitle.get_text()
    assert f"{n_div} diverged runs excluded" in title
    cells = [t.get_text() for t in fig.axes[0].texts]
    assert sum("diverged" in c for c in cells) == (table["n"] == 0).sum()


def test_curves_and_report_state_diverged_runs(diverge, tmp_path):
    fig = curves_figure(diverge.curves, hue="background", row="lr")
    n_div = int(diverge.runs["diverged"].sum())
    assert f"{n_div} diverged runs excluded" in fig._suptitle.get_text()
    report = write_report(diverge, tmp_path).read_text()
    assert f"{n_div} diverged runs excluded" in report and "Diverged runs" in report
    assert {p.stem for p in build_figures(diverge)} >= {"phase_ood_acc_lr_background", "collapse_eta_t_over_m"}


# --- command line ----------------------------------------------------------------------

def test_cli_phase_writes_figure_and_csv(results_root, tmp_path):
    fig, csv = tmp_path / "p.png", tmp_path / "p.csv"
    out = _cli("phase", results_root / "diverge", "--x", "lr", "--y", "background", "--metric", "ood_acc",
               "--out", fig, "--csv", csv)
    assert out.returncode == 0, out.stderr
    assert fig.stat().st_size > 0 and mpimg.imread(fig).ndim == 3
    table = pd.read_csv(csv)
    assert {"lr", "background", "mean", "std", "ci95", "n", "n_diverged"} <= set(table.columns)
    assert table["n_diverged"].sum() == 4 and "diverged" in out.stdout


@pytest.mark.parametrize("args,needle", [
    (["--x", "widht", "--y", "background"], "unknown axis 'widht' (did you mean 'width'?); allowed: width, background"),
    (["--x", "width", "--y", "background", "--metric", "ood_accuracy"], "unknown metric 'ood_accuracy'"),
    (["--x", "width", "--y", "background", "--where", "activation=tanh"], "allowed: relu, linear"),
])
def test_cli_bad_names_one_line_exit_2(results_root, args, needle, capsys):
    if "widht" in args:  # one of them in a process of its own: its exit status and stderr
        out = _cli("phase", results_root / "tiny", *args)
        code, err = out.returncode, out.stderr
    else:  # the others through the same entry point, in this process
        from analysis.__main__ import main

        code, err = main(["phase", str(results_root / "tiny"), *args]), capsys.readouterr().err
    assert code == 2
    assert needle in err and err.count("\n") == 1, err
    if "metric" in needle:
        assert "allowed: " in err and "ood_acc" in err


def test_cli_report_by_name_and_unknown_name(results_root):
    out = _cli("report", "tiny", cwd=results_root.parent)
    assert out.returncode == 0, out.stderr
    assert (results_root / "tiny" / "report.md").is_file() and "report.md" in out.stdout
    assert any((results_root / "tiny" / "figures").glob("*.svg"))
    out = _cli("report", "nope", cwd=results_root.parent)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "diverge, tiny" in out.stderr


def test_distill_signature_figures_show_failure_and_background_signature():
    """Which cells fail OOD (log10 OOD/ID error ratio, probe gap) and with what background signature
    (bg_mean_proj coherent, bg_norm incoherent), for the ReLU students only."""
    from analysis.distill import ERR_RATIO, signature_figures, with_gap

    rows = []
    for data in ("fixed n", "fresh batches"):
        for bg in ("mean 0.5", "mean 0"):
            for act in ("relu", "linear"):
                for seed in (0, 1):
                    ratio = 100.0 if (data, bg) == ("fresh batches", "mean 0.5") and act == "relu" else 2.0
                    rows.append(dict(run_id=f"{data}{bg}{act}{seed}", config_id=f"{data}{bg}{act}", seed=seed,
                                     data=data, background=bg, activation=act, teacher="core", diverged=False,
                                     student_rep_err_id=0.01, student_rep_err_ood=0.01 * ratio,
                                     student_probe_id_acc=0.99, student_probe_ood_acc=0.7 if ratio > 10 else 0.98,
                                     teacher_probe_id_acc=0.99, teacher_probe_ood_acc=0.99,
                                     bg_mean_proj=0.2 if ratio > 10 else 0.0, bg_norm=0.3))
    runs = pd.DataFrame(rows)
    np.testing.assert_allclose(with_gap(runs)[ERR_RATIO], np.log10(runs["student_rep_err_ood"] / 0.01))
    figs = dict(signature_figures(runs, "data", "background"))
    assert set(figs) == {ERR_RATIO, "student_ood_gap", "bg_mean_proj", "bg_norm"}
    for fig in figs.values():
        assert "ReLU students" in fig._suptitle.get_text()
    # the linear students (ratio 2 everywhere) are not pooled in: the failing cell reads log10(100) = 2
    firsts = sorted(float(t.get_text().split("\n")[0]) for ax in figs[ERR_RATIO].axes for t in ax.texts)
    np.testing.assert_allclose(firsts, [np.log10(2)] * 3 + [2.0], rtol=1e-3)


def test_report_leads_with_ood_accuracy_and_the_critical_shift(tiny, tiny_report):
    """The first figures of a report are the OOD-accuracy and critical-shift phase diagrams; the
    shift figure draws one accuracy point per ladder shift, and its numbers are the shifts table's."""
    text = tiny_report.read_text()
    first = [line for line in text.splitlines() if line.startswith("![")][:3]
    assert "phase_ood_acc" in first[0] and "phase_critical_shift" in first[1] and "ood_acc_vs_shift" in first[2], first
    shifts = tiny.shifts
    assert len(shifts) == 10 * len(tiny.runs) and set(shifts["run_id"]) == set(tiny.runs["run_id"])
    panel = next(p for p in build_figures(tiny) if p.stem == "ood_acc_vs_shift")
    ax = panel.figure.axes[0]
    line = ax.get_lines()[0]
    assert ax.get_xscale() == "log" and len(line.get_xdata()) == 10


def test_censored_critical_shift_cells_are_marked():
    from analysis.phase import phase_figure, phase_table

    runs = pd.DataFrame({"a": ["x", "x", "y", "y", "z", "z"], "b": ["p"] * 6,
                         "critical_shift": [64.0, 64.0, 2.0, 2.5, 64.0, 3.0],
                         "critical_shift_censored": [1.0, 1.0, 0.0, 0.0, 1.0, 0.0],
                         "diverged": [False] * 6, "id_acc": [1.0] * 6})
    table = phase_table(runs, "a", "b", "critical_shift")
    fig = phase_figure(table, "a", "b", "critical_shift")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[0] == "> 64.0" and texts[1].startswith("2.25") and texts[2].startswith("≥ 33.5"), texts


def band_and_span(ax) -> tuple[float, float]:
    """Read from the artists: the widest band (fill_between) or error bar on the panel, and the
    range its data lines span."""
    from matplotlib.collections import LineCollection, PolyCollection

    ys = [np.asarray(ln.get_ydata(), dtype=float) for ln in ax.get_lines()
          if ln.get_transform() is ax.transData and ln.get_linestyle() not in ("None", "none", "")]
    ys = np.concatenate(ys) if ys else np.array([])
    ys = ys[np.isfinite(ys)]
    widest = 0.0
    for coll in ax.collections:
        if isinstance(coll, PolyCollection):
            for path in coll.get_paths():
                v = path.vertices
                for x in np.unique(v[:, 0]):
                    at = v[v[:, 0] == x, 1]
                    widest = max(widest, float(at.max() - at.min()))
        elif isinstance(coll, LineCollection):
            for seg in coll.get_segments():
                if len(seg) == 2 and seg[0][0] == seg[1][0]:
                    widest = max(widest, abs(float(seg[1][1] - seg[0][1])))
    return widest, float(ys.max() - ys.min()) if len(ys) else np.nan


def check_figures(panels) -> int:
    """The figure check of issue 31, read from the matplotlib objects of each figure: panels of one
    metric share their y-limits across rows (curves) and one colour scale across facets (phase
    diagrams), and a panel whose band or error bar is wider than the range its lines span carries
    the note that says so. Returns how many figures it checked."""
    from matplotlib.image import AxesImage

    from analysis.style import NOISE_NOTE

    checked = 0
    for panel in panels:
        fig = panel.figure
        images = [im for ax in fig.axes for im in ax.get_images() if isinstance(im, AxesImage)]
        if images:  # a phase diagram: one norm for every facet
            assert len({(im.norm.vmin, im.norm.vmax) for im in images}) == 1, panel.stem
            checked += 1
            continue
        grid = [ax for ax in fig.axes if ax.get_visible() and ax.get_lines()]
        by_column: dict = {}
        for ax in grid:
            spec = ax.get_subplotspec()
            if spec is not None:
                by_column.setdefault((spec.colspan.start, ax.get_ylabel()), []).append(ax.get_ylim())
            widest, span = band_and_span(ax)
            if widest > span * (1 + 1e-9):
                assert any(t.get_gid() == NOISE_NOTE for t in ax.texts), (panel.stem, ax.get_ylabel(), widest, span)
        for key, limits in by_column.items():
            assert len(set(limits)) == 1, (panel.stem, key, limits)
        checked += 1
    return checked


def test_figures_share_one_scale_per_metric(tiny):
    """The figure check on every figure the report draws of the tiny grid."""
    assert check_figures(build_figures(tiny)) >= 8


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's grid (quickstart) as shipped but for 2 seeds and 400 steps: the demo's figures."""
    text = (REPO / "sweeps" / "grids" / "quickstart.toml").read_text()
    assert text.count("seeds = 4\n") == 1 and text.count("steps = 2000\n") == 1
    base = tmp_path_factory.mktemp("demo")
    (base / "quickstart.toml").write_text(text.replace("seeds = 4\n", "seeds = 2\n")
                                          .replace("steps = 2000\n", "steps = 400\n"))
    run_grid(load_grid(str(base / "quickstart.toml")), base / "quickstart", progress=False)
    return load(base / "quickstart")


def test_the_demos_figures_read_right(demo):
    """The figure check on the demo's figures, and the note where it applies: the zero-mean
    control's drift is within its seeds' spread."""
    from analysis.style import NOISE_NOTE

    panels = build_figures(demo)
    assert check_figures(panels) >= 6
    notes = [p.stem for p in panels for ax in p.figure.axes for t in ax.texts if t.get_gid() == NOISE_NOTE]
    assert notes, "the zero-mean control's flat curves carry the note"
    # the zero-mean control is a row of its own in every curves figure, never pooled into ReLU's
    for stem in ("curves_background_by_activation", "curves_loss_norm"):
        fig = next(p.figure for p in panels if p.stem == stem)
        titles = {ax.get_title(loc="left") for ax in fig.axes} - {""}
        assert titles == {"background = mean 0.5", "background = mean 0"}, (stem, titles)


def test_pooled_axes_never_mix_training_backgrounds(tiny):
    """An axis that moves the training background is a row of the curves figures (or the rows are
    the training background itself), so no line averages a zero-mean control into its network."""
    from analysis.report import TRAINED_ON, moves_training_background, training_rows

    assert moves_training_background(tiny.curves, "background")
    assert not moves_training_background(tiny.curves, "width")
    # an axis of (bg_train, bg_ood) pairs pooled away: the rows become the training background
    mixed = tiny.curves.assign(pair=tiny.curves["background"].astype(str) + "/" + tiny.curves["width"].astype(str))
    rowed, row, pooled = training_rows(mixed, None, ["pair"])
    assert row == TRAINED_ON and rowed[TRAINED_ON].nunique() == 2 and pooled == ["pair"]


def test_the_zero_mean_control_reads_nothing_to_cancel(tiny):
    """The net class gradient along the background of the zero-mean control is far below the
    contaminated ReLU network's at the drift's peak, in absolute units (the ratio alone misleads)."""
    c = tiny.curves
    relu = c[(c["activation"] == "relu") & (c["background"] == "mean 0.5")].groupby("step")["bg_grad_net"].mean()
    zero = c[(c["activation"] == "relu") & (c["background"] == "mean 0")].groupby("step")["bg_grad_net"].mean()
    peak = relu.idxmax()
    assert zero.loc[peak] * 5 <= relu.loc[peak], (relu.loc[peak], zero.loc[peak])
