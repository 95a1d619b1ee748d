"""Shards for array jobs: the assignment (from the grid alone, disjoint, balanced by predicted
seconds), `--shard` parsing, leases, the recipes, and an array job in real processes: shards
and a second attempt of one of them at once into one directory, a SIGKILLed shard re-run, the
sweep-up without --shard, `status` throughout, equal to one process, the fleet's one program
compiled once. (Into a bucket: tests/test_object_store.py; on a real Slurm cluster:
tests/cluster/, `make test-cluster`.)"""

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
from sweeps.grid import load
from sweeps.plan import TableNetworks
from sweeps.results import recover
from sweeps.storage import location

from conftest import TINY_FIXED
from test_engine import assert_same_metrics

ROOT = Path(__file__).resolve().parent.parent
F32 = dict(rtol=1e-5, atol=1e-6)  # float32 (test_object_store.F32); here the programs are the same

# One shape, so that the shards' pieces of it are one program (compiled once by the fleet); 2000
# steps, so that a chunk takes long enough (~0.1 s) for a kill to land between two.
ONE_SHAPE = """
description = "one shape, for shards"
preset = "toy_theory"
seeds = 9

[fixed]
""" + TINY_FIXED.replace("steps = 40", "steps = 2000").replace("log_every = 10", "log_every = 500") + """width = 16
activation = "relu"

[axes]
background = [{label = "shifted", bg_train = [0.0, 1.0]}, {label = "centred", bg_train = [-0.5, 0.5]}]
"""
N_RUNS = 18  # 6 per shard of 3


@pytest.fixture
def shard_env(tmp_path, monkeypatch):
    """A reference model whose compiles are nearly free, so that the one bucket is cut into
    shares (the shipped one keeps a grid this small whole); in os.environ, for subprocesses too."""
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"device": "test", "flop_rate": 7e10, "step_s": 4e-5, "calibration_compile_s": 1e-3}))
    monkeypatch.setenv(shards.MODEL_ENV, str(model))
    grid = tmp_path / "one.toml"
    grid.write_text(ONE_SHAPE)
    return grid


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
    other = leases.Lease(out, "s1of2")
    assert other.try_acquire()  # another shard's lease is free
    other.release()
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

def sweep(grid: Path, out: Path, *extra: str) -> list[str]:
    # chunks of two networks: every process below runs one program, which the fleet compiles once
    return [sys.executable, "-m", "sweeps", "run", str(grid), "--out", str(out), "--no-progress",
            "--chunk-size", "2", *extra]


def freeze_after_first_chunk(proc: subprocess.Popen, out: Path, prefix: str) -> int:
    """SIGSTOP `proc` within milliseconds of its first runs file (a chunk takes far longer), then
    SIGKILL it; the runs files it wrote."""
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (out / "runs").is_dir() and any(p.name.startswith(prefix) for p in (out / "runs").iterdir()):
            proc.send_signal(signal.SIGSTOP)
            break
        time.sleep(0.005)
    time.sleep(0.3)
    written = len([p for p in (out / "runs").glob(f"{prefix}*.parquet")])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return written


def test_an_array_job_in_processes_equals_one_process(shard_env, tmp_path, capsys):
    """Shards 0 and 1 of 3, and a second attempt of shard 1, at once; shard 0 SIGKILLed after its
    first chunk and re-run; shard 2 never started, left to the sweep-up; `status` throughout; the
    result equals one process's, and the fleet (one shared cache) compiled its one program once."""
    out, n = tmp_path / "out", N_RUNS // 3
    env = {**os.environ, "CONTAMINATION_JAX_CACHE": str(tmp_path / "fleet-cache")}  # fresh, shared
    procs = [subprocess.Popen(sweep(shard_env, out, "--shard", s), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in ("0/3", "1/3", "1/3")]
    partial = freeze_after_first_chunk(procs[0], out, "s0of3-")
    assert 0 < partial * 2 < n, "the kill should land part way"
    outs = [p.communicate(timeout=300) for p in procs[1:]]
    assert [p.returncode for p in procs[1:]] == [0, 0], outs
    trained = sorted(int(o.split(" runs trained")[0].split()[-1]) for o, _ in outs)
    assert trained == [0, n], outs  # the second attempt waited for the first, then found it done
    assert "waiting: s1of3 is held by another attempt" in outs[0][1] + outs[1][1]
    assert sweeps_main(["status", str(shard_env), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"{N_RUNS - n - 2 * partial} missing" in text and "ended without a record" in text and "not started" in text

    res = subprocess.run(sweep(shard_env, out, "--shard", "0/3"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]  # the retry goes on at once: its claim's process is gone
    assert f"{n - 2 * partial} runs trained" in res.stdout and f"{2 * partial} already done, of {n} in shard 0/3" \
        in res.stdout
    res = subprocess.run(sweep(shard_env, out), cwd=ROOT, env=env, capture_output=True, text=True)  # the sweep-up
    assert res.returncode == 0 and f"{n} runs trained" in res.stdout and f"{2 * n} already done" in res.stdout, res
    assert sweeps_main(["status", str(shard_env), "--out", str(out)]) == 0
    assert "nothing missing" in capsys.readouterr().out

    ref = subprocess.run(sweep(shard_env, tmp_path / "one"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
    runs = pd.read_parquet(out / "runs")
    assert len(runs) == N_RUNS and runs["run_id"].is_unique
    curves = pd.read_parquet(out / "curves")
    assert len(curves) == N_RUNS * 5 and not curves.duplicated(["run_id", "step"]).any()
    assert_same_metrics(runs, pd.read_parquet(tmp_path / "one" / "runs"), **F32)
    compiles = (tmp_path / "fleet-cache" / "executables" / "compiles.log").read_text().splitlines()
    assert len(compiles) == 1, compiles  # shards 0 and 1 started together; one compiled, every other loaded
    keys = {b["program_key"] for m in [*out.glob("manifest*.json"), tmp_path / "one" / "manifest.json"]
            for inv in json.loads(m.read_text())["invocations"] for b in inv["buckets"]}
    assert keys == {json.loads(compiles[0])["key"]}
    from analysis import load as load_results
    res = load_results(out)  # analysis reads the shards' files as one, and every writer's invocations
    assert len(res.runs) == N_RUNS and res.runs["run_id"].is_unique
    assert sorted(i["writer"] for i in res.manifest["invocations"]) == \
        ["manifest-s0of3.json"] * 2 + ["manifest-s1of3.json"] * 2 + ["manifest.json"]
    assert not (out / "leases").exists()  # every attempt that ended released its lease (and the last, the folder)


# --- the recipes ----------------------------------------------------------------------------

def test_recipes_name_the_engines_settings_and_commands_the_cli_takes():
    """Only the Slurm recipe runs here (`make test-cluster`); the others are checked for the
    settings docs/clusters.md promises, and their commands are parsed by the real parser."""

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
