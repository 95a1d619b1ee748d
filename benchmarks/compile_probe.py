"""Where the test suite's time goes in XLA compiles: a pytest plugin and its summary.

    PYTHONPATH=benchmarks .venv/bin/python -m pytest -q -n 2 --dist loadfile -p compile_probe
    .venv/bin/python benchmarks/compile_probe.py [FILE]

The plugin appends one JSON line per XLA compile in a test process (not in the subprocesses the
tests start) to `$COMPILE_PROBE_OUT` (default /tmp/compile_probe.jsonl): the test that was
running, the module's name, a fingerprint of its StableHLO text (locations dropped, the jit name
normalised, so the same program compiled by two tests has one fingerprint), its line count and
the seconds of the compile. The summary prints the total, the programs compiled more than once
(what a shared cache could still save) and the compiles per test file.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import sys
import time

OUT = os.environ.get("COMPILE_PROBE_OUT", "/tmp/compile_probe.jsonl")
_CURRENT = ["<collection>"]


def _fingerprint(module) -> tuple[str, str, int]:
    try:
        name = str(module.operation.attributes["sym_name"]).strip('"')
        text = re.sub(r"@jit_\w+", "@jit_", module.operation.get_asm(large_elements_limit=20))
        return name, hashlib.sha1(text.encode()).hexdigest()[:12], text.count("\n")
    except Exception as e:  # an MLIR API that moved: still count the compile
        return f"? {type(e).__name__}", "?", 0


def _install() -> None:
    import jax._src.compiler as compiler

    original = compiler.backend_compile_and_load

    def timed(backend, module, *args, **kwargs):
        name, fp, lines = _fingerprint(module)  # before the compile, which may consume the module
        t0 = time.perf_counter()
        try:
            return original(backend, module, *args, **kwargs)
        finally:
            row = {"test": _CURRENT[0], "name": name, "fp": fp, "lines": lines,
                   "s": round(time.perf_counter() - t0, 3), "pid": os.getpid()}
            with open(OUT, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    compiler.backend_compile_and_load = timed


def pytest_configure(config):
    _install()


def pytest_runtest_setup(item):
    _CURRENT[0] = item.nodeid


def summary(path: str) -> str:
    rows = [json.loads(line) for line in open(path)]
    by_fp = collections.defaultdict(list)
    for r in rows:
        by_fp[r["fp"]].append(r)
    repeats = [rs for fp, rs in by_fp.items() if len(rs) > 1 and fp != "?"]
    again = sum(r["s"] for rs in repeats for r in rs[1:])
    big = [r for r in rows if r["s"] > 1.0]
    lines = [f"{len(rows)} compiles, {sum(r['s'] for r in rows):.1f} s; {len(by_fp)} distinct programs",
             f"over 1 s: {len(big)} compiles, {sum(r['s'] for r in big):.1f} s",
             f"compiled again (same program): {sum(len(rs) - 1 for rs in repeats)} compiles, {again:.1f} s",
             "", "seconds  compiles  over-1s  file"]
    per_file = collections.defaultdict(list)
    for r in rows:
        per_file[r["test"].split("::")[0]].append(r)
    for f, rs in sorted(per_file.items(), key=lambda kv: -sum(r["s"] for r in kv[1])):
        lines.append(f"{sum(r['s'] for r in rs):7.1f}  {len(rs):8d}  {sum(r['s'] > 1.0 for r in rs):7d}  {f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1] if len(sys.argv) > 1 else OUT))
