"""Where results come from: the simulator's results version, the code's commit, package versions."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from contamination.ids import RESULTS_VERSION

PRNG = "threefry2x32 (partitionable), keys from sha256 of run content, draws per row"


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=None)
def versions() -> dict[str, str]:
    """Python's and the packages' versions (cached: the store's key reads them per program; read-only)."""
    out = {"python": platform.python_version()}
    for pkg in ("contamination", "jax", "jaxlib", "optax", "numpy", "pandas", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def provenance(grid, device: dict, metrics: list[str], dtype: str = "float32",
               precisions: list[str] = ("highest",)) -> dict:
    """What every Parquet file's metadata and the manifest record about the code and the device,
    and how it computed: the float width (`dtype`) and the runs' matmul `precisions`."""
    return {"grid": grid.name, "scale": grid.scale, "grid_sha256": grid.sha256, "git_commit": git_commit(),
            "results_version": RESULTS_VERSION, "versions": versions(), **device, "metrics": metrics,
            "prng": PRNG, "dtype": dtype, "precisions": sorted(precisions)}
