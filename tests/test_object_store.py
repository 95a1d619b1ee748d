"""Results straight to object storage, against real servers started here on loopback.

A GCS emulator (`gcp-storage-emulator`) and an S3 server (`moto`'s server mode) run as
subprocesses for the module; each test gets a fresh prefix in a bucket of each. The engine's
guarantees are re-run against them: a grid trains into `gs://` / `s3://` and `analysis` reads it
back; SIGKILL then resume loses and duplicates nothing; SIGTERM stops within one chunk with no
partial object; adding grid values trains only the new runs; two hosts' shares, and two shards'
at once, merge in one prefix; bad input and missing buckets write nothing; unreadable objects are removed on resume.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from sweeps.__main__ import main as sweeps_main
from sweeps.engine import run_grid
from sweeps.grid import load as load_grid
from sweeps.storage import location

from test_engine import TINY, assert_same_metrics, write_grid as _write_grid

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "contamination-test"
# test_engine's tiny grid with one seed (12 runs, each its own chunk): the storage guarantees need
# several chunks, not several seeds.
GRID = TINY.replace("seeds = 3", "seeds = 1")
assert GRID != TINY
N_RUNS = 12


def write_grid(tmp_path: Path, text: str = GRID, name: str = "tiny") -> Path:
    return _write_grid(tmp_path, text, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, what: str, log, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{what} exited: {log.read().decode()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start on port {port}")


@contextlib.contextmanager
def _server(cmd: list[str], port: int, what: str):
    # The servers log every request: into a file, never a pipe nobody reads (a full pipe blocks them).
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc, what, log)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def gcs_env():
    port = _free_port()
    # The emulator serves one request at a time from a listen queue of 5 (http.server's default):
    # the sixth of the readers' concurrent connections (`analysis.load` reads with 16 threads) had
    # its SYN dropped and retried by TCP a second later, 3 s per load of the tiny grid. A longer
    # queue, as a real server has, removes that stall; requests are still served one at a time.
    start = ("import sys, http.server; http.server.HTTPServer.request_queue_size = 128; "
             "from gcp_storage_emulator.__main__ import main; main(sys.argv[1:])")
    cmd = [sys.executable, "-c", start, "start", "--host", "127.0.0.1", "--port", str(port),
           "--in-memory", "--default-bucket", BUCKET]
    with _server(cmd, port, "GCS emulator"):
        yield {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}


@pytest.fixture(scope="module")
def s3_env():
    port = _free_port()
    with _server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, "S3 server"):
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
        fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing",
                               secret_key="testing", region="us-east-1", allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        yield env


def new_prefix(request, monkeypatch, scheme: str) -> str:
    """A fresh prefix in the bucket of that server; its variables in os.environ (for subprocesses too)."""
    env = request.getfixturevalue("gcs_env" if scheme == "gs" else "s3_env")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return f"{scheme}://{BUCKET}/{uuid.uuid4().hex[:8]}"


# Both servers under `make test-all`; by default S3 is exercised by the SIGTERM test below.
@pytest.fixture(params=["gs", pytest.param("s3", marks=pytest.mark.slow)])
def store(request, monkeypatch):
    return new_prefix(request, monkeypatch, request.param)


# These tests are about storage: the same programs (PLAN) in float32, compared at float32's
# tolerance. The identities of chunking, devices and processes are tested in float64
# (test_engine.py); here a mismatch means a lost, duplicated or mixed-up run.
F32 = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny grid trained into a local directory: what every store run must reproduce."""
    tmp = tmp_path_factory.mktemp("ref")
    run_grid(load_grid(str(write_grid(tmp))), tmp / "out", progress=False, **PLAN)
    return pd.read_parquet(tmp / "out" / "runs")


def objects(uri: str) -> dict[str, int]:
    """Every object under the prefix: relative name -> size."""
    loc = location(uri)
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.root, recursive=True, allow_not_found=True))
    return {i.path[len(loc.root) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def read_table(uri: str, table: str) -> pd.DataFrame:
    loc = location(uri)
    names = loc.files(table, suffix=".parquet")
    return pd.concat([pq.read_table(loc.path(table, n), filesystem=loc.fs).to_pandas() for n in names],
                     ignore_index=True)


def assert_complete(uri: str, reference: pd.DataFrame) -> None:
    """Every run exactly once, its curves once, equal to the local reference; nothing partial."""
    runs, curves = read_table(uri, "runs"), read_table(uri, "curves")
    assert len(runs) == N_RUNS and runs["run_id"].is_unique
    assert len(curves) == N_RUNS * 5 and not curves.duplicated(["run_id", "step"]).any()
    assert_same_metrics(runs, reference, **F32)
    names = objects(uri)
    assert {n.split("/", 1)[1] for n in names if n.startswith("curves/")} == \
        {n.split("/", 1)[1] for n in names if n.startswith("runs/")}
    assert not [n for n in names if ".tmp-" in n]


# Every run here plans the tiny grid the same way: its widths padded into one program per
# activation (two programs, compiled once per session; one per width would be six) and chunks of
# one network per device, so that a sweep commits twelve chunks.
PLAN = {"min_efficiency": 0.0, "chunk_size": 1}
PLAN_FLAGS = ("--chunk-size", "1", "--min-efficiency", "0")


def sweep_cmd(grid: Path, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sweeps", "run", str(grid), "--out", out, "--no-progress", *PLAN_FLAGS, *extra]


def test_grid_trains_into_the_store_and_analysis_reads_it(store, reference, tmp_path):
    grid = write_grid(tmp_path)
    res = subprocess.run(sweep_cmd(grid, store), cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{N_RUNS} runs trained" in res.stdout and f"results in {store}" in res.stdout
    assert_complete(store, reference)
    assert json.loads(location(store).read_text("manifest.json"))["invocations"][0]["trained"] == N_RUNS
    rep = subprocess.run([sys.executable, "-m", "analysis", "report", store], cwd=ROOT, capture_output=True,
                         text=True)
    assert rep.returncode == 0, rep.stderr[-3000:]
    names = objects(store)
    assert "report.md" in names and "summary.csv" in names
    pngs = [n for n in names if n.startswith("figures/") and n.endswith(".png")]
    assert len(pngs) >= 6 and all(names[n] > 1000 for n in pngs)
    report = location(store).read_text("report.md")
    for link in {m for m in re.findall(r"\]\(([^)\s]+)\)", report)}:
        assert link in names, link
    # the library reads it too, typed as from a local directory
    from analysis import load
    from analysis.__main__ import main as analysis_main
    res = load(store)
    assert len(res.runs) == N_RUNS and len(res.curves) == N_RUNS * 5
    assert list(res.runs["activation"].cat.categories) == ["relu", "sigmoid"]
    # and the other commands: a phase diagram and its table into the bucket, a dry run against it
    assert analysis_main(["phase", store, "--x", "width", "--y", "activation", "--metric", "ood_acc",
                          "--csv", f"{store}/tables/phase.csv"]) == 0
    assert analysis_main(["curves", store, "--hue", "activation"]) == 0
    assert analysis_main(["table", store, "--by", "activation", "--csv", f"{store}/tables/by_activation.csv"]) == 0
    names = objects(store)
    assert {"figures/phase_ood_acc_width_activation.png", "tables/phase.csv", "tables/by_activation.csv"} <= set(names)
    assert any(n.startswith("figures/curves_") and n.endswith(".png") for n in names)
    assert sweeps_main(["plan", str(grid), "--out", store, *PLAN_FLAGS]) == 0


def _wait_for_runs_files(uri: str, proc: subprocess.Popen, at_least: int, timeout: float = 180) -> int:
    loc = location(uri)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        n = len(loc.files("runs", suffix=".parquet"))
        if n >= at_least:
            return n
        time.sleep(0.05)
    raise AssertionError(f"the sweep wrote fewer than {at_least} runs files (exit {proc.poll()})")


def test_sigkill_then_resume_completes_exactly_once(store, reference, tmp_path):
    grid = write_grid(tmp_path)
    cmd = sweep_cmd(grid, store)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_runs_files(store, proc, 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(read_table(store, "runs"))
    assert 0 < partial < N_RUNS, "the kill should land part way"
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{N_RUNS - partial} runs trained ({N_RUNS - partial} networks), {partial} already done" in res.stdout
    assert_complete(store, reference)


@pytest.mark.parametrize("where,sig", [("local", signal.SIGTERM), ("gs", signal.SIGTERM), ("s3", signal.SIGTERM),
                                       ("local", signal.SIGINT)], ids=["local", "gs", "s3", "local-ctrl-c"])
def test_sigterm_stops_within_one_chunk_and_resumes(where, sig, request, monkeypatch, reference, tmp_path):
    out = str(tmp_path / "out") if where == "local" else new_prefix(request, monkeypatch, where)
    grid = write_grid(tmp_path)
    cmd = sweep_cmd(grid, out)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_runs_files(out, proc, 3)
    # Freeze the sweep, count what it has written, then signal: the count is exact at the signal
    # (an upload already sent is given time to land first).
    proc.send_signal(signal.SIGSTOP)
    time.sleep(0.3)
    at_signal = len(location(out).files("runs", suffix=".parquet"))
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=120)  # a bound against hanging, not a timing claim
    assert proc.returncode == 128 + sig, stderr[-3000:]
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"stopped by {sig.name}: ") and \
        "resume with: python -m sweeps run" in lines[0] and f"--out {out}" in lines[0], stdout
    written = len(location(out).files("runs", suffix=".parquet"))
    # files are chunks: at most the chunk in flight when the signal came was finished
    assert at_signal <= written <= at_signal + 1, (at_signal, written)
    runs = read_table(out, "runs")
    assert runs["run_id"].is_unique
    names = objects(out) if where != "local" else {
        str(p.relative_to(out)): p.stat().st_size for p in Path(out).rglob("*") if p.is_file()}
    assert not [n for n in names if ".tmp-" in n]
    assert {n for n in names if n.startswith("curves/")} == {n.replace("runs/", "curves/", 1)
                                                              for n in names if n.startswith("runs/")}
    manifest = json.loads(location(out).read_text("manifest.json"))
    assert manifest["invocations"][-1]["stopped_by"] == sig.name
    # re-running the same command (the one the line printed) resumes
    resume = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert resume[:3] == ["python", "-m", "sweeps"] and resume[3:] == cmd[3:]
    res = subprocess.run([sys.executable, *resume[1:]], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{N_RUNS - len(runs)} runs trained" in res.stdout and f"{len(runs)} already done" in res.stdout
    if where != "local":
        assert_complete(out, reference)
    else:
        assert_same_metrics(pd.read_parquet(Path(out) / "runs"), reference, **F32)


def test_two_hosts_shares_merge_and_new_values_train_alone(store, reference, tmp_path):
    grid = load_grid(str(write_grid(tmp_path)))
    a = run_grid(grid, store, progress=False, process=(0, 2), **PLAN)
    b = run_grid(grid, store, progress=False, process=(1, 2), **PLAN)
    assert a.done + b.done == N_RUNS and a.done > 0 and b.done > 0
    names = objects(store)
    assert {"manifest.json", "manifest-p1.json"} <= set(names)
    hosts = {n.split("/", 1)[1][:3] for n in names if n.startswith("runs/")}
    assert hosts == {"p0-", "p1-"}  # per-host names: no object written by both
    assert_complete(store, reference)
    from analysis import load
    assert len(load(store).runs) == N_RUNS  # read directly, no gather step
    # adding grid values trains only the new runs, into the same prefix
    wider = load_grid(str(write_grid(tmp_path, GRID.replace("width = [8, 12, 16]", "width = [8, 12, 16, 24]"))))
    s = run_grid(wider, store, progress=False, **PLAN)
    assert (s.done, s.skipped, s.total) == (N_RUNS // 3, N_RUNS, N_RUNS * 4 // 3)
    runs = read_table(store, "runs")
    assert len(runs) == N_RUNS * 4 // 3 and runs["run_id"].is_unique


def test_shards_at_once_into_the_store_equal_one_process(request, monkeypatch, reference, tmp_path, capsys):
    """An array job in miniature: two `--shard K/2` processes at once into one gs:// prefix (each
    under its lease there), read back as one by `status` and `analysis`."""
    out = new_prefix(request, monkeypatch, "gs")
    grid = write_grid(tmp_path)
    procs = [subprocess.Popen(sweep_cmd(grid, out, "--shard", f"{k}/2"), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    sizes = []
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
        sizes += [int(n) for n in re.findall(r"0 already done, of (\d+) in shard", stdout)]
    assert len(sizes) == 2 and sum(sizes) == N_RUNS and min(sizes) > 0, outs
    assert_complete(out, reference)
    names = objects(out)
    assert {n.split("/", 1)[1][:6] for n in names if n.startswith("runs/")} == {"s0of2-", "s1of2-"}
    assert {"manifest-s0of2.json", "manifest-s1of2.json"} <= set(names)
    assert not [n for n in names if n.startswith("leases/")]  # both released their leases
    assert sweeps_main(["status", str(grid), "--out", out]) == 0
    text = capsys.readouterr().out
    assert "nothing missing" in text and text.count("finished") == 2
    from analysis import load
    assert len(load(out).runs) == N_RUNS


def test_unreadable_objects_are_removed_and_retrained(store, reference, tmp_path):
    grid = load_grid(str(write_grid(tmp_path)))
    run_grid(grid, store, progress=False, **PLAN)
    loc = location(store)
    names = loc.files("runs", suffix=".parquet")
    lost = len(pq.read_table(loc.path("runs", names[0]), filesystem=loc.fs))
    loc.write_bytes(b"not parquet", "runs", names[0])  # a corrupt commit marker
    loc.write_bytes(b"PAR1 orphan", "curves", "orphan.parquet")  # curves whose runs file never landed
    s = run_grid(grid, store, progress=False, **PLAN)
    assert (s.done, s.skipped) == (lost, N_RUNS - lost)
    assert "curves/orphan.parquet" not in objects(store)
    assert_complete(store, reference)


def test_bad_input_and_missing_bucket_write_nothing(store, tmp_path, capsys):
    bad = write_grid(tmp_path, GRID.replace('"sigmoid"', '"swish"'), name="bad")
    assert sweeps_main(["run", str(bad), "--out", store, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "swish" in err and err.count("\n") == 1
    scheme = store.split("://")[0]
    missing = f"{scheme}://no-such-bucket-{uuid.uuid4().hex[:6]}/x"
    good = write_grid(tmp_path)
    assert sweeps_main(["run", str(good), "--out", missing, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {missing.rsplit('/', 1)[0]}: no such bucket") and err.count("\n") == 1, err
    assert objects(store) == {}
    from analysis.__main__ import main as analysis_main
    assert analysis_main(["table", missing]) == 2
    assert "no such bucket" in capsys.readouterr().err


def test_unreachable_endpoint_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    monkeypatch.setenv("CONTAMINATION_PROBE_TIMEOUT_S", "1")  # retries for 1 s, not the default 10
    assert sweeps_main(["run", str(write_grid(tmp_path)), "--out", f"gs://{BUCKET}/x", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: gs://{BUCKET}: cannot reach the bucket") and err.count("\n") == 1, err
    assert "STORAGE_EMULATOR_HOST" in err


def test_local_writes_stay_write_then_rename(tmp_path):
    loc = location(tmp_path / "out")
    loc.write_bytes(b"abc", "runs", "a.parquet")
    assert (tmp_path / "out" / "runs" / "a.parquet").read_bytes() == b"abc"
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a.parquet", "runs"]
    assert loc.files("runs") == ["a.parquet"] and np.isclose(len(loc.read_bytes("runs", "a.parquet")), 3)


@pytest.mark.slow  # 30 s; the default suite merges two hosts' shares through `process=` above
def test_two_real_processes_write_one_prefix(request, monkeypatch, reference, tmp_path):
    """A slice in miniature: two processes joined by jax.distributed (CPU, loopback coordinator),
    each training its share straight into one gs:// prefix; analysis reads it with no gather step."""
    out = new_prefix(request, monkeypatch, "gs")
    grid = write_grid(tmp_path)
    port = str(_free_port())
    procs = [subprocess.Popen(sweep_cmd(grid, out, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                        "--process-id", str(i)), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
        assert f"{N_RUNS // 2} runs trained ({N_RUNS // 2} networks), 0 already done, of {N_RUNS} in the grid" in stdout, stdout
    names = objects(out)
    assert {"manifest.json", "manifest-p1.json"} <= set(names)
    assert {n.split("/", 1)[1][:3] for n in names if n.startswith("runs/")} == {"p0-", "p1-"}
    assert_complete(out, reference)
    from analysis import load
    assert len(load(out).runs) == N_RUNS


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_quickstart_into_the_store_and_its_report(scheme, request, monkeypatch):
    """The issue's acceptance, as a user types it: the shipped quickstart grid into a bucket, the
    report from the bucket."""
    out = new_prefix(request, monkeypatch, scheme) + "/quickstart"
    res = subprocess.run([sys.executable, "-m", "sweeps", "run", "quickstart", "--out", out, "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    total = int(res.stdout.split(" runs trained")[0].split()[-1])
    runs = read_table(out, "runs")
    assert len(runs) == total and runs["run_id"].is_unique
    rep = subprocess.run([sys.executable, "-m", "analysis", "report", out], cwd=ROOT, capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert f"report:  {out}/report.md" in rep.stdout
    names = objects(out)
    assert "report.md" in names and sum(n.endswith(".png") for n in names) >= 4
