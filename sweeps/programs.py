"""Bucket programs: `jit(vmap(run))` over a bucket's networks, sharded over the local devices,
compiled ahead of time (or loaded from the program store), and compiled in the background so
that the next bucket's compile overlaps the current bucket's training."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from contamination.config import Config
from contamination.spec import Static, stack_traced
from contamination.train import batched, program_options, sequential

from . import executables


class Program(NamedTuple):
    compiled: Any  # jax.stages.Compiled: call it with chunk_inputs(...)
    sharding: Any  # the NamedSharding of its inputs and outputs
    seconds: float  # time to get it (trace + lower + compile, or load from the store)
    source: str  # "compiled" or "store" (sweeps/executables.py)
    key: str | None  # its key in the store, where the store is used
    options: tuple = ()  # the XLA compile options it was compiled with (`train.program_options`)


def abstract_inputs(static: Static, chunk_size: int, sharding=None):
    """The shapes and dtypes of a chunk's traced inputs (any config's values have them)."""
    one = stack_traced([[Config()]], n_evals=static.n_evals, depth=static.depth)
    return jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct((chunk_size,) + v.shape[1:], v.dtype, sharding=sharding),
                                  one)


def family_key(static: Static, mesh) -> str:
    """The store's key of a bucket's programs at every chunk size (`executables.program_key`
    of one network's inputs: the chunk size is the one thing its programs differ in)."""
    return executables.program_key(static, None, abstract_inputs(static, 1), mesh)


def store_key(static: Static, chunk_size: int, mesh) -> str:
    return f"{family_key(static, mesh)}-c{chunk_size}"


def stored_chunks(store: Path | None, mesh):
    """`static -> frozenset of chunk sizes` whose programs the store holds (for the planner, which
    may run a bucket at a stored chunk size rather than compile its own). The directory is
    listed once: the planner asks about thousands of candidate buckets."""
    if store is None or not executables.enabled() or not store.is_dir():
        return lambda static: frozenset()
    held: dict[str, set[int]] = {}
    for path in store.glob("*-c*.jaxexe"):
        family, _, chunk = path.stem.rpartition("-c")
        if chunk.isdigit():
            held.setdefault(family, set()).add(int(chunk))
    if not held:
        return lambda static: frozenset()

    @functools.lru_cache(maxsize=None)  # one planning: JAX's settings do not change meanwhile
    def chunks(static: Static) -> frozenset:
        return frozenset(held.get(family_key(static, mesh), ()))

    return chunks


# Only one thread lowers at a time: `fresh_compile` switches a process-wide JAX setting.
_compile_lock = threading.Lock()


def compile_bucket(static: Static, chunk_size: int, mesh, store: Path | None = None,
                   options: tuple | None = None) -> Program:
    """AOT-compile jit(vmap(run)) for a bucket's static spec, its network axis sharded over the mesh,
    with XLA compile `options` (default: the program's own, `train.program_options`; others only
    without a store, whose keys assume the program's own).

    With `store` (a directory), a program compiled before under the same key
    (`sweeps/executables.py`) is loaded instead, and a new one is saved there.
    """
    assert options is None or store is None, "a stored program is compiled with its own options"
    t0 = time.perf_counter()
    sharding = NamedSharding(mesh, P("cfg"))
    if options is None:
        options = program_options(static, chunk_size, mesh.devices.flat[0].platform)
    key = None
    if store is not None and executables.enabled():
        key = store_key(static, chunk_size, mesh)
        compiled = executables.load(store, key, list(mesh.devices.flat))
        if compiled is not None:
            return Program(compiled, sharding, time.perf_counter() - t0, "store", key, options)
    # another process of the fleet compiling this program: wait, and load what it stores
    with executables.compiling(store, key, list(mesh.devices.flat)) if key else contextlib.nullcontext() as found:
        if found is not None:
            return Program(found, sharding, time.perf_counter() - t0, "store", key, options)
        if sequential(static):  # one network after another on each device, over its own shard
            fn = jax.jit(jax.shard_map(batched(static), mesh=mesh, in_specs=P("cfg"), out_specs=P("cfg"),
                                       check_vma=False))  # the run mixes per-network and constant values
        else:
            fn = jax.jit(batched(static), in_shardings=(sharding,), out_shardings=sharding)
        abstract = abstract_inputs(static, chunk_size, sharding)
        with _compile_lock, (executables.fresh_compile() if key else contextlib.nullcontext()):
            compiled = fn.lower(abstract).compile(dict(options) or None)
        seconds = time.perf_counter() - t0
        if key:
            executables.save(store, key, compiled, seconds)
    return Program(compiled, sharding, seconds, "compiled", key, options)


def chunk_inputs(static: Static, chunk_size: int, chunk: list, sharding):
    """Stacked traced inputs of a chunk of networks, padded to the chunk size by repeating the
    last network (its results are dropped)."""
    nets = [[r.config for r in n.runs] for n in chunk]
    nets += [nets[-1]] * (chunk_size - len(nets))
    return jax.device_put(stack_traced(nets, n_evals=static.n_evals, depth=static.depth), sharding)


class Compiler:
    """Compiles (or loads) bucket programs in order in one worker thread, ahead of the run loop.

    `get(i)` waits for program i; the seconds spent waiting are the compile time the run loop
    did not hide behind training (`waited_s`).
    """

    def __init__(self, buckets: list, mesh, store: Path | None, ahead: int = 1):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
        self._buckets, self._mesh, self._store, self._ahead = buckets, mesh, store, ahead
        self._futures: dict[int, concurrent.futures.Future] = {}
        self.waited_s = 0.0

    def _submit(self, i: int) -> None:
        if i < len(self._buckets) and i not in self._futures:
            b = self._buckets[i]
            self._futures[i] = self._pool.submit(compile_bucket, b.static, b.chunk_size, self._mesh, self._store)

    def get(self, i: int, stop=None) -> Program:
        """Program i; with `stop` (a `preempt.StopFlag`), the wait gives way to a signal."""
        self._submit(i)
        t0 = time.perf_counter()
        if stop is not None:
            stop.wait(self._futures[i].done)
        prog = self._futures.pop(i).result()
        self.waited_s += time.perf_counter() - t0
        for j in range(i + 1, i + 1 + self._ahead):
            self._submit(j)
        return prog

    def recompile(self, i: int) -> Program:
        """Compile bucket i again in the calling thread (after its stored program failed)."""
        b = self._buckets[i]
        t0 = time.perf_counter()
        prog = compile_bucket(b.static, b.chunk_size, self._mesh, self._store)
        self.waited_s += time.perf_counter() - t0
        return prog

    def close(self, wait: bool = True) -> None:
        """Cancel what has not started; `wait=False` leaves a compile in progress to finish alone."""
        for f in self._futures.values():
            f.cancel()
        self._pool.shutdown(wait=wait)
