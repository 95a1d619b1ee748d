"""JAX's persistent compilation cache for this project's programs (used by the sweep engine and
the single-run command; the program store and the device models live beside it)."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def setup_jax(cache_dir: str | None = None) -> Path:
    """Enable JAX's persistent compilation cache (every compile is cached); returns its directory.

    The program store (`executables/`) and the device model (`calibration/`) live beside it.
    """
    cache = cache_dir or os.environ.get("CONTAMINATION_JAX_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "contamination" / "jax")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return Path(cache)
