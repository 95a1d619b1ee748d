"""Planning at scale (issue 32): grids expand into columns (each point built once, its ids hashed
once per seed), the planner works over shapes and builds no run it does not train, and the resume
check reads the run_id column alone, or an index; with the ids, networks, shares, plans and plan
text of every shipped grid those of the code before (commit ec221b9)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from contamination import ids
from contamination.presets import preset
from sweeps import calibrate, grid as grid_module, results
from sweeps.engine import describe_plan, plan_pending, run_grid
from sweeps.grid import GRID_DIR, load, points
from sweeps.plan import Networks, TableNetworks, bucketize, networks_of
from sweeps.runs import Run, RunTable
from sweeps.storage import location

from conftest import TINY_FIXED

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
REFERENCE = json.loads((DATA / "grid-ids-reference.json").read_text())


def reference_module():
    spec = importlib.util.spec_from_file_location("make_grid_ids_reference", DATA / "make_grid_ids_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_shipped_grid_expands_and_plans_as_at_ec221b9(tmp_path):
    """Run ids (order included), config ids, labels, networks and each host's share of every
    shipped grid at every scale are those the code of ec221b9 computed; the buckets of three plans
    and `sweeps plan`'s text are those recorded when the cost model last changed (it counted issue 26's
    test-set metrics, which moved memory estimates and chunk sizes): regenerate those two entries with
    today's code whenever the cost model changes (`tests/data/make_grid_ids_reference.py`)."""
    out = tmp_path / "now.json"
    res = subprocess.run([sys.executable, str(DATA / "make_grid_ids_reference.py"), str(out), "now"], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0, res.stderr[-3000:]
    now, then = json.loads(out.read_text())["grids"], REFERENCE["grids"]
    assert REFERENCE["commit"] == "ec221b9" and now.keys() == then.keys()
    for name in then:
        assert now[name] == then[name], name
    # Entries recorded from later code (`later`): only grids that set fields ec221b9 lacked away
    # from their defaults (issue 26's teacher_bias_unit and teacher_data, issue 31's warmup_steps),
    # or that it did not have.
    for name in REFERENCE.get("later", {}):
        grid, scale = name.split("/")
        runs = load(grid, scale).runs()
        new = all(r.config.teacher_bias_unit != "absolute" or r.config.teacher_data != "full"
                  or r.config.warmup_steps != 0 for r in runs)
        added_later = ("fixed_vs_fresh", "distill_optimizer", "interventions", "scaling_exponents",
                       "spread_at_fixed_mean", "matched_fit", "random_features")
        assert new or grid in added_later, name


@pytest.mark.parametrize("name", sorted(k for k in REFERENCE["grids"] if k.endswith("/default")))
def test_plans_over_columns_equal_plans_over_network_lists(name):
    """The engine's path (`TableNetworks` of `Grid.table`) plans and shares out exactly what the
    reference computed from lists of `Network`s."""
    ref = reference_module()
    grid_name, scale = name.split("/")
    grid = load(grid_name, scale)
    nets = TableNetworks(grid.table)
    expected = REFERENCE["grids"][name]
    assert ref.plans(nets) == expected["plans"]
    shares = []
    for i in range(3):
        mine = TableNetworks(grid.table, nets.share(i, 3))
        shares.append(sorted(ids.hex_ids(mine.keys)))
    assert ref.digest(shares) == expected["shares"]
    assert ref.digest([[n.id, [r.run_id for r in n.runs]] for n in Networks(nets, range(len(nets.statics)))]) \
        == expected["networks"]


DUPLICATES = """
description = "points that collapse into one another, a table axis, listed seeds"
preset = "toy"
seeds = [5, 0, 9]
[fixed]
""" + TINY_FIXED + """
[axes]
rep_dim = [16, 64]  # classify runs do not read it: its second value repeats the first's runs
width = [4, 8]
shape = [{label = "one", widths = [8]}, {label = "flat", depth = 1}]
"""


def test_table_runs_are_the_runs_built_one_by_one(tmp_path):
    """`Grid.runs()` (from the columns) equals building every run with `Config.replace` and
    `Run.of`, duplicates dropped, refined runs (`extra`) appended unless already grid runs."""
    path = tmp_path / "dup.toml"
    path.write_text(DUPLICATES)
    grid = load(str(path))
    expected, seen = [], set()
    for cfg, labels, _, seeds in points(grid):
        for s in seeds:
            run = Run.of(cfg.replace(seed=s), labels)
            if run.run_id not in seen:
                seen.add(run.run_id)
                expected.append(run)
    # 8 points, 2 configs: rep_dim is not read, and "one" (widths = [8]) is width 8 whatever width says
    assert grid.runs() == expected and len(expected) == 2 * 3
    extra = (Run.of(expected[0].config, {"shape": "one"}, 1),  # already a grid run: stays the grid's
             Run.of(expected[0].config.replace(seed=77, lr=0.5), {"shape": "one"}, 2))
    refined = dataclasses.replace(grid, extra=extra)
    assert refined.runs() == expected + [extra[1]]
    table = refined.table
    assert table.run_ids() == [r.run_id for r in expected + [extra[1]]]
    assert table.network_ids() == [ids.training_key(r.config) for r in expected + [extra[1]]]


@pytest.mark.parametrize("cfg", [preset("toy"), preset("distill", teacher="linear"),
                                 preset("toy_theory", log_schedule="geometric", widths=[8, 4])])
def test_point_keys_are_the_ids_of_each_seed(cfg):
    seeds = [0, 1, 17, 2**62 + 3]
    cid, runs, nets = ids.point_keys(cfg, seeds)
    assert cid == ids.config_id(cfg)
    assert ids.hex_ids(runs) == [ids.run_id(cfg.replace(seed=s)) for s in seeds]
    assert ids.hex_ids(nets) == [ids.training_key(cfg.replace(seed=s)) for s in seeds]
    assert (ids.id_keys(ids.hex_ids(runs)) == runs).all()


LARGE = """
description = "a grid of 20 widths x 10 learning rates x 100 seeds"
preset = "toy"
seeds = 100
[axes]
width = [8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 152, 160]
lr = [0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
"""


def test_planning_builds_each_point_once_and_no_run(tmp_path, monkeypatch):
    """20,000 runs: 200 configs built, and neither a `Run` nor a `Network` object while the grid
    loads and the plan is made and described (the runs stay columns)."""
    built = {"configs": 0, "runs": 0, "networks": 0}
    from_dict = grid_module.from_dict

    def counting_from_dict(*a, **k):
        built["configs"] += 1
        return from_dict(*a, **k)

    def count(kind, real):
        def wrapped(*a, **k):
            built[kind] += 1
            return real(*a, **k)
        return wrapped

    monkeypatch.setattr(grid_module, "from_dict", counting_from_dict)
    monkeypatch.setattr(RunTable, "_run", count("runs", RunTable._run))
    monkeypatch.setattr(TableNetworks, "_network", count("networks", TableNetworks._network))
    monkeypatch.setattr(calibrate, "load", lambda *a, **k: reference_module().fixed_model())
    path = tmp_path / "large.toml"
    path.write_text(LARGE)
    grid = load(str(path))
    assert len(grid.table) == 20_000 and built["configs"] == 200
    text = describe_plan(grid, tmp_path / "none", memory_budget=2**30, min_efficiency=None, cache_dir=str(tmp_path))
    assert "200 configs x 100 seeds = 20000 runs" in text and "20000 to train as 20000 networks" in text
    assert built == {"configs": 200, "runs": 0, "networks": 0}
    # what a bucket's chunk reads is built then, and only that
    p = plan_pending(grid, location(tmp_path / "none"), _mesh(), None, memory_budget=2**30, min_efficiency=None,
                     chunk_size=None)
    chunk = p.buckets[0].chunks()[0]
    assert built["networks"] == len(chunk) == p.buckets[0].chunk_size and built["runs"] == len(chunk)


def _mesh():
    from sweeps.engine import local_mesh
    return local_mesh()


def test_the_resume_check_reads_the_run_id_column_alone_then_the_index(tmp_path, monkeypatch):
    """A run leaves an index of its runs files; the next resume reads no runs file, a file that
    changed since is read again (and removed when it does not read), a removed one drops out."""
    path = tmp_path / "g.toml"
    path.write_text('description = "two networks"\npreset = "toy_theory"\nseeds = 2\n[fixed]\n' + TINY_FIXED
                    + "width = 4\n")
    out = tmp_path / "out"
    run_grid(load(str(path)), out, progress=False, chunk_size=1)
    loc = location(out)
    assert loc.files(prefix=results.INDEX_PREFIX, hidden=True) == [results.index_name(0)]
    reads: list = []
    real_read = pq.ParquetFile.read

    def read(self, columns=None, **kw):
        reads.append(columns)
        return real_read(self, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read", read)
    every = set(load(str(path)).table.run_ids())
    assert results.done_run_ids(loc) == every and reads == [None]  # the index alone (all its columns)
    reads.clear()
    (out / results.index_name(0)).unlink()
    assert results.done_run_ids(loc) == every and reads == [["run_id"], ["run_id"]]  # each file's run_id
    names = loc.files("runs")
    done = results.done_runs(loc)
    results.write_index(loc, 0, done)
    (out / "runs" / names[0]).write_bytes(b"not parquet")  # changed since: read, and removed
    (out / "runs" / names[1]).unlink()
    reads.clear()
    assert results.done_run_ids(loc) == set() and reads == [None]  # the changed file's footer does not read
    assert loc.files("runs") == [] and loc.files("curves") == [names[1]]


def test_id_columns_keep_run_ids_only():
    import pyarrow as pa
    column = pa.chunked_array([["0123456789abcdef", None, "x"], ["fedcba9876543210", "0123456789ABCDEF"]])
    assert ids.hex_ids(results.id_column_keys(column)) == ["0123456789abcdef", "fedcba9876543210"]


def test_a_grid_with_a_seed_too_large_is_refused(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text('description = "x"\nseeds = [0, 9223372036854775808]\n')
    with pytest.raises(grid_module.GridError, match=r"seeds: seed: must be in \[0, 2\^63\)"):
        load(str(path))


def test_shipped_grid_files_exist():
    assert sorted(k.split("/")[0] for k in REFERENCE["grids"] if k.endswith("/default")) == \
        sorted(p.stem for p in GRID_DIR.glob("*.toml"))


def test_bucketize_of_lists_and_of_columns_agree_on_a_large_grid(tmp_path):
    path = tmp_path / "large.toml"
    path.write_text(LARGE.replace("seeds = 100", "seeds = 3"))
    grid = load(str(path))
    model = reference_module().fixed_model()
    from sweeps.plan import Planning
    p = Planning(2**28, 2, model)
    a = bucketize(networks_of(grid.runs()), p)
    b = bucketize(TableNetworks(grid.table), p)
    assert [(x.id, x.chunk_size, x.predicted_s, [n.id for n in x.networks]) for x in a] == \
        [(x.id, x.chunk_size, x.predicted_s, [n.id for n in x.networks]) for x in b]
    assert np.isclose(sum(x.flops for x in a), sum(x.flops for x in b), rtol=1e-12)
