"""The sweep engine: expansion, invariance, devices, crash safety, bad input, schema."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from contamination import lowering
from sweeps.__main__ import main as sweeps_main
from sweeps.engine import run_grid
from sweeps.grid import load
from sweeps.results import recover
from sweeps.storage import location

from conftest import IDENTITY, TINY_FIXED, identity

ROOT = Path(__file__).resolve().parent.parent

TINY = """
description = "tiny test grid"
preset = "toy_theory"
seeds = 3

[fixed]
""" + TINY_FIXED + """
[axes]
width = [8, 12, 16]
activation = ["relu", "sigmoid"]
background = [{label = "shifted", bg_train = [0.0, 1.0]}, {label = "centred", bg_train = [-0.5, 0.5]}]
"""


def write_grid(tmp_path: Path, text: str = TINY, name: str = "tiny") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


def read(out: Path, table: str = "runs") -> pd.DataFrame:
    return pd.read_parquet(out / table)


def metrics_by_run(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["id_loss", "ood_loss", "id_acc", "ood_acc", "bg_signed", "bg_norm", "core_norm", "act_asym", "train_loss"]
    return df.set_index("run_id")[cols].sort_index()


def assert_same_metrics(a: pd.DataFrame, b: pd.DataFrame, **tol) -> None:
    """Equal metrics run by run: at the identity tolerance (float64) unless `tol` says otherwise."""
    a, b = metrics_by_run(a), metrics_by_run(b)
    assert list(a.index) == list(b.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), **(tol or IDENTITY))


# --- 1. expansion ------------------------------------------------------------------

def test_expansion_counts_labels_and_ids(tmp_path):
    grid = load(str(write_grid(tmp_path)))
    runs = grid.runs()
    assert len(runs) == 3 * 2 * 2 * 3
    assert len({r.run_id for r in runs}) == len(runs)
    assert len({r.config_id for r in runs}) == 12
    assert {r.labels["background"] for r in runs} == {"shifted", "centred"}
    centred = [r for r in runs if r.labels["background"] == "centred"]
    assert all(r.config.bg_train == (-0.5, 0.5) for r in centred)
    assert grid.varying_fields == ["bg_train", "width", "activation"]
    # same seed, same config -> same config_id across seeds
    by_cfg = {}
    for r in runs:
        by_cfg.setdefault(r.config_id, set()).add(r.config.seed)
    assert all(s == {0, 1, 2} for s in by_cfg.values())
    # ids are stable across processes (no salted hashing)
    code = ("import sys; from sweeps.grid import load; "
            "print('\\n'.join(r.run_id + ' ' + r.config_id for r in load(sys.argv[1]).runs()))")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tiny.toml")], capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.split("\n")
    assert other[: len(runs)] == [f"{r.run_id} {r.config_id}" for r in runs]


def test_scales_override(tmp_path):
    text = TINY + "\n[scales.big]\nseeds = 5\nfixed = {steps = 80}\naxes = {width = [32]}\n"
    grid = load(str(write_grid(tmp_path, text)), scale="big")
    runs = grid.runs()
    assert len(runs) == 1 * 2 * 2 * 5 and all(r.config.steps == 80 and r.config.width == 32 for r in runs)
    assert len(load(str(tmp_path / "tiny.toml")).runs()) == 36


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "sweeps" / "grids").glob("*.toml")))
def test_shipped_grids_load(name):
    grid = load(name)
    assert grid.runs() and grid.description
    for scale in re.findall(r"^\[scales\.(\w+)\]", grid.text, flags=re.M):
        assert load(name, scale).runs()


# --- 2. invariance ------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny grid run once with default planning (padding may merge widths)."""
    tmp = tmp_path_factory.mktemp("ref")
    out = tmp / "out"
    summary = run_grid(load(str(write_grid(tmp))), out, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def reference64(tmp_path_factory):
    """The tiny grid in float64, default planning: what chunked, bucketed and sharded runs equal."""
    from contamination.numerics import float64

    tmp = tmp_path_factory.mktemp("ref64")
    out = tmp / "out"
    with float64():
        summary = run_grid(load(str(write_grid(tmp))), out, progress=False)
    return out, summary


# x64: a subprocess computing in float64, as the `reference64` it is compared with
X64 = {"JAX_ENABLE_X64": "1"}


@pytest.mark.slow  # (by default: test_planner.py's one program against one per shape, test_batching.py)
@identity
def test_chunking_and_bucketing_do_not_change_results(reference64, tmp_path):
    ref_out, ref_summary = reference64
    grid = load(str(write_grid(tmp_path)))
    # no padding (one bucket per width) and chunks of one run
    s1 = run_grid(grid, tmp_path / "a", min_efficiency=1.0, chunk_size=1, progress=False)
    # everything of a shape padded into the widest program, odd chunk size
    s2 = run_grid(grid, tmp_path / "b", min_efficiency=0.0, chunk_size=5, progress=False)
    assert s1.compiles == 3 * 2 and s2.compiles == 2
    assert {b["runs"] for b in s1.buckets} == {6} and all(b["padding_efficiency"] == 1.0 for b in s1.buckets)
    assert any(b["padding_efficiency"] < 1.0 for b in s2.buckets)
    ref = read(ref_out)
    assert_same_metrics(read(tmp_path / "a"), ref)
    assert_same_metrics(read(tmp_path / "b"), ref)
    ca, cr = read(tmp_path / "a", "curves"), read(ref_out, "curves")
    key = ["run_id", "step"]
    ca, cr = ca.sort_values(key).reset_index(drop=True), cr.sort_values(key).reset_index(drop=True)
    np.testing.assert_allclose(ca["bg_signed"], cr["bg_signed"], **IDENTITY)


# --- 3. four devices ------------------------------------------------------------------

FOUR_DEVICES = r"""
import json, sys
import jax
from jax.sharding import Mesh
import numpy as np
from sweeps.grid import load
from sweeps.engine import run_grid
from sweeps.plan import Planning, bucketize, networks_of
from sweeps.programs import chunk_inputs, compile_bucket
grid = load(sys.argv[1])
assert len(jax.local_devices()) == 4, jax.local_devices()
summary = run_grid(grid, __import__("pathlib").Path(sys.argv[2]), progress=False)
# inspect one chunk's output placement
mesh = Mesh(np.array(jax.local_devices()), ("cfg",))
b = bucketize(networks_of(grid.runs()), Planning(2**30, 4, None, min_efficiency=0.8))[0]
prog = compile_bucket(b.static, b.chunk_size, mesh)
compiled, sharding = prog.compiled, prog.sharding
out = compiled(chunk_inputs(b.static, b.chunk_size, b.chunks()[0], sharding))
leaf = out["final"]["id_loss"]
print(json.dumps({"chunk": b.chunk_size, "devices": len(leaf.sharding.device_set),
                  "shards": [list(s.data.shape) for s in leaf.addressable_shards],
                  "buckets": summary.buckets}))
"""


@identity
def test_four_devices_equal_one_device(reference64, tmp_path):
    ref_out, _ = reference64
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", **X64}
    env.pop("JAX_NUM_CPU_DEVICES", None)  # (conftest's one device would override the forced four)
    grid = write_grid(tmp_path)
    res = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(grid), str(tmp_path / "out4")],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["devices"] == 4
    assert len(info["shards"]) == 4 and all(s == [info["chunk"] // 4, 1] for s in info["shards"])  # (networks, variants)
    assert all(b["chunk_size"] % 4 == 0 for b in info["buckets"])
    assert_same_metrics(read(tmp_path / "out4"), read(ref_out))
    manifest = json.loads((tmp_path / "out4" / "manifest.json").read_text())
    assert manifest["local_device_count"] == 4


@pytest.mark.slow  # a guard for the CPU deadlock of LAPACK custom calls; it compiles every preset's program
def test_programs_hold_no_custom_calls():
    """No LAPACK (or other) custom calls in any preset's compiled program: a vmapped QR in the
    data deadlocked on a 2-core CPU when two forced host devices ran it at once."""
    import jax

    from contamination.presets import PRESETS, preset
    from contamination.spec import stack_traced, static_spec
    from contamination.train import make_run

    for name in PRESETS:
        cfgs = [preset(name, seed=i, steps=2, log_every=1) for i in range(2)]
        hlo = jax.jit(jax.vmap(make_run(static_spec(cfgs[0])))).lower(stack_traced(cfgs)).compile().as_text()
        assert "custom_call_target" not in hlo, (name, sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo))))


TWO_DEVICES_GRID = """
description = "two host devices at the sizes that once deadlocked"
preset = "toy"
seeds = 16
[fixed]
n_train = 256
n_test = 256
input_dim = 64
core_dim = 8
bg_dim = 8
width = 64
steps = 10
log_every = 5
[axes]
lr = [0.001, 0.003]
"""


def test_two_host_devices_do_not_deadlock(tmp_path):
    grid = write_grid(tmp_path, TWO_DEVICES_GRID, "two")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CONTAMINATION_JAX_CACHE": str(tmp_path / "cache")}
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "sweeps", "run", str(grid), "--out", str(tmp_path / "out"), "--no-progress",
           "--host-devices", "2"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a sweep over two host devices hung")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(read(tmp_path / "out")) == 32
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["local_device_count"] == 2


@pytest.mark.slow  # six `plan` processes, each calibrating its device count; multi-device runs are tested above
def test_host_devices_default_one_per_core_capped_by_runs(tmp_path):
    from sweeps.environment import usable_cores

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    env.pop("JAX_NUM_CPU_DEVICES", None)

    def devices(text, *extra, **more_env):
        grid = write_grid(tmp_path, text, "hd")
        res = subprocess.run([sys.executable, "-m", "sweeps", "plan", str(grid), "--out", str(tmp_path / "o"), *extra],
                             capture_output=True, text=True, env={**env, **more_env}, cwd=ROOT, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        return int(re.search(r"devices: (\d+) x", res.stdout).group(1))

    one_run = TINY.replace("seeds = 3", "seeds = 1").replace("width = [8, 12, 16]", "width = [8]").replace(
        'activation = ["relu", "sigmoid"]', "").replace(
        'background = [{label = "shifted", bg_train = [0.0, 1.0]}, {label = "centred", bg_train = [-0.5, 0.5]}]', "")
    assert devices(TINY) == min(usable_cores(), 36)
    assert devices(one_run) == 1
    assert devices(TINY, "--host-devices", "3") == 3
    assert devices(TINY, XLA_FLAGS="--xla_force_host_platform_device_count=5") == 5  # the user's choice stands
    for bad in ("0", "two"):
        res = subprocess.run([sys.executable, "-m", "sweeps", "plan", str(tmp_path / "hd.toml"), "--host-devices", bad],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
        assert res.returncode == 2 and "--host-devices" in res.stderr and res.stdout == ""


# --- 3b. the program store -----------------------------------------------------------

# one bucket, so each store test compiles one program
ONE_PROGRAM = TINY.replace("width = [8, 12, 16]", "width = [16]").replace('activation = ["relu", "sigmoid"]', "")


def _programs(summary) -> list[str]:
    return [b["program"] for b in summary.buckets]


@identity
def test_warm_run_loads_its_programs_from_the_store(reference64, tmp_path, monkeypatch):
    from sweeps import executables

    grid = load(str(write_grid(tmp_path, ONE_PROGRAM)))
    cache = str(tmp_path / "cache")
    store = tmp_path / "cache" / "executables"
    first = run_grid(grid, tmp_path / "a", progress=False, cache_dir=cache)
    assert set(_programs(first)) == {"compiled"}
    files = sorted(store.glob("*.jaxexe"))
    assert len(files) == first.compiles
    warm = run_grid(grid, tmp_path / "b", progress=False, cache_dir=cache)
    assert set(_programs(warm)) == {"store"}
    # a loaded program computes exactly what the compiled one did
    cols = ["id_loss", "ood_loss", "bg_signed", "bg_norm", "act_asym", "train_loss"]
    a, b = read(tmp_path / "a").set_index("run_id").sort_index(), read(tmp_path / "b").set_index("run_id").sort_index()
    np.testing.assert_array_equal(a[cols].to_numpy(), b[cols].to_numpy())
    assert_same_metrics(b.reset_index(), read(reference64[0]).query("width == 16 and activation == 'relu'"))

    # a damaged entry is a miss: recompiled, same results, entry replaced
    files[0].write_bytes(b"not a program")
    again = run_grid(grid, tmp_path / "c", progress=False, cache_dir=cache)
    assert sorted(_programs(again)) == sorted(["compiled"] + ["store"] * (first.compiles - 1))
    assert files[0].stat().st_size > 100
    np.testing.assert_array_equal(read(tmp_path / "c").set_index("run_id").sort_index()[cols].to_numpy(),
                                  a[cols].to_numpy())

    # other code is another key: nothing stale is loaded
    monkeypatch.setattr(executables, "code_digest", lambda: "edited source")
    edited = run_grid(grid, tmp_path / "d", progress=False, cache_dir=cache)
    assert set(_programs(edited)) == {"compiled"}
    assert len(list(store.glob("*.jaxexe"))) == 2 * first.compiles

    # and the store can be turned off
    monkeypatch.setenv("CONTAMINATION_EXECUTABLE_CACHE", "0")
    off = run_grid(grid, tmp_path / "e", progress=False, cache_dir=cache)
    assert set(_programs(off)) == {"compiled"}
    assert len(list(store.glob("*.jaxexe"))) == 2 * first.compiles


def test_store_filled_after_a_jax_cache_hit_runs_in_a_new_process(tmp_path):
    """The store's programs are fresh compiles: one saved after JAX's own cache had the
    program (re-serialized from its cache entry) loaded but failed to run in the next process."""
    grid = write_grid(tmp_path, ONE_PROGRAM)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CONTAMINATION_JAX_CACHE": str(tmp_path / "cache")}

    def sweep(out):
        res = subprocess.run([sys.executable, "-m", "sweeps", "run", str(grid), "--out", str(tmp_path / out),
                              "--no-progress", "--host-devices", "1"],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "warning" not in res.stderr, res.stderr[-3000:]
        return [b["program"] for b in json.loads((tmp_path / out / "manifest.json").read_text())["invocations"][-1]["buckets"]]

    assert set(sweep("a")) == {"compiled"}
    # a tiny program on the CPU is compiled with XLA's older emitters (contamination/lowering.py),
    # recorded; the store keeps and loads it like any other
    buckets = json.loads((tmp_path / "a" / "manifest.json").read_text())["invocations"][-1]["buckets"]
    assert [b["xla_compile_options"] for b in buckets] == [dict(lowering.compiler_options(0, "cpu"))] * len(buckets)
    for f in (tmp_path / "cache" / "executables").glob("*.jaxexe"):
        f.unlink()  # JAX's cache holds the programs, the store does not
    assert set(sweep("b")) == {"compiled"}
    assert set(sweep("c")) == {"store"}
    assert_same_metrics(read(tmp_path / "c"), read(tmp_path / "a"))


def test_a_stored_program_that_fails_to_run_is_recompiled(tmp_path, monkeypatch, capsys):
    import jax

    from sweeps import executables

    class Broken:
        def __call__(self, *args):
            raise jax.errors.JaxRuntimeError("NOT_FOUND: Function fusion not found (simulated)")

    grid = load(str(write_grid(tmp_path, ONE_PROGRAM)))
    cache = str(tmp_path / "cache")
    run_grid(grid, tmp_path / "a", progress=False, cache_dir=cache)
    # the stored files load as programs that fail when called; once discarded, they are misses
    monkeypatch.setattr(executables, "load",
                        lambda store, key, devices: Broken() if (store / f"{key}.jaxexe").exists() else None)
    s = run_grid(grid, tmp_path / "b", progress=False, cache_dir=cache)
    assert {b["program"] for b in s.buckets} == {"compiled after a failed stored program"}
    assert "recompiling" in capsys.readouterr().err
    assert_same_metrics(read(tmp_path / "b"), read(tmp_path / "a"))


def test_program_key_covers_what_the_program_depends_on(tmp_path):
    import jax
    from jax.sharding import Mesh

    from contamination.presets import preset
    from contamination.spec import stack_traced, static_spec
    from sweeps import executables

    mesh = Mesh(np.array(jax.local_devices()[:1]), ("cfg",))

    def key(chunk=4, **kw):
        cfg = preset("toy", **kw)
        inputs = jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct((chunk,) + v.shape[1:], v.dtype),
                                        stack_traced([cfg]))
        return executables.program_key(static_spec(cfg), chunk, inputs, mesh)

    base = key()
    assert key() == base  # deterministic
    assert key(seed=3, lr=0.5) == base  # traced values are inputs, not part of the program
    assert len({base, key(chunk=8), key(steps=7), key(width=24), key(activation="tanh"), key(optimizer="sgd")}) == 6
    before = executables.code_digest()
    assert len(before) == 64 and before == executables.code_digest()


# --- 4. crash safety ------------------------------------------------------------------

@pytest.mark.slow  # the default suite kills mid-sweep in test_refine.py (local) and test_object_store.py (gs)
def test_sigkill_then_resume_completes_without_duplicates(reference64, tmp_path):
    ref_out, _ = reference64
    grid = write_grid(tmp_path)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sweeps", "run", str(grid), "--out", str(out), "--chunk-size", "1",
           "--no-progress", "--min-efficiency", "1", "--x64"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(list((out / "runs").glob("*.parquet"))) >= 3 if (out / "runs").exists() else False:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(read(out)) if any((out / "runs").glob("*.parquet")) else 0
    assert 0 < partial < 36, "the kill should land part way"
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{36 - partial} runs trained ({36 - partial} networks), {partial} already done" in res.stdout
    runs, curves = read(out), read(out, "curves")
    assert len(runs) == 36 and runs["run_id"].is_unique
    assert len(curves) == 36 * 5 and not curves.duplicated(["run_id", "step"]).any()
    assert_same_metrics(runs, read(ref_out))
    assert not list(out.rglob(".tmp-*"))


def test_recover_removes_uncommitted_files(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "curves").mkdir()
    (tmp_path / "runs" / "a.parquet").write_bytes(b"x")
    (tmp_path / "curves" / "a.parquet").write_bytes(b"x")
    (tmp_path / "curves" / "b.parquet").write_bytes(b"x")  # its runs file never landed
    (tmp_path / "runs" / ".tmp-c.parquet-1").write_bytes(b"x")
    recover(location(tmp_path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.parquet", "a.parquet", "curves", "runs"]


def test_adding_values_runs_only_new_configs(reference, tmp_path):
    ref_out, _ = reference
    import shutil
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    grid = load(str(write_grid(tmp_path, TINY.replace("width = [8, 12, 16]", "width = [8, 12, 16, 24]"))))
    s = run_grid(grid, out, progress=False)
    assert (s.done, s.skipped, s.total) == (12, 36, 48)
    runs = read(out)
    assert len(runs) == 48 and runs["run_id"].is_unique
    again = run_grid(grid, out, progress=False)
    assert (again.done, again.skipped) == (0, 48)
    assert len(json.loads((out / "manifest.json").read_text())["invocations"]) == 3


# --- 5. bad input -----------------------------------------------------------------

BAD = [
    ("malformed", "seeds = [1, 2\n", "malformed TOML"),
    ("unknown top key", TINY.replace("[fixed]", "[fixd]"), "fixd: unknown key (did you mean 'fixed'?)"),
    ("unknown field", TINY.replace("steps = 40", "stepz = 40"), "fixed.stepz: unknown key (did you mean 'steps'?)"),
    ("unknown axis field", TINY.replace("width = [8", "widht = [8"), "axes.widht: unknown key (did you mean 'width'?)"),
    ("wrong type", TINY.replace("steps = 40", 'steps = "forty"'), "fixed.steps: steps: expected an integer"),
    ("empty axis", TINY.replace("width = [8, 12, 16]", "width = []"), "axes.width: empty axis"),
    ("unknown preset", TINY.replace('"toy_theory"', '"toy_theroy"'), "preset: unknown preset 'toy_theroy' (did you mean 'toy_theory'?)"),
    ("unknown value", TINY.replace('"sigmoid"', '"swish"'), "axes.activation: activation: unknown value 'swish'"),
    ("refused config", TINY.replace("input_dim = 32", "input_dim = 6"), "core_dim + bg_dim = 8 exceeds input_dim = 6"),
    ("bad seeds", TINY.replace("seeds = 3", "seeds = 0"), "seeds: need at least one seed"),
    ("bad range", TINY.replace("[-0.5, 0.5]", "[0.5, -0.5]"), "axes.background: bg_train: range low 0.5 > high -0.5"),
]


@pytest.mark.parametrize("case,text,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_grid_refused_and_nothing_written(case, text, needle, tmp_path, capsys):
    path = write_grid(tmp_path, text, name="bad")
    out = tmp_path / "results"
    assert sweeps_main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err, err
    assert err.count("\n") == 1
    assert not out.exists()


def test_memory_budget_too_small_and_existing_results_untouched(reference, tmp_path, capsys):
    import shutil
    ref_out, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    path = write_grid(tmp_path, TINY.replace("width = [8, 12, 16]", "width = [8, 12, 16, 64]"))
    assert sweeps_main(["run", str(path), "--out", str(out), "--memory-budget", "1KB", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--memory-budget" in err and "below one run" in err and err.count("\n") == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # a bad grid pointed at existing results leaves them untouched too
    bad = write_grid(tmp_path, TINY.replace('"sigmoid"', '"swish"'), name="bad")
    assert sweeps_main(["run", str(bad), "--out", str(out)]) == 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_plan_is_a_dry_run(tmp_path, capsys):
    path = write_grid(tmp_path)
    out = tmp_path / "out"
    assert sweeps_main(["plan", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "12 configs x 3 seeds = 36 runs" in text and "compiled programs" in text and "TFLOP" in text
    # predicted compile, training and total seconds per bucket, and in total
    assert re.search(r"\d+\.\ds +\d+\.\ds +\d+\.\ds  m=", text) and "s compiling +" in text
    assert not out.exists()


# --- 6. schema ---------------------------------------------------------------------

ARROW = {"string": {"string", "large_string"}, "int64": {"int64"}, "float64": {"double"}, "bool": {"bool"}}


def documented_schema(table: str) -> dict[str, str]:
    """Parse docs/results.md's `runs` / `curves` column tables: | `column` | dtype | meaning |."""
    text = (ROOT / "docs" / "results.md").read_text()
    section = text.split(f"<!-- schema:{table} -->")[1].split("<!-- /schema -->")[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| (\w+) \|", section, flags=re.M)}


@pytest.mark.parametrize("table", ["runs", "curves", "shifts"])
def test_parquet_schema_matches_readme(reference, table):
    ref_out, _ = reference
    doc = documented_schema(table)
    assert doc, "docs/results.md documents the schema"
    files = sorted((ref_out / table).glob("*.parquet"))
    schema = pq.read_schema(files[0])
    # the grid's label and axis columns are documented generically
    generic = {"background"} | ({"bg_train_low", "bg_train_high", "width", "activation"} if table != "runs" else set())
    actual = {f.name: str(f.type) for f in schema if f.name not in generic}
    assert set(actual) == set(doc), (set(actual) ^ set(doc))
    for col, dtype in doc.items():
        assert actual[col] in ARROW[dtype], (col, actual[col], dtype)
    assert b"contamination" in schema.metadata
    df = pd.read_parquet(ref_out / table)
    for col in {"runs": ("width", "seed"), "curves": ("width", "step"), "shifts": ("width", "seed")}[table]:
        assert pd.api.types.is_integer_dtype(df[col])
    assert pd.api.types.is_float_dtype(df["ood_acc"])


def test_chunks_fit_the_budget_with_two_in_flight(tmp_path):
    from contamination.cost import memory_bytes
    from sweeps.plan import Planning, bucketize, choose_chunk, networks_of

    nets = networks_of(load(str(write_grid(tmp_path))).runs())
    buckets = bucketize(nets, Planning(2**30, 1, None, min_efficiency=1.0))
    per_run = max(memory_bytes(b.static) for b in buckets)
    for b in buckets:  # 6 networks each: more than 4 fit, so two chunks of at most 2 are in flight
        choose_chunk(b, 4 * per_run, n_devices=1)
        assert b.chunk_size <= 2 and b.chunk_size * 2 * memory_bytes(b.static) <= 4 * per_run
        assert sum(len(c) for c in b.chunks()) == len(b.networks)
        choose_chunk(b, 10 * per_run, n_devices=1)
        assert b.chunk_size == 6 and b.n_chunks == 1  # one chunk: the whole budget


def test_precision_and_float_width_are_recorded_and_never_mixed(tmp_path, capsys):
    """A `tf32` run on a CPU is accepted and recorded (and computes what `highest` does there);
    into a directory of another precision or float width it is refused in one line, exit status
    2, nothing written."""
    one = TINY.replace("width = [8, 12, 16]", "width = [8]").replace('activation = ["relu", "sigmoid"]',
                                                                   'activation = ["relu"]')
    highest, tf32 = write_grid(tmp_path, one, "highest"), write_grid(tmp_path, one.replace("[fixed]", '[fixed]\nprecision = "tf32"'), "tf32")
    a, b = tmp_path / "a", tmp_path / "b"
    assert sweeps_main(["run", str(highest), "--out", str(a), "--no-progress"]) == 0
    assert sweeps_main(["run", str(tf32), "--out", str(b), "--no-progress"]) == 0
    ra, rb = read(a), read(b)
    assert set(ra["precision"]) == {"highest"} and set(rb["precision"]) == {"tf32"}
    assert set(ra["dtype"]) == set(rb["dtype"]) == {"float32"}
    assert json.loads((b / "manifest.json").read_text())["precisions"] == ["tf32"]
    cols = ["seed", "background", "id_loss", "ood_loss", "bg_signed"]
    np.testing.assert_array_equal(ra[cols].sort_values(["seed", "background"]).to_numpy(),
                                  rb[cols].sort_values(["seed", "background"]).to_numpy())
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in a.rglob("*")}
    from contamination.numerics import float64

    for argv, needle in ((["run", str(tf32), "--out", str(a)], "precision highest"),
                         (["run", str(highest), "--out", str(a), "--x64"], "holds float32 results")):
        with float64() if "--x64" in argv else contextlib.nullcontext():  # --x64 is process-wide: restored
            assert sweeps_main(argv + ["--no-progress"]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*")} == before
    mixed = write_grid(tmp_path, one.replace("[axes]", '[axes]\nprecision = ["highest", "tf32"]'), "mixed")
    assert sweeps_main(["run", str(mixed), "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "mixes matmul precisions" in capsys.readouterr().err and not (tmp_path / "c").exists()
