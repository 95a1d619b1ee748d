"""Whole grids in few programs: the planner, exact padding through the engine, train once /
evaluate many, the device model, and the results-version guard."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from contamination.ids import RESULTS_VERSION
from contamination.presets import preset
from contamination.simulate import simulate
from sweeps.__main__ import main as sweeps_main
from sweeps.engine import describe_plan, run_grid
from sweeps.grid import load
from sweeps.plan import Bucket, Planning, bucketize, networks_of

from conftest import IDENTITY, TINY_FIXED, identity

ROOT = Path(__file__).resolve().parent.parent
METRICS = ["train_loss", "id_loss", "id_acc", "ood_loss", "ood_acc", "id_margin", "ood_margin", "core_norm",
           "bg_norm", "bg_signed", "act_asym"]

SHAPES = """
description = "widths x feature dimensions x sample sizes"
preset = "toy"
seeds = 2
[fixed]
steps = 30
log_every = 10
lr = 0.01
[axes]
width = [6, 16]
dims = [
  {label = "small", core_dim = 2, bg_dim = 3, input_dim = 9, n_train = 24, n_test = 20},
  {label = "large", core_dim = 4, bg_dim = 4, input_dim = 24, n_train = 40, n_test = 32},
]
"""


def write(tmp_path: Path, text: str, name: str = "g") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def final(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "runs").set_index("run_id")[METRICS].sort_index()


@pytest.mark.slow  # (by default: test_depth_classes.py's one-program grid against runs alone, test_padding.py)
@identity
def test_one_program_equals_one_program_per_shape(tmp_path):
    grid = load(str(write(tmp_path, SHAPES)))
    plan = describe_plan(grid, tmp_path / "x", memory_budget=None, min_efficiency=0.0)
    assert "1 compiled programs" in plan and "m=16 d0=4+4 d=24 n=40/32" in plan
    one = run_grid(grid, tmp_path / "one", min_efficiency=0.0, progress=False)
    exact = run_grid(grid, tmp_path / "exact", min_efficiency=1.0, progress=False)
    assert one.compiles == 1 and exact.compiles == 4
    assert [b["padding_efficiency"] for b in exact.buckets] == [1.0] * 4 and one.buckets[0]["padding_efficiency"] < 0.5
    a, b = final(tmp_path / "one"), final(tmp_path / "exact")
    assert list(a.index) == list(b.index) and len(a) == 8
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), **IDENTITY)


TINY_GRID = """
description = "one small program"
preset = "toy"
seeds = 2
[fixed]
""" + TINY_FIXED + """width = 8
"""


SHIFTS = """
description = "train once, evaluate many"
preset = "toy"
seeds = 2
[fixed]
""" + TINY_FIXED + """width = 8
[axes]
activation = ["relu", "tanh"]
shift = [{label = "none", bg_ood = [0.0, 1.0]}, {label = "flip", bg_ood = [-1.0, 0.0]},
         {label = "far", bg_ood = [-2.0, -1.0]}]
"""


def test_shipped_activation_vs_shift_trains_96_networks_for_576_runs():
    runs = load("activation_vs_shift").runs()
    nets = networks_of(runs)
    assert (len(runs), len(nets)) == (576, 96) and all(len(n.runs) == 6 for n in nets)


@pytest.mark.slow  # (by default: test_padding.py::test_evaluation_variants_equal_separate_runs)
@identity
def test_shift_runs_share_a_network_and_equal_runs_alone(tmp_path):
    grid = load(str(write(tmp_path, SHIFTS)))
    s = run_grid(grid, tmp_path / "out", progress=False)
    assert (s.done, s.networks) == (12, 4) and "12 runs trained (4 networks)" in s.line()
    inv = json.loads((tmp_path / "out" / "manifest.json").read_text())["invocations"][-1]
    assert inv["networks_trained"] == 4 and inv["planned"] == 12
    df = pd.read_parquet(tmp_path / "out" / "runs")
    assert df.groupby("network_id").size().tolist() == [3] * 4
    # training metrics are shared by the three shifts of a network; OOD metrics are not
    assert (df.groupby("network_id")["id_loss"].nunique() == 1).all()
    assert (df.groupby("network_id")["ood_loss"].nunique() == 3).all()
    by_id = df.set_index("run_id")
    for r in grid.runs():
        alone = simulate(r.config)["final"]
        np.testing.assert_allclose(by_id.loc[r.run_id, METRICS].to_numpy(float),
                                   [float(alone[k]) for k in METRICS], **IDENTITY)
    # and through the single-run command, as a user would
    r = grid.runs()[-1]
    args = [f"--set={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in r.config.to_dict().items()]
    res = subprocess.run([sys.executable, "-m", "contamination.run", "--preset", "toy", "--x64", *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    cli = json.loads(res.stdout)["final"]
    np.testing.assert_allclose(by_id.loc[r.run_id, METRICS].to_numpy(float), [cli[k] for k in METRICS], **IDENTITY)
    # the results version is recorded in the manifest and every file's metadata
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["results_version"] == RESULTS_VERSION
    for table in ("runs", "curves"):
        meta = pq.read_schema(next((tmp_path / "out" / table).glob("*.parquet"))).metadata[b"contamination"]
        assert json.loads(meta)["results_version"] == RESULTS_VERSION
    assert inv["compile_wait_s"] >= 0 and all("predicted_run_s" in b and "run_s" in b for b in inv["buckets"])


@pytest.mark.parametrize("old", [{"results_version": 1}, {}])
def test_results_of_another_simulator_version_are_refused(tmp_path, capsys, old):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "x.parquet").write_bytes(b"old results")
    (out / "manifest.json").write_text(json.dumps({"grid": "g", **old}))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    path = write(tmp_path, SHIFTS)
    for args in (["run", "--no-progress"], ["plan"]):
        assert sweeps_main([args[0], str(path), "--out", str(out), *args[1:]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "results version 1" in err and f"version {RESULTS_VERSION}" in err
        assert "--out" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


# --- the planner, with a device model of chosen constants --------------------------

def Model(compile_s, flop_rate=1e11, step_s=1e-5, cache_bytes=None, flop_rate_large=None):
    """A device model of chosen constants (nothing recorded, so the constants are used)."""
    from sweeps.calibrate import DeviceModel
    return DeviceModel("test", flop_rate=flop_rate, step_s=step_s, calibration_compile_s=compile_s,
                       cache_bytes=cache_bytes, flop_rate_large=flop_rate_large)


GRID = SHAPES.replace("width = [6, 16]", "width = [8, 16, 32, 64]")  # 8 shapes


def plan(tmp_path, model, min_efficiency=None, in_store=None):
    nets = networks_of(load(str(write(tmp_path, GRID))).runs())
    p = Planning(2**30, 2, model, min_efficiency, None, in_store or (lambda s, c: False))
    return bucketize(nets, p)


def total(buckets):
    return sum(b.predicted_s for b in buckets)


def test_planner_trades_compiles_for_padding(tmp_path):
    assert len(plan(tmp_path, Model(compile_s=1e6))) == 1  # compiling dominates: one program
    # compiling is free and a step costs only its FLOPs: no padding at all
    assert len(plan(tmp_path, Model(compile_s=0.0, step_s=0.0))) == 8
    # the program store makes compiling free too
    assert len(plan(tmp_path, Model(compile_s=1e6, step_s=0.0), in_store=lambda s, c: True)) == 8
    # a per-step latency floor (an accelerator's launches) is paid per program: tiny runs share one
    assert len(plan(tmp_path, Model(compile_s=0.0, step_s=1.0))) == 1
    for compile_s in (0.01, 0.1, 1.0, 5.0):
        m = Model(compile_s)
        auto = plan(tmp_path, m)
        assert total(auto) <= min(total(plan(tmp_path, m, 0.0)), total(plan(tmp_path, m, 1.0))) + 1e-9
        assert sorted(r.run_id for b in auto for r in b.runs) == sorted(r.run_id for r in load(str(tmp_path / "g.toml")).runs())


def test_chunks_stay_within_the_cache_where_the_rate_drops_past_it(tmp_path):
    """A CPU whose FLOP rate drops once a device's share of a chunk leaves its caches (measured:
    166 GFLOP/s at 8.8 MiB per device, 108 at 53 MiB): the planner takes smaller chunks that stay
    within `cache_bytes` when they are predicted faster, and the prediction charges the slow rate
    to chunks that do not fit."""
    flat = plan(tmp_path, Model(1.0), 0.0)
    assert len(flat) == 1 and flat[0].n_chunks == 1  # the memory budget holds every network at once
    per_run = flat[0].run_memory
    cache = 4.5 * per_run  # four networks per device fit
    dropping = Model(1.0, cache_bytes=cache, flop_rate_large=0.5e11)
    cached = plan(tmp_path, dropping, 0.0)[0]
    assert cached.chunk_size == 8 and cached.chunk_bytes_per_device <= cache
    assert cached.n_chunks == math.ceil(len(cached.networks) / 8)
    assert sorted(r.run_id for r in cached.runs) == sorted(r.run_id for r in flat[0].runs)
    # predicted at the fast rate, and faster than the one large chunk at the slow rate
    whole = Bucket(cached.static, cached.networks, chunk_size=flat[0].chunk_size, n_devices=2)
    assert dropping.run_s(whole) - Model(1.0).run_s(whole) == pytest.approx(whole.executed_flops / 1e11)
    assert cached.predicted_run_s < dropping.run_s(whole)
    # no drop measured (an accelerator), or a per-chunk cost that outweighs it: one large chunk
    assert plan(tmp_path, Model(1.0, cache_bytes=cache, flop_rate_large=1e11), 0.0)[0].n_chunks == 1
    assert plan(tmp_path, Model(1.0, step_s=10.0, cache_bytes=cache, flop_rate_large=0.5e11), 0.0)[0].n_chunks == 1


def test_min_efficiency_bounds_padding(tmp_path):
    for e in (0.3, 0.6, 0.9):
        assert all(b.efficiency >= e - 1e-9 for b in plan(tmp_path, Model(1.0), e))
    assert len(plan(tmp_path, Model(1.0), 1.0)) == 8 and len(plan(tmp_path, Model(1.0), 0.0)) == 1


def test_device_model_is_measured_once_and_cached(tmp_path, monkeypatch):
    import jax
    from jax.sharding import Mesh

    from contamination.spec import static_spec
    from sweeps import calibrate

    mesh = Mesh(np.array(jax.local_devices()[:1]), ("cfg",))
    monkeypatch.delenv("CONTAMINATION_DEVICE_MODELS", raising=False)
    assert calibrate.model_dir(tmp_path) == tmp_path / "calibration"  # next to the program store
    model = calibrate.load_or_measure(mesh, calibrate.model_dir(tmp_path))
    assert model.flop_rate > 1e8 and 0 <= model.step_s < 0.1 and 0 < model.calibration_compile_s < 120
    # a rate measured past the caches only where it dropped there
    assert (model.cache_bytes is None) == (model.flop_rate_large is None)
    assert model.cache_bytes is None or (model.cache_bytes > 0 and model.flop_rate_large < model.flop_rate)
    files = list((tmp_path / "calibration").glob("*.json"))
    assert len(files) == 1

    def no_measure(mesh):
        raise AssertionError("measured again")

    monkeypatch.setattr(calibrate, "measure", no_measure)
    again = calibrate.load_or_measure(mesh, tmp_path / "calibration")
    assert again.flop_rate == model.flop_rate
    spec = static_spec(preset("toy"))
    again.record_compile(spec, 3.0)
    again.record_compile(spec, 5.0)
    assert calibrate.load_or_measure(mesh, tmp_path / "calibration").compile_s(spec) == 4.0  # the recorded median
    # a program compiled with other options (XLA's older emitters) is predicted apart: from the
    # default's median scaled by their measured share until its own compiles are recorded
    from contamination.lowering import LEGACY_COMPILE_SHARE, LEGACY_EMITTERS

    assert again.compile_s(spec, LEGACY_EMITTERS) == pytest.approx(4.0 * LEGACY_COMPILE_SHARE)
    again.record_compile(spec, 1.0, LEGACY_EMITTERS)
    again.record_compile(spec, 2.0, LEGACY_EMITTERS)
    reloaded = calibrate.load_or_measure(mesh, tmp_path / "calibration")
    assert reloaded.compile_s(spec, LEGACY_EMITTERS) == 1.5 and reloaded.compile_s(spec) == 4.0


def test_a_new_machine_plans_from_the_shipped_default_and_refits_it(tmp_path, monkeypatch):
    """No measurement on the critical path: a machine without a model of its own plans from its
    platform's shipped default (scaled by its cores), records every bucket into its own copy, and
    `--calibrate` replaces the constants by a measurement while keeping the records."""
    import jax
    from jax.sharding import Mesh

    from sweeps import calibrate
    from sweeps.environment import usable_cores

    mesh = Mesh(np.array(jax.local_devices()[:1]), ("cfg",))
    directory = tmp_path / "calibration"

    def no_measure(mesh):
        raise AssertionError("measured on the critical path")

    monkeypatch.setattr(calibrate, "measure", no_measure)
    model = calibrate.load(mesh, directory)
    shipped = json.loads(calibrate.DEFAULTS_FILE.read_text())["platforms"]["cpu"]
    assert model.source.startswith("default: cpu")
    assert model.flop_rate == pytest.approx(shipped["flop_rate_per_unit"] * usable_cores())
    assert calibrate.cpu_name() in model.device  # CPU kinds get models of their own
    assert not list(directory.glob("*.json"))  # nothing written until something is recorded
    grid = load(str(write(tmp_path, TINY_GRID)))
    monkeypatch.setenv("CONTAMINATION_DEVICE_MODELS", str(directory))
    s = run_grid(grid, tmp_path / "out", progress=False, cache_dir=str(tmp_path / "cache"))
    saved = calibrate.load(mesh, directory)
    assert saved.source == model.source and len(saved.recorded_runs) == len(s.buckets) >= 1
    # each compile recorded under its experiment and the options it was compiled with
    compiled = [b for b in s.buckets if b["program"] == "compiled"]
    assert compiled and set(saved.recorded_compile_s) == {
        calibrate.compile_key(SimpleNamespace(experiment=b["static"]["experiment"]),
                              tuple(b["xla_compile_options"].items())) for b in compiled}
    assert "default: cpu" in describe_plan(grid, tmp_path / "out2", memory_budget=None, min_efficiency=None,
                                           cache_dir=str(tmp_path / "cache"))
    monkeypatch.undo()
    monkeypatch.setattr(calibrate, "measure", lambda mesh: dataclasses.replace(model, source="measured",
                                                                               flop_rate=1.0, recorded_runs=[]))
    measured = calibrate.load_or_measure(mesh, directory, again=True)
    assert measured.source == "measured" and measured.flop_rate == 1.0
    assert measured.recorded_runs == saved.recorded_runs
    assert calibrate.load(mesh, directory).source == "measured"


def test_a_later_plan_loads_a_program_stored_at_another_chunk_size(tmp_path):
    """Programs differ only in their chunk size: a later plan of fewer networks (a refinement
    round, a re-run with another budget) runs at a stored chunk size instead of compiling its
    own, where the padding costs less than a compile; where it does not, it compiles."""
    from sweeps.plan import make_bucket

    cache = str(tmp_path / "cache")
    big = load(str(write(tmp_path, TINY_GRID.replace("seeds = 2", "seeds = 8"), "big")))
    first = run_grid(big, tmp_path / "a", progress=False, cache_dir=cache)
    assert [b["program"] for b in first.buckets] == ["compiled"]
    chunk = first.buckets[0]["chunk_size"]
    small = load(str(write(tmp_path, TINY_GRID.replace("seeds = 2", "seeds = 3"), "small")))
    second = run_grid(small, tmp_path / "b", progress=False, cache_dir=cache)
    assert [(b["program"], b["chunk_size"]) for b in second.buckets] == [("store", chunk)]
    assert chunk > 4  # an own plan would have chunked three networks by 4 (two devices) or fewer
    shared = pd.read_parquet(tmp_path / "a" / "runs").set_index("run_id")
    again = pd.read_parquet(tmp_path / "b" / "runs").set_index("run_id")
    pd.testing.assert_frame_equal(again[METRICS[:6]], shared.loc[again.index, METRICS[:6]])
    # the choice is the predicted one: a free compile keeps the bucket's own chunk size
    nets = networks_of(small.runs())
    held = lambda static: frozenset({chunk})  # noqa: E731
    p = Planning(2**30, 2, Model(compile_s=1e6), None, None, lambda s, c: c in held(s), held)
    assert make_bucket(nets, p).chunk_size == chunk
    p = Planning(2**30, 2, Model(compile_s=0.0, step_s=1.0), None, None, lambda s, c: c in held(s), held)
    assert make_bucket(nets, p).chunk_size != chunk


def test_calibration_timings_are_interleaved_and_take_the_least():
    """Interference that comes and goes (a shared machine) must neither inflate one measurement
    nor make two of them differ: each is the least over rounds that call each in turn."""
    import time

    import jax.numpy as jnp

    from sweeps import calibrate

    order, slow = [], {"a": [0.05, 0.0, 0.05, 0.05, 0.05, 0.05], "b": [0.05, 0.05, 0.05, 0.0, 0.05, 0.05]}

    def call(name, base):
        def f():
            order.append(name)
            time.sleep(base + slow[name][sum(1 for o in order if o == name) - 1])
            return jnp.zeros(())
        return f

    a, b = calibrate._times(call("a", 0.01), call("b", 0.02), rounds=5)
    assert order == ["a", "b"] + ["a", "b"] * 5  # a warm-up call each, then in turn
    assert 0.01 <= a < 0.04 and 0.02 <= b < 0.05  # the quiet round counts, not the slow ones


def test_training_seconds_are_fitted_to_recorded_buckets():

    from sweeps.calibrate import MIN_RECORDED_RUNS, DeviceModel, nnls

    x = nnls(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.array([2.0, -1.0, 1.0]))
    assert x[1] == 0 and x[0] > 0  # the constraint binds
    from contamination.spec import static_spec

    def bucket(chunks, flops, steps=100):
        return SimpleNamespace(static=static_spec(preset("toy", steps=steps)), n_chunks=chunks, executed_flops=flops)

    model = DeviceModel("test", flop_rate=1e12, step_s=1e-6, calibration_compile_s=1.0)
    truth = (0.2, 1.7)  # seconds per chunk, multiple of the calibrated step time

    def seconds(chunks, flops, steps):
        return truth[0] * chunks + truth[1] * (chunks * steps * 1e-6 + flops / 1e12)

    shapes = [(1, 1e9, 100), (2, 5e10, 300), (4, 1e11, 50), (1, 3e11, 1000), (8, 2e10, 100), (3, 7e11, 20)]
    assert model.run_s(bucket(1, 1e9)) == pytest.approx(100 * 1e-6 + 1e9 / 1e12)  # the constants, at first
    for k, shape in enumerate(shapes):
        model.record_run(bucket(*shape), seconds(*shape))
        if k + 1 < MIN_RECORDED_RUNS:
            assert model.run_coefficients == (0.0, 1.0)
    np.testing.assert_allclose(model.run_coefficients, truth, rtol=1e-6)
    assert model.run_s(bucket(5, 4e11)) == pytest.approx(seconds(5, 4e11, 100))


def test_fitted_training_seconds_keep_flops_costly_beyond_the_recorded_buckets():
    """Buckets recorded on this machine (tests and a small sweep: chunks, chunk-steps, FLOPs,
    seconds), all far smaller than a whole-grid program. A free per-FLOP coefficient fitted to
    them put a 22 TFLOP bucket at 0.9 s; the fit must keep the calibrated FLOP cost."""

    from contamination.spec import static_spec
    from sweeps.calibrate import DeviceModel

    model = DeviceModel("cpu x2", flop_rate=1.0018e11, step_s=6.56e-06, calibration_compile_s=7.1)
    for rec in [[3, 120, 21897216, 0.0743], [3, 120, 32526336, 0.0718], [3, 120, 43155456, 0.0679],
                [3, 120, 21897216, 0.0623], [3, 120, 32526336, 0.0621], [3, 120, 43155456, 0.0526],
                [1, 2000, 144136208384, 0.926]]:
        model.recorded_runs.append([float(v) for v in rec])
    big = SimpleNamespace(static=static_spec(preset("toy", steps=2000)), n_chunks=1, executed_flops=2.2e13)
    assert model.run_s(big) > 0.5 * 2.2e13 / model.flop_rate
