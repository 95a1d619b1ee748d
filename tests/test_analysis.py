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
    assert "*projection on the background mean (left) and class gradient imbalance (right) by activation.*" in text
    assert f"{COLLAPSE_HEADER}:" in text  # width is an axis (lr fixed): the collapse figure and its scores


NEW_METRICS = ["bg_mean_proj", "bg_shift_rms", "contaminated_frac", "bg_grad_balance"]


def test_report_without_new_metric_columns(tiny):
    """Older results (none of the new columns) and distill-like ones (no bg_grad_balance) still report."""
    assert set(NEW_METRICS) <= set(tiny.runs) and set(NEW_METRICS) <= set(tiny.curves)
    no_balance = dataclasses.replace(tiny, runs=tiny.runs.drop(columns=["bg_grad_balance"]),
                                     curves=tiny.curves.drop(columns=["bg_grad_balance"]))
    panels = {p.stem: p for p in build_figures(no_balance)}
    assert panels["curves_background_by_activation"].caption == "projection on the background mean by activation"
    assert "phase_bg_mean_proj_width_background_by_activation" in panels
    old = dataclasses.replace(tiny, runs=tiny.runs.drop(columns=NEW_METRICS),
                              curves=tiny.curves.drop(columns=NEW_METRICS))
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
def test_cli_bad_names_one_line_exit_2(results_root, args, needle):
    out = _cli("phase", results_root / "tiny", *args)
    assert out.returncode == 2
    assert needle in out.stderr and out.stderr.count("\n") == 1, out.stderr
    if "metric" in needle:
        assert "allowed: " in out.stderr and "ood_acc" in out.stderr


def test_cli_report_by_name_and_unknown_name(results_root):
    out = _cli("report", "tiny", cwd=results_root.parent)
    assert out.returncode == 0, out.stderr
    assert (results_root / "tiny" / "report.md").is_file() and "report.md" in out.stdout
    assert any((results_root / "tiny" / "figures").glob("*.svg"))
    out = _cli("report", "nope", cwd=results_root.parent)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "diverge, tiny" in out.stderr
