"""How many programs an array of shards compiles with one shared compile cache: N `--shard K/N`
processes started at once on this machine into one results folder, with a fresh
CONTAMINATION_JAX_CACHE they share (as a fleet shares one on a shared filesystem).

Prints, for BENCHMARKS.md: the programs the shards' buckets ran (distinct keys), the compiles
into the store (`executables/compiles.log`, one line per compile), how many buckets loaded a
program another shard compiled, each shard's seconds, and what the shards would have compiled
with a cache each (one compile per bucket).

    python benchmarks/shard_compiles.py width_vs_dim 4
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(grid: str, count: int, *extra: str) -> None:
    with tempfile.TemporaryDirectory(prefix="shard-compiles-") as tmp:
        out, cache = Path(tmp) / "out", Path(tmp) / "cache"
        env = {**os.environ, "CONTAMINATION_JAX_CACHE": str(cache)}
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "sweeps", "run", grid, "--out", str(out), "--shard",
                                   f"{k}/{count}", "--no-progress", *extra], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(count)]
        for k, p in enumerate(procs):
            stdout, stderr = p.communicate()
            if p.returncode:
                sys.exit(f"shard {k} failed: {stderr[-2000:]}")
            print(f"shard {k}/{count} ({time.perf_counter() - t0:.1f} s): {stdout.strip()}")
        buckets = [b for m in out.glob("manifest-s*.json") for inv in json.loads(m.read_text())["invocations"]
                   for b in inv["buckets"]]
        compiled = collections.Counter(json.loads(line)["key"] for line in
                                       (cache / "executables" / "compiles.log").read_text().splitlines())
        keys = {b["program_key"] for b in buckets}
        loaded = sum(b["program"] == "store" for b in buckets)
        print(f"{grid}, {count} shards at once, one shared cache: {len(buckets)} buckets ran {len(keys)} distinct "
              f"programs; {sum(compiled.values())} compiles into the store ({len(compiled)} keys, at most "
              f"{max(compiled.values())} per key); {loaded} buckets loaded a program another shard compiled; "
              f"a cache per shard would compile {len(buckets)}; {time.perf_counter() - t0:.1f} s in all")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
