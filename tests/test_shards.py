"""Shards for array jobs: the assignment (from the grid alone, disjoint, balanced by predicted
seconds), `--shard` parsing, leases, and real processes: shards and a second attempt of one of
them at once into one directory equal one process, with the shared program compiled once; a
SIGKILLed shard re-run completes, the sweep-up without --shard finishes the rest, and `status`
follows it from the results alone. (Into a bucket: tests/test_object_store.py; on a real Slurm
cluster: tests/cluster/, `make test-cluster`.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweeps import lease as leases
from sweeps import shards
from sweeps.__main__ import main as sweeps_main
from sweeps.engine import run_grid
from sweeps.grid import load
from sweeps.plan import TableNetworks
from sweeps.results import recover
from sweeps.storage import location

from conftest import TINY_FIXED
from test_engine import assert_same_metrics

ROOT = Path(__file__).resolve().parent.parent
F32 = dict(rtol=1e-5, atol=1e-6)  # float32: the same programs or a one-device one (test_object_store.F32)

# One shape, so that the two shards' pieces of it are one program (compiled once by the fleet).
ONE_SHAPE = """
description = "one shape, for shards"
preset = "toy_theory"
seeds = 9

[fixed]
""" + TINY_FIXED + """width = 16
activation = "relu"

[axes]
background = [{label = "shifted", bg_train = [0.0, 1.0]}, {label = "centred", bg_train = [-0.5, 0.5]}]
"""
N_RUNS = 18


@pytest.fixture
def shard_env(tmp_path, monkeypatch):
    """A reference model whose compiles are nearly free, so that the one bucket is cut in two
    (the shipped one keeps a grid this small whole); in os.environ, for subprocesses too."""
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"device": "test", "flop_rate": 7e10, "step_s": 4e-5, "calibration_compile_s": 1e-3}))
    monkeypatch.setenv(shards.MODEL_ENV, str(model))
    grid = tmp_path / "one.toml"
    grid.write_text(ONE_SHAPE)
    return grid


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid trained by one process (in this one)."""
    tmp = tmp_path_factory.mktemp("ref")
    grid = tmp / "ref.toml"
    grid.write_text(ONE_SHAPE)
    run_grid(load(str(grid)), tmp / "ref", progress=False)
    return pd.read_parquet(tmp / "ref" / "runs")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The subprocesses' environment: a program store of their own (the fleet's shared one),
    fresh for the first test that starts processes; the others load its programs."""
    return {**os.environ, "CONTAMINATION_JAX_CACHE": str(tmp_path_factory.mktemp("fleet-cache"))}


# --- the assignment -------------------------------------------------------------------------

@pytest.mark.parametrize("name,scale,count", [("width_vs_dim", "full", 8), ("depth_vs_width", "full", 8),
                                              ("activation_vs_shift", None, 3), ("quickstart", None, 3)])
def test_assignment_is_disjoint_complete_and_balanced_by_predicted_seconds(name, scale, count, monkeypatch):
    monkeypatch.delenv(shards.MODEL_ENV, raising=False)
    table = load(name, scale).table
    a = shards.assign(table, count)
    rows = [a.rows(k) for k in range(count)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(len(table)))  # every run in one shard
    shard_of_row = np.empty(len(table), np.int64)
    for k, r in enumerate(rows):
        shard_of_row[r] = k
    nets = pd.DataFrame({"net": table.net_key, "shard": shard_of_row})
    assert (nets.groupby("net")["shard"].nunique() == 1).all()  # a network's runs train together
    # from the grid alone: the same again, whatever is done (the engine skips done runs after)
    assert shards.assign(load(name, scale).table, count).digest == a.digest
    ref = shards.reference_planning(a.model)
    seconds = [shards.predicted_seconds(table, r, ref) for r in rows]
    nets_ = TableNetworks(table)
    round_robin = [shards.predicted_seconds(table, nets_.share(k, count), ref) for k in range(count)]
    assert max(seconds) <= max(round_robin) + 1e-6  # never worse than dealing networks out
    if name in ("width_vs_dim", "depth_vs_width"):  # training-bound: balanced within 20%
        assert max(seconds) <= 1.2 * np.mean(seconds), seconds


def test_plan_prints_each_shards_seconds(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv(shards.MODEL_ENV, raising=False)
    assert sweeps_main(["plan", "width_vs_dim", "--scale", "full", "--shards", "8", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.strip().split("/")[0].isdigit() and "/8" in ln]
    assert len(lines) == 8
    reference = [float(ln[3]) for ln in lines]
    assert max(reference) <= 1.2 * np.mean(reference)
    assert f"largest shard {max(reference) / np.mean(reference):.2f}x the mean" in out


ENV = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}


@pytest.mark.parametrize("text,count,env,expected", [
    ("1/3", None, {}, (1, 3)), (" 0 / 1 ", None, {}, (0, 1)), ("2/4", 4, {}, (2, 4)),
    ("auto", None, ENV, (2, 4)),
    ("auto", 8, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "1"}, (5, 8)),  # one index resubmitted
    ("auto", 6, {"JOB_COMPLETION_INDEX": "5"}, (5, 6)),
    ("auto", None, {"JOB_COMPLETION_INDEX": "0", shards.COUNT_ENV: "2"}, (0, 2)),
    ("auto", None, {"BATCH_TASK_INDEX": "3", "BATCH_TASK_COUNT": "4"}, (3, 4)),
])
def test_shard_parsed_from_the_option_or_the_array_engine(text, count, env, expected):
    assert shards.parse(text, count, env) == expected


@pytest.mark.parametrize("text,count,env,needle", [
    ("3/3", None, {}, "shard index 3 is outside 0..2"),
    ("1-3", None, {}, "expected K/N"),
    ("0/0", None, {}, "expected a positive integer"),
    ("1/3", 4, {}, "disagree"),
    ("auto", None, {}, "no array task index in the environment"),
    ("auto", None, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "1"}, "outside 0..0"),
    ("auto", None, {"JOB_COMPLETION_INDEX": "1"}, "gives no shard count; add --shards N"),
    ("auto", None, {"BATCH_TASK_INDEX": "x", "BATCH_TASK_COUNT": "2"}, "BATCH_TASK_INDEX: expected a task index"),
])
def test_bad_shards_refused_in_one_line(text, count, env, needle):
    with pytest.raises(shards.ShardError) as e:
        shards.parse(text, count, env)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_shard_auto_outside_an_array_job_writes_nothing(shard_env, tmp_path, capsys, monkeypatch):
    for k in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "BATCH_TASK_INDEX"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "out"
    assert sweeps_main(["run", str(shard_env), "--shard", "auto", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --shard auto: no array task index") and err.count("\n") == 1
    assert sweeps_main(["status", str(shard_env), "--out", str(out), "--shards", "0"]) == 2
    assert not out.exists()


# --- leases and recovery beside other writers ----------------------------------------------

def test_lease_one_holder_at_a_time_and_dead_claims(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTAMINATION_LEASE_BEAT_S", "0.05")
    out = location(tmp_path)
    a, b = leases.Lease(out, "s0of2"), leases.Lease(out, "s0of2")
    assert a.try_acquire()
    assert not b.try_acquire() and [c["attempt"] for c in b.blockers()] == [a.attempt]
    assert leases.Lease(out, "s1of2").try_acquire()  # another shard's lease is free
    a.release()
    assert b.try_acquire()
    # a holder whose claim another attempt removed (judged dead) finds out at its next beat
    out.delete(leases.FOLDER, b.file)
    deadline = time.time() + 10
    while not b.lost and time.time() < deadline:
        time.sleep(0.02)
    assert b.lost
    b.release()
    # claims of processes that are gone: from this machine's namespace at once, from another when old
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = {"name": "s0of2", "attempt": "x", "pid": int(dead.stdout), "pid_space": leases.pid_space()}
    assert not leases.Claim(here).live(60.0)
    elsewhere = leases.Claim({**here, "pid_space": "other-machine"})
    elsewhere.age_s = 5.0
    assert elsewhere.live(60.0)
    elsewhere.age_s = 61.0
    assert not elsewhere.live(60.0)


def test_recover_leaves_running_writers_files(tmp_path):
    for table in ("runs", "curves"):
        (tmp_path / table).mkdir()
    (tmp_path / "curves" / "s0of2-a.parquet").write_bytes(b"x")  # shard 0 between its two writes
    (tmp_path / "curves" / "s1of2-b.parquet").write_bytes(b"x")  # shard 1's, left by a kill
    (tmp_path / "runs" / ".tmp-s0of2-c.parquet-1").write_bytes(b"x")
    recover(location(tmp_path), "s1of2-")
    assert sorted(p.name for p in tmp_path.rglob("*.parquet*")) == [".tmp-s0of2-c.parquet-1", "s0of2-a.parquet"]
    recover(location(tmp_path), "", keep=("s0of2-",))  # the sweep-up beside a running shard 0
    assert sorted(p.name for p in tmp_path.rglob("*.parquet*")) == [".tmp-s0of2-c.parquet-1", "s0of2-a.parquet"]
    recover(location(tmp_path))
    assert not list(tmp_path.rglob("*.parquet*"))


# --- real processes -------------------------------------------------------------------------

def shard_cmd(grid: Path, out: str, shard: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweeps", "run", str(grid), "--out", out, "--shard", shard, "--no-progress", *extra]


# Both tests run chunks of 2 networks: one program, compiled by the first test's fleet.
def test_shards_and_a_second_attempt_at_once_equal_one_process(shard_env, reference, fleet, tmp_path):
    out = tmp_path / "out"
    env = {**fleet, shards.MODEL_ENV: os.environ[shards.MODEL_ENV]}
    procs = [subprocess.Popen(shard_cmd(shard_env, str(out), s, "--chunk-size", "2"), cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in ("0/2", "1/2", "1/2")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    trained = [int(o.split(" runs trained")[0].split()[-1]) for o, _ in outs]
    assert trained[0] == 9 and sorted(trained[1:]) == [0, 9], outs  # the second attempt found it done
    assert "waiting: s1of2 is held by another attempt" in outs[1][1] + outs[2][1]
    runs = pd.read_parquet(out / "runs")
    assert len(runs) == N_RUNS and runs["run_id"].is_unique
    curves = pd.read_parquet(out / "curves")
    assert len(curves) == N_RUNS * 5 and not curves.duplicated(["run_id", "step"]).any()
    assert_same_metrics(runs, reference, **F32)
    assert {p.name[:5] for p in (out / "runs").iterdir()} == {"s0of2", "s1of2"}
    # the two shards' pieces are one program: compiled once by the fleet, loaded by the other shard
    buckets = [b for k in (0, 1) for inv in json.loads((out / f"manifest-s{k}of2.json").read_text())["invocations"]
               for b in inv["buckets"]]
    assert len(buckets) == 2 and len({b["program_key"] for b in buckets}) == 1
    assert sorted(b["program"] for b in buckets) == ["compiled", "store"]
    assert not list((out / "leases").glob("*.json"))


def test_killed_shard_reruns_then_sweep_up_and_status(shard_env, reference, fleet, tmp_path, capsys):
    out = tmp_path / "out"
    env = {**fleet, shards.MODEL_ENV: os.environ[shards.MODEL_ENV]}
    cmd = shard_cmd(shard_env, str(out), "0/2", "--chunk-size", "2")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "runs").glob("s0of2-*.parquet")) if (out / "runs").is_dir() else []) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(pd.read_parquet(out / "runs"))
    assert 0 < partial < 9, "the kill should land part way"
    assert list((out / "leases").glob("s0of2.*.json")), "a SIGKILL leaves its claim"
    assert sweeps_main(["status", str(shard_env), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{N_RUNS - partial} missing" in text and "ended without a record" in text and "not started" in text
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)  # the retry: its claim's process is gone
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{9 - partial} runs trained" in res.stdout and f"{partial} already done, of 9 in shard 0/2" in res.stdout
    assert sweeps_main(["status", str(shard_env), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "9 missing" in text and "0/2 " in text and "1/2 " in text
    # the sweep-up: a run without --shard trains what is missing (shard 1 never ran)
    s = run_grid(load(str(shard_env)), out, progress=False)
    assert (s.done, s.skipped) == (9, 9)
    assert sweeps_main(["status", str(shard_env), "--out", str(out)]) == 0
    assert "nothing missing" in capsys.readouterr().out
    runs = pd.read_parquet(out / "runs")
    assert len(runs) == N_RUNS and runs["run_id"].is_unique
    assert_same_metrics(runs, reference, **F32)
    from analysis import load as load_results
    assert len(load_results(out).runs) == N_RUNS  # analysis reads the shards' files as one


# --- the recipes ----------------------------------------------------------------------------

def test_recipes_name_the_engines_settings_and_commands_the_cli_takes():
    """Only the Slurm recipe runs here (`make test-cluster`); the others are checked for the
    settings docs/clusters.md promises, and their commands are parsed by the real parser."""
    import shlex

    import yaml

    from sweeps.__main__ import build_parser

    recipes = ROOT / "clusters"
    job = yaml.safe_load((recipes / "k8s-indexed-job.yaml").read_text())["spec"]
    assert job["completionMode"] == "Indexed" and job["backoffLimitPerIndex"] >= 1
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    rules = job["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert any(r["action"] == "FailIndex" and r["onExitCodes"]["values"] == [2] for r in rules)
    pod = job["template"]["spec"]["containers"][0]
    assert {"name": "CONTAMINATION_SHARDS", "value": str(job["completions"])} in pod["env"]
    batch = json.loads((recipes / "cloud-batch.json").read_text())["taskGroups"][0]
    assert batch["taskSpec"]["maxRetryCount"] >= 1
    assert batch["taskSpec"]["lifecyclePolicies"] == [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": [2]}}]
    sky = yaml.safe_load((recipes / "skypilot.yaml").read_text())
    assert sky["resources"]["use_spot"] and "SHARD" in sky["envs"]
    slurm = (recipes / "slurm.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(recipes / "slurm.sbatch")]).returncode == 0
    def argv(shell: str, env: dict) -> list[str]:
        """The arguments a recipe's shell line passes to python, as bash expands them."""
        line = shell.replace("\\\n", " ").split("python", 1)[1]
        out = subprocess.run(["bash", "-c", f"printf '%s\\n' {line}"], env={**os.environ, **env},
                             capture_output=True, text=True, check=True).stdout
        return out.splitlines()

    container = batch["taskSpec"]["runnables"][0]["container"]
    commands = [pod["command"][1:], container["commands"],
                argv(sky["run"], {**sky["envs"], "SHARD": "3/8"}),
                argv(slurm.split("exec .venv/bin/", 1)[1], {"SHARDS": "8", "GRID": "quickstart", "OUT": "x",
                                                            "SCALE": "full", "EXTRA_ARGS": "--chunk-size 2"})]
    for cmd in commands:
        assert cmd[:2] == ["-m", "sweeps"], cmd
        args = build_parser().parse_args(cmd[2:])
        assert args.command == "run" and args.shard is not None and args.no_progress, cmd
    page = (ROOT / "docs" / "clusters.md").read_text()
    assert all(f"../clusters/{p.name}" in page for p in recipes.iterdir() if p.suffix in (".sbatch", ".yaml", ".json"))
