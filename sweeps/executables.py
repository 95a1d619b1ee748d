"""A store of compiled bucket programs, so a warm sweep skips tracing and lowering too.

JAX's persistent compilation cache saves XLA's compile, but a cache hit still traces the
Python run function and lowers it to StableHLO first: about 0.3-0.5 s per program on the
2-core CPU, most of a warm `quickstart`'s compile time (BENCHMARKS.md). This store keeps the
serialized executable itself (`jax.experimental.serialize_executable`), keyed by everything
the program depends on:

- the source of the `contamination` package and of `sweeps/programs.py` (the code traced),
- the versions of Python and the packages the engine records (`provenance.versions`),
- every `jax.config` value and every `JAX_*` / `XLA_*` environment variable,
- the backend, its platform version, and the mesh's devices (ids, kinds, processes),
- the bucket's static spec and input shapes and dtypes; files are named `FAMILY-cCHUNK.jaxexe`,
  the family covering all of the above (`programs.family_key`), so that the planner can list
  the chunk sizes held for a bucket and run it at one of them instead of compiling
  (`plan.reuse_stored_chunk`).

Any change to one of them is a different key, so a stale program is never loaded; a file
that fails to load, or a loaded program that fails on its first chunk, is recompiled and
replaced. Programs are compiled for the store with JAX's persistent cache bypassed
(`fresh_compile`): re-serializing an executable that JAX itself loaded from its cache gives
a file that loads but fails to run on the CPU backend (jaxlib 0.10: "Function ... not found"). Files live in `executables/` next to JAX's
cache (`~/.cache/contamination/jax` or `$CONTAMINATION_JAX_CACHE`); they are pickles, so
the directory must be trusted as the cache itself is. `CONTAMINATION_EXECUTABLE_CACHE=0`
turns the store off. A fleet of one machine kind can share the store (the cache on a shared
filesystem): a process compiling a program holds a lease on it (`compiling`), so each program is
compiled once, and `compiles.log` lists every program compiled into the store.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import socket
import time
from pathlib import Path
from typing import Any

import jax
from jax.experimental.compilation_cache import compilation_cache as cc
from jax.experimental.serialize_executable import deserialize_and_load, serialize

from . import storage
from .lease import Lease
from .provenance import versions

ROOT = Path(__file__).resolve().parent.parent


def enabled() -> bool:
    return os.environ.get("CONTAMINATION_EXECUTABLE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=None)
def code_digest() -> str:
    """sha256 over the traced code: every module of `contamination` and `sweeps/programs.py`."""
    h = hashlib.sha256()
    files = sorted((ROOT / "contamination").rglob("*.py")) + [ROOT / "sweeps" / "programs.py"]
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def program_key(static: Any, chunk_size: int, inputs, mesh) -> str:
    """The store's key of one bucket program (see the module docstring for what it covers)."""
    devices = list(mesh.devices.flat)
    client = devices[0].client
    desc = {
        "code": code_digest(),
        "versions": sorted(versions().items()),
        "jax_config": sorted((k, repr(v)) for k, v in jax.config.values.items()),
        "env": sorted((k, v) for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_"))),
        "backend": [client.platform, client.platform_version],
        "mesh": [list(mesh.axis_names), list(mesh.devices.shape)],
        "devices": [[d.id, d.device_kind, d.process_index] for d in devices],
        "static": repr(static),
        "chunk_size": chunk_size,
        "inputs": sorted((jax.tree_util.keystr(k), list(v.shape), str(v.dtype))
                         for k, v in jax.tree_util.tree_leaves_with_path(inputs)),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()


def exists(store: Path, key: str) -> bool:
    return (store / f"{key}.jaxexe").exists()


def load(store: Path, key: str, devices):
    """The stored program for `key`, or None (missing, or unreadable by this JAX: recompile)."""
    path = store / f"{key}.jaxexe"
    if not path.exists():
        return None
    try:
        with path.open("rb") as f:
            blob, in_tree, out_tree = pickle.load(f)
        return deserialize_and_load(blob, in_tree, out_tree, backend=devices[0].client, execution_devices=devices)
    except Exception:  # noqa: BLE001 - a bad entry is a miss; the caller recompiles and replaces it
        return None


COMPILE_LOG = "compiles.log"  # one line per program compiled into the store: what a fleet compiled


def save(store: Path, key: str, compiled, seconds: float | None = None) -> bool:
    """Store a compiled program atomically, and log it (`COMPILE_LOG`: key, host, pid, seconds);
    False where the backend cannot serialize it."""
    try:
        blob, in_tree, out_tree = serialize(compiled)
        data = pickle.dumps((blob, in_tree, out_tree))
    except Exception:  # noqa: BLE001 - not every backend or program serializes; the store is optional
        return False
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".tmp-{key}-{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, store / f"{key}.jaxexe")
    line = json.dumps({"key": key, "host": socket.gethostname(), "pid": os.getpid(), "seconds": seconds})
    with open(store / COMPILE_LOG, "a") as f:  # one short append: whole lines, even from several processes
        f.write(line + "\n")
    return True


def discard(store: Path, key: str) -> None:
    (store / f"{key}.jaxexe").unlink(missing_ok=True)


@contextlib.contextmanager
def compiling(store: Path, key: str, devices):
    """Around compiling the program `key` for the store: yields None when this process is to
    compile it, or the program another process stored meanwhile. A shared store (one folder for
    a fleet of one machine kind) is compiled into once per program: the compiling process holds
    the lease `compile-KEY` (`lease.py`, in `leases/` of the store), and the others that need the
    program wait for it to end, then load the program (or compile it, if none landed)."""
    lease = Lease(storage.location(str(store)), f"compile-{key[:32]}")
    while not lease.try_acquire():
        while lease.blockers():
            time.sleep(0.1)
        found = load(store, key, devices)
        if found is not None:
            yield found
            return
    try:
        yield load(store, key, devices)  # stored between the caller's look and the lease
    finally:
        lease.release()


@contextlib.contextmanager
def fresh_compile():
    """Compile inside without JAX's persistent cache (neither read nor written), so that the
    executable is a fresh compile, the kind that serializes completely."""
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    cc.reset_cache()  # JAX decides once per process whether the cache is used; decide again
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
        cc.reset_cache()
