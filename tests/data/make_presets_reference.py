"""Regenerate `presets-reference.json`: every shipped preset (and a few variants of its
categorical choices) trained for a short while, curves of every metric.

The committed file was written by the code of commit 5aca587 (before depth and K classes);
`tests/test_depth_classes.py` checks that depth 1 and two classes still reproduce it
(rtol 1e-6). Regenerate only when the results version changes:
    .venv/bin/python tests/data/make_presets_reference.py
or, when only some metrics changed meaning, only their curves (the others keep their commit):
    .venv/bin/python tests/data/make_presets_reference.py --only act_asym,contaminated_frac
(issue 26, results version 4, regenerated act_asym, contaminated_frac, bg_norm and bg_shift_rms;
their commit is recorded under "redefined").
"""

import json
import pathlib
import subprocess
import sys

import numpy as np

from contamination.presets import PRESETS, preset
from contamination.simulate import simulate

SHORT = dict(steps=60, log_every=20)
# (preset, overrides): every preset, then variants of its categorical choices
CASES = [(name, {}) for name in PRESETS] + [
    ("toy", dict(activation="gelu", loss="hinge")),
    ("toy", dict(activation="tanh", loss="mse", optimizer="sgd")),
    ("toy", dict(activation="leaky_relu", leaky_slope=0.2, optimizer="adam", batch_size=100)),
    ("toy", dict(activation="linear", core="linear", log_schedule="geometric")),
    ("toy", dict(activation="sigmoid", bias=False, output="frozen_random", init="theory")),
    ("toy_theory", dict(width=64, bg_train=[0.5, 1.5], bg_ood=[-2.0, 0.0])),
    ("distill", dict(teacher="trained", teacher_steps=50, width=64)),
    ("distill", dict(teacher="linear", online=False, batch_size=0, width=64)),
]


def regenerate(only: list[str]) -> None:
    """Rewrite the curves of the metrics `only` in the committed file, leaving the others as they are."""
    path = pathlib.Path(__file__).with_name("presets-reference.json")
    ref = json.loads(path.read_text())
    for case in ref["cases"]:
        r = simulate(preset(case["preset"], **case["overrides"]))
        for k in only:
            if k in case["curves"]:
                case["curves"][k] = np.asarray(r["curves"][k], dtype=np.float64).tolist()
        print(case["preset"], case["overrides"], "done")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    ref["redefined"] = {**ref.get("redefined", {}), **{k: rev for k in only}}
    path.write_text(json.dumps(ref, indent=0) + "\n")


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--only":
        return regenerate(sys.argv[2].split(","))
    out = []
    for name, kw in CASES:
        cfg = preset(name, **{**SHORT, **kw})
        r = simulate(cfg)
        out.append({"preset": name, "overrides": {**SHORT, **kw},
                    "curves": {k: np.asarray(v, dtype=np.float64).tolist() for k, v in r["curves"].items()}})
        print(name, kw, "done")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    path = pathlib.Path(__file__).with_name("presets-reference.json")
    path.write_text(json.dumps({"commit": rev, "cases": out}, indent=0) + "\n")


if __name__ == "__main__":
    main()
