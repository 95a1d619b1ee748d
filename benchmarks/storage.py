"""Wall time of `python -m sweeps run GRID` into a local folder, a GCS emulator and an S3 server.

Starts `gcp-storage-emulator` and `moto`'s server on loopback (the test dependencies), then runs
the grid into each destination `--repeats` times, each into a fresh prefix, caches warm after a
first untimed run. The servers are local, so this measures the engine's object-store path
(in-memory Parquet, one upload per object, listing and footer reads on resume), not a network.

    .venv/bin/python benchmarks/storage.py [--grid quickstart] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(port: int) -> None:
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", default="quickstart")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    gp, sp = free_port(), free_port()
    log = tempfile.TemporaryFile()
    servers = [subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                                 "--port", str(gp), "--in-memory", "--default-bucket", BUCKET], stdout=log,
                                stderr=subprocess.STDOUT),
               subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(sp)],
                                stdout=log, stderr=subprocess.STDOUT)]
    try:
        wait(gp)
        wait(sp)
        env = dict(os.environ, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{gp}",
                   AWS_ENDPOINT_URL=f"http://127.0.0.1:{sp}", AWS_ACCESS_KEY_ID="bench",
                   AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
        import pyarrow.fs as pafs
        pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="bench", secret_key="bench",
                          region="us-east-1", allow_bucket_creation=True).create_dir(BUCKET)
        tmp = tempfile.mkdtemp()

        def run(out: str) -> tuple[float, str]:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "sweeps", "run", args.grid, "--out", out, "--no-progress"],
                               cwd=ROOT, env=env, capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(r.stderr[-2000:])
            return time.perf_counter() - t0, r.stdout.strip().splitlines()[-1]

        run(os.path.join(tmp, "warmup"))
        for dest in ("local", "gs", "s3"):
            for i in range(args.repeats):
                out = os.path.join(tmp, f"{dest}{i}") if dest == "local" else f"{dest}://{BUCKET}/{uuid.uuid4().hex[:8]}"
                wall, line = run(out)
                engine_s = line.split(" s (")[0].rsplit(" ", 1)[-1]
                print(f"{args.grid} -> {dest:5} run {i + 1}: {wall:5.1f} s wall, {engine_s} s in run_grid")
    finally:
        for s in servers:
            s.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
