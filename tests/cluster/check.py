"""The checks of `make test-cluster` (tests/cluster/slurm.sh), on what the array job left.

usage: check.py OUT ONE STATUS_BEFORE STATUS_AFTER WRITTEN
OUT: the array's results; ONE: the same grid by one process (same chunking, same fleet cache);
STATUS_*: `sweeps status` before and after the resubmitted index; WRITTEN: runs files the killed
task had written.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

METRICS = ["id_loss", "ood_loss", "id_acc", "ood_acc", "bg_signed", "bg_norm", "core_norm", "train_loss"]


def manifests(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("manifest*.json"))}


def main(out: str, one: str, before: str, after: str, written: str) -> None:
    out, one, written = Path(out), Path(one), int(written)
    runs, ref = pd.read_parquet(out / "runs"), pd.read_parquet(one / "runs")
    assert len(runs) == len(ref) == 16 and runs["run_id"].is_unique, (len(runs), len(ref))
    curves = pd.read_parquet(out / "curves")
    assert not curves.duplicated(["run_id", "step"]).any() and len(curves) == len(pd.read_parquet(one / "curves"))
    a, b = (df.set_index("run_id")[METRICS].sort_index() for df in (runs, ref))
    assert list(a.index) == list(b.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5, atol=1e-6)
    print(f"every run once ({len(runs)}), metrics as one process (max abs diff {np.abs(a - b).to_numpy().max():.2g})")

    before, after = Path(before).read_text(), Path(after).read_text()
    missing = int(before.splitlines()[0].split(" done, ")[1].split()[0])
    assert missing > 0 and "1/3" in before and "nothing missing" in after, (before, after)
    m = manifests(out)
    killed, retry = m["manifest-s1of3.json"]["invocations"]
    assert "finished" not in killed and retry["already_done"] == written > 0, (killed, retry, written)
    print(f"the killed task wrote {written} runs; its resubmission trained the other {retry['trained']}; "
          f"status reported {missing} missing before it, nothing after")

    log = [json.loads(line) for line in (out.parent / "fleet-cache" / "executables" / "compiles.log").read_text()
           .splitlines()]
    compiled = collections.Counter(e["key"] for e in log)
    keys = {bk["program_key"] for doc in m.values() for inv in doc["invocations"] for bk in inv["buckets"]}
    assert keys <= set(compiled) and max(compiled.values()) == 1, compiled
    loaded = [bk["program"] for inv in manifests(one)["manifest.json"]["invocations"] for bk in inv["buckets"]]
    assert loaded and set(loaded) == {"store"}, loaded
    print(f"{len(compiled)} program(s) compiled once each by the array ({sum(len(d['invocations']) for d in m.values())} "
          f"task attempts); the one-process run loaded all {len(loaded)} from the fleet's store")


if __name__ == "__main__":
    main(*sys.argv[1:])
