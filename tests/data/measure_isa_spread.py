"""Measure how far the float32 reference curves move with the CPU's instruction set.

Runs every case of `presets-reference.json` under each XLA CPU instruction set given (default:
the machine's own, AVX2 and SSE4_2, which change the order and width of the vector reductions),
one process each, and writes `isa-spread.json`: per metric, the largest absolute and relative
difference from the committed reference over every case, logged step and instruction set.
`tests/test_depth_classes.py` chooses its tolerances from these numbers (README.md beside this file).

    .venv/bin/python tests/data/measure_isa_spread.py [native AVX2 SSE4_2]
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).parent
REFERENCE = json.loads((HERE / "presets-reference.json").read_text())

ONE_ISA = r"""
import json, sys
import numpy as np
from contamination.presets import preset
from contamination.simulate import simulate
ref = json.load(open(sys.argv[1]))
legacy = ref.get("legacy", {})  # the preset as the reference was written (as the reference test runs it)
out = [{k: np.asarray(v, float).tolist()
        for k, v in simulate(preset(c["preset"], **{**legacy.get(c["preset"], {}), **c["overrides"]}))["curves"].items()}
       for c in ref["cases"]]
print(json.dumps(out))
"""


def curves_under(isa: str) -> list[dict]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CONTAMINATION_EXECUTABLE_CACHE": "0"}
    env.pop("JAX_ENABLE_X64", None)
    if isa != "native":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_cpu_max_isa={isa}".strip()
    res = subprocess.run([sys.executable, "-c", ONE_ISA, str(HERE / "presets-reference.json")], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(isas: list[str]) -> None:
    spread: dict[str, dict] = {}
    for isa in isas:
        for case, got in zip(REFERENCE["cases"], curves_under(isa)):
            for k, expected in case["curves"].items():
                a, b = np.asarray(got[k], float), np.asarray(expected, float)
                both = np.isfinite(a) & np.isfinite(b)
                assert (np.isnan(a) == np.isnan(b)).all(), (isa, case["preset"], k)
                diff = np.abs(a - b)[both]
                rel = diff / np.maximum(np.abs(b[both]), 1e-30)
                s = spread.setdefault(k, {"abs": 0.0, "rel": 0.0, "worst": None})
                if diff.size and diff.max() > s["abs"]:
                    s["abs"], s["worst"] = float(diff.max()), f"{case['preset']} {case['overrides']} [{isa}]"
                s["rel"] = max(s["rel"], float(rel.max()) if rel.size else 0.0)
        print(f"{isa}: done", file=sys.stderr)
    out = {"reference_commit": REFERENCE["commit"], "redefined": REFERENCE.get("redefined", {}),
           "machine": cpu_name(), "isas": isas, "metrics": spread}
    (HERE / "isa-spread.json").write_text(json.dumps(out, indent=1) + "\n")
    print("| metric | max abs | max rel | worst case |\n|---|---|---|---|")
    for k in sorted(spread):
        s = spread[k]
        print(f"| `{k}` | {s['abs']:.2e} | {s['rel']:.2e} | {s['worst']} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["native", "AVX2", "SSE4_2"])
