"""`benchmarks/bench.py` runs end to end, and its ratios (measured in one run) hold with wide margins.

Quick sizes, so only the claims that survive them are checked here: the engine well ahead of
the per-step Python loop on small configs (about 15x at these sizes on the 2-core machine),
a warm `quickstart` mostly training rather than compiling (about 20%), and the memory
estimate within 25% of XLA's buffers. The full-size numbers are in BENCHMARKS.md.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # 80-90 s of benchmark in a subprocess: in `make test-all`, to keep `make test` under 15 min
def test_bench_quick_ratios(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--json", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    d = json.loads(out.read_text())
    grids = {g["grid"]: g for g in d["grids"]}
    assert set(grids) == {"small", "medium", "mixed"} and "| small |" in res.stdout
    assert grids["small"]["speedup_vs_python_loop"] >= 3.0
    for g in grids.values():
        assert g["flops"] > 0 and g["run_steps_per_s"] > 0 and g["buckets"] >= 1
    assert grids["mixed"]["buckets"] < 6  # its 6 shapes share programs
    assert d["quickstart"]["warm_compile_share"] <= 0.5
    for m in d["memory"]:
        assert 0.75 <= m["ratio"] <= 1.25, m
    assert d["matmul_small"]["limit"] == max(v for k, v in d["matmul_small"].items() if k != "limit")
