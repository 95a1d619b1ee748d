"""Plan a sweep: trained networks, programs (buckets) chosen by predicted wall time, chunks.

- A *network* is one training: the runs that differ only in `config.EVAL_ONLY_FIELDS` train it
  once and are measured once each (its evaluation variants).
- A *bucket* is one compiled program. Networks that share their categorical choices (the
  `config.pad_key` of their static spec) may share one: every paddable size (width, feature
  dimensions, input dimension, sample sizes, variants) is padded exactly to the bucket's largest.
- The bucketing minimises predicted wall time (`auto`): a separate program costs a compile (none
  when the program store has it), a padded one costs the FLOPs of its padding and, on an
  accelerator, a device that sits at its per-step latency floor; `calibrate.DeviceModel` holds
  the constants measured on this device kind. A numeric `min_efficiency` instead merges while
  that share of the executed FLOPs stays useful: 1 gives one program per exact shape, 0 one
  program per set of categorical choices.
- The planner alone sizes chunks: multiples of the device count that fit the memory budget,
  and, where the device model measured a FLOP rate that drops once a device's share of a chunk
  leaves the caches (CPUs), smaller ones when they are predicted faster.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np

from contamination.ids import hex_ids, stable_hash, training_key
from contamination.spec import Static, pad_key, padded_spec, static_spec
from contamination.cost import flops, memory_bytes
from contamination.train import program_options, sequential

from .runs import Run, RunTable


# The static fields a bucket id hashes, in the order it hashes their values (frozen: never reorder).
BUCKET_FIELDS = ("width", "core_dim", "bg_dim", "input_dim", "core", "n_train", "n_test", "batch_size", "online",
                 "activation", "bias", "output", "init", "loss", "optimizer", "steps", "log_every", "experiment",
                 "rep_dim", "teacher", "teacher_steps", "log_schedule", "n_evals", "hidden", "n_classes", "dataset",
                 "border", "digit_classes", "model", "precision", "teacher_bias_unit", "teacher_data",
                 "retrain_output", "stop")
# Static fields added after bucket ids were first compared across versions (commit ec221b9): left
# out of a bucket's id at their default, so that adding one leaves existing ids alone; fields added
# since BUCKET_FIELDS was frozen follow it as (name, value) pairs, away from their default only.
LATER_STATIC = ("precision", "teacher_bias_unit", "teacher_data", "retrain_output", "stop")


def bucket_id(static: Static) -> str:
    """A bucket's id: a short hash of its static spec (later fields at their default left out)."""
    values, defaults = static._asdict(), Static._field_defaults
    hashed = [values[f] for f in BUCKET_FIELDS if not (f in LATER_STATIC and values[f] == defaults[f])]
    hashed += [[f, v] for f, v in values.items() if f not in BUCKET_FIELDS and v != defaults[f]]
    return stable_hash(hashed, nbytes=4)


class PlanError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Network:
    """The runs that train one network (equal `training_key`), ordered by run id."""

    runs: tuple[Run, ...]

    @property
    def config(self):
        return self.runs[0].config

    @functools.cached_property
    def id(self) -> str:
        return training_key(self.config)

    @functools.cached_property
    def static(self) -> Static:
        return static_spec(self.config, n_evals=len(self.runs))

    @functools.cached_property
    def flops(self) -> float:
        return flops(self.static)


def networks_of(runs: list[Run]) -> list[Network]:
    """Group runs into the networks they train, in order of their first run id."""
    groups: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: r.run_id):
        groups.setdefault(training_key(r.config), []).append(r)
    return [Network(tuple(g)) for g in groups.values()]


class NetworkSet:
    """Networks as columns: each network's shape (an index into `statics`, its distinct static
    specs), its run count and its place in run-id order; a `Network` is built only when asked for.

    `TableNetworks` groups rows of a `RunTable` (a million runs in a few numpy sorts, networks in
    order of their first run id, as `networks_of`); `of_networks` wraps a list of `Network`s, in
    its order.
    """

    def __init__(self, statics: list[Static], shape: np.ndarray, pos: np.ndarray, n_runs: np.ndarray,
                 build: Callable[[int], Network], activation: Callable[[np.ndarray], list[str]]):
        self.statics = statics
        self.flops = [flops(s) for s in statics]
        self.shape = shape  # shape index of each network
        self.pos = pos  # each network's place when sorted by first run id
        self.n_runs = n_runs  # runs of each network
        self._build, self._activation = build, activation
        first = np.full(len(statics), len(shape), np.int64)
        np.minimum.at(first, shape, np.arange(len(shape)))
        self.shape_first = first  # the first network of each shape (this set's order)
        first_pos = np.full(len(statics), len(shape), np.int64)
        np.minimum.at(first_pos, shape, pos)
        self.shape_first_pos = first_pos  # the first network of each shape in run-id order
        self.shape_count = np.bincount(shape, minlength=len(statics))
        self.shape_runs = np.bincount(shape, weights=n_runs, minlength=len(statics)).astype(np.int64)

    def __len__(self) -> int:
        return len(self.shape)

    def network(self, i: int) -> Network:
        return self._build(int(i))

    def activations(self, indices: np.ndarray) -> list[str]:
        """The activations of the networks at `indices`, first seen first."""
        return self._activation(indices)

    @classmethod
    def of_networks(cls, networks: list[Network]) -> "NetworkSet":
        networks = list(networks)
        index: dict[Static, int] = {}
        shape = np.array([index.setdefault(n.static, len(index)) for n in networks], dtype=np.int64)
        order = sorted(range(len(networks)), key=lambda i: networks[i].runs[0].run_id)
        pos = np.empty(len(networks), np.int64)
        pos[order] = np.arange(len(networks))
        n_runs = np.array([len(n.runs) for n in networks], dtype=np.int64)

        def activation(indices):
            return list(dict.fromkeys(r.config.activation for i in indices for r in networks[i].runs))

        return cls(list(index), shape, pos, n_runs, networks.__getitem__, activation)


class TableNetworks(NetworkSet):
    """The networks of rows of a `RunTable` (`rows`: grouped by network, networks in order of
    their first run id, each network's runs in run-id order, as `networks_of`)."""

    def __init__(self, table: RunTable, rows: np.ndarray | None = None):
        rows = np.arange(len(table)) if rows is None else np.asarray(rows, dtype=np.int64)
        rows = rows[np.argsort(table.run_key[rows], kind="stable")]
        keys, first, inverse = np.unique(table.net_key[rows], return_index=True, return_inverse=True)
        rank = np.empty(len(keys), np.int64)
        rank[np.argsort(first)] = np.arange(len(keys))
        net_of_row = rank[inverse.reshape(-1)]
        self.rows = rows[np.argsort(net_of_row, kind="stable")]
        n_runs = np.bincount(net_of_row, minlength=len(keys)).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(n_runs)]).astype(np.int64)
        self.table = table
        first_rows = self.rows[self.starts[:-1]]
        self.keys = table.net_key[first_rows]  # training keys, as uint64
        self.point = table.point[first_rows]
        # A network's static spec is its point's (every run of a network shares the static
        # fields) with its run count as evaluation variants: one spec per (point, count).
        m = int(n_runs.max(initial=0)) + 1
        pairs, pair_of = np.unique(self.point.astype(np.int64) * m + n_runs, return_inverse=True)
        index: dict[Static, int] = {}
        of_pair = [index.setdefault(static_spec(table.points[k // m].config, n_evals=k % m), len(index))
                   for k in pairs.tolist()]
        shape = np.array(of_pair, dtype=np.int64)[pair_of.reshape(-1)] if len(pairs) else np.zeros(0, np.int64)
        super().__init__(list(index), shape, np.arange(len(keys)), n_runs, self._network, self._activations)

    def network_rows(self, i: int) -> np.ndarray:
        return self.rows[self.starts[i]:self.starts[i + 1]]

    def _network(self, i: int) -> Network:
        net = Network(tuple(self.table.runs(self.network_rows(i))))
        net.__dict__["static"] = self.statics[self.shape[i]]
        net.__dict__["id"] = hex_ids(self.keys[i:i + 1])[0]
        return net

    def _activations(self, indices: np.ndarray) -> list[str]:
        points = self.point[np.asarray(indices, dtype=np.int64)]
        _, first = np.unique(points, return_index=True)
        return list(dict.fromkeys(self.table.points[p].config.activation for p in points[np.sort(first)].tolist()))

    def share(self, process_index: int, process_count: int) -> np.ndarray:
        """The rows of this process's share of the networks (`engine.share`: round robin over
        the networks sorted by id)."""
        if process_count == 1:
            return self.rows
        mine = np.zeros(len(self), bool)
        mine[np.argsort(self.keys, kind="stable")[process_index::process_count]] = True
        return self.rows[np.repeat(mine, self.n_runs)]


class Networks(Sequence):
    """The networks of some shapes of a `NetworkSet`, ordered by first run id: a bucket's
    networks, counted and summed over its shapes, built as `Network`s only when read."""

    def __init__(self, nets: NetworkSet, shapes):
        self.nets = nets
        self.shapes = tuple(sorted(set(int(s) for s in shapes), key=lambda s: nets.shape_first_pos[s]))
        self._len = int(sum(nets.shape_count[s] for s in self.shapes))

    def __len__(self) -> int:
        return self._len

    @functools.cached_property
    def indices(self) -> np.ndarray:
        """The networks' indices in the set, in run-id order."""
        idx = np.flatnonzero(np.isin(self.nets.shape, self.shapes))
        return idx[np.argsort(self.nets.pos[idx], kind="stable")]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.nets.network(k) for k in self.indices[i]]
        return self.nets.network(self.indices[i])

    def __iter__(self):
        return (self.nets.network(k) for k in self.indices)

    def __add__(self, other):
        if isinstance(other, Networks) and other.nets is self.nets:
            return Networks(self.nets, self.shapes + other.shapes)
        return list(self) + list(other)

    def only(self, shape: int) -> "Networks":
        return Networks(self.nets, (shape,))

    def without(self, shape: int) -> "Networks":
        return Networks(self.nets, [s for s in self.shapes if s != shape])

    @property
    def statics(self) -> list[Static]:
        return [self.nets.statics[s] for s in self.shapes]

    @property
    def n_runs(self) -> int:
        return int(sum(self.nets.shape_runs[s] for s in self.shapes))

    @property
    def flops(self) -> float:
        """The networks' FLOPs summed exactly (and rounded once)."""
        return float(sum(Fraction(self.nets.flops[s]) * int(self.nets.shape_count[s]) for s in self.shapes))

    def activations(self) -> list[str]:
        return self.nets.activations(self.indices)


class _Chunks(Sequence):
    """A bucket's chunks, each a list of `Network`s built when it is read."""

    def __init__(self, networks: Sequence[Network], size: int):
        self.networks, self.size = networks, size

    def __len__(self) -> int:
        return math.ceil(len(self.networks) / self.size) if self.size else 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(len(self))[i]]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return list(self.networks[i * self.size:(i + 1) * self.size])


def _statics(networks) -> list[Static]:
    return networks.statics if isinstance(networks, Networks) else [n.static for n in networks]


@dataclasses.dataclass
class Bucket:
    static: Static  # padded sizes
    networks: Sequence[Network]  # a list, or `Networks` (the planner's)
    chunk_size: int = 0  # networks per compiled call
    predicted_compile_s: float = 0.0
    predicted_run_s: float = 0.0
    n_devices: int = 1  # the chunk's networks are shared out over this many devices

    @property
    def id(self) -> str:
        return bucket_id(self.static)

    @property
    def runs(self) -> list[Run]:
        return [r for n in self.networks for r in n.runs]

    @property
    def n_runs(self) -> int:
        if isinstance(self.networks, Networks):
            return self.networks.n_runs
        return sum(len(n.runs) for n in self.networks)

    @property
    def activations(self) -> list[str]:
        """The activations of its runs, first seen first."""
        if isinstance(self.networks, Networks):
            return self.networks.activations()
        return list(dict.fromkeys(r.config.activation for r in self.runs))

    @property
    def widths(self) -> list[int]:
        return sorted({s.width for s in _statics(self.networks)})

    @property
    def shapes(self) -> list[Static]:
        return sorted(set(_statics(self.networks)))

    @property
    def efficiency(self) -> float:
        """Share of the executed FLOPs (last chunk's padding aside) that belongs to true sizes."""
        return self.flops / (len(self.networks) * flops(self.static))

    @property
    def n_chunks(self) -> int:
        return math.ceil(len(self.networks) / self.chunk_size) if self.chunk_size else 0

    def chunks(self) -> Sequence[list[Network]]:
        return _Chunks(self.networks, self.chunk_size)

    @property
    def flops(self) -> float:
        """FLOPs of the true networks (what a researcher asked for)."""
        if isinstance(self.networks, Networks):
            return self.networks.flops
        return sum(n.flops for n in self.networks)

    @property
    def executed_flops(self) -> float:
        """FLOPs executed, padding of sizes and of the last chunk included."""
        return self.n_chunks * self.chunk_size * flops(self.static)

    @property
    def run_memory(self) -> int:
        return memory_bytes(self.static)

    @property
    def compile_options(self) -> tuple:
        """The XLA compile options its program gets at its chunk size (`train.program_options`, as
        `programs.compile_bucket` compiles it)."""
        return program_options(self.static, self.chunk_size)

    @property
    def chunk_bytes_per_device(self) -> float:
        """Estimated bytes a chunk works on at once on each device (one network where the program
        runs them one after another)."""
        if sequential(self.static):
            return float(self.run_memory)
        return self.run_memory * self.chunk_size / self.n_devices

    @property
    def predicted_s(self) -> float:
        return self.predicted_compile_s + self.predicted_run_s


def choose_chunk(bucket: Bucket, memory_budget: int, n_devices: int, max_chunk: int = 4096,
                 chunk_size: int | None = None, model=None) -> None:
    """The bucket's chunk size: a multiple of the device count that fits `memory_budget` per
    device (two chunks in flight when there are several), split so that chunks are as even as
    possible (least padding); `chunk_size` forces it (rounded to the device count). Where the
    device model (`calibrate.DeviceModel`) says the FLOP rate drops past `cache_bytes` per
    device, smaller chunks that stay within it are taken if they are predicted faster."""
    b = bucket
    b.n_devices = n_devices
    per_device = memory_budget // b.run_memory
    if per_device < 1:
        raise PlanError(
            f"memory budget {fmt_bytes(memory_budget)} per device is below one run of bucket "
            f"{b.id} ({fmt_bytes(b.run_memory)}, width {b.static.width}, n_train {b.static.n_train}, "
            f"input_dim {b.static.input_dim}); raise --memory-budget")
    if chunk_size:
        b.chunk_size = max(n_devices, (chunk_size // n_devices) * n_devices)
        return
    if len(b.networks) > per_device * n_devices:
        # Several chunks: the engine dispatches the next chunk while the host fetches and
        # writes the last, so two chunks are in flight and each gets half the budget.
        per_device = max(per_device // 2, 1)
    cap = min(per_device * n_devices, max(max_chunk // n_devices, 1) * n_devices)

    def even(cap: int) -> int:
        n_chunks = math.ceil(len(b.networks) / cap)
        return math.ceil(math.ceil(len(b.networks) / n_chunks) / n_devices) * n_devices

    b.chunk_size = even(cap)
    cache = getattr(model, "cache_bytes", None)
    if cache is not None and b.chunk_bytes_per_device > cache:
        fits = even(min(cap, max(int(cache // b.run_memory), 1) * n_devices))
        # the larger chunk on a tie: fewer calls
        b.chunk_size = min((b.chunk_size, fits), key=lambda c: model.run_s(dataclasses.replace(b, chunk_size=c)))


@dataclasses.dataclass(frozen=True)
class Planning:
    """What the planner needs besides the networks."""

    memory_budget: int
    n_devices: int
    model: object  # calibrate.DeviceModel: compile_s(static, options), run_s(bucket); None: no predictions
    min_efficiency: float | None = None  # None: auto (least predicted time)
    chunk_size: int | None = None
    in_store: Callable[[Static, int], bool] = lambda static, chunk: False  # noqa: E731
    # the chunk sizes at which the program store holds a static spec's programs
    stored_chunks: Callable[[Static], frozenset] = lambda static: frozenset()  # noqa: E731


def fits(b: Bucket, chunk: int, p: Planning) -> bool:
    """Whether chunks of `chunk` networks fit the memory budget per device (half of it when two
    chunks are in flight), as `choose_chunk` requires."""
    per_device = p.memory_budget // b.run_memory
    if len(b.networks) > chunk:
        per_device = max(per_device // 2, 1)
    return chunk % p.n_devices == 0 and chunk // p.n_devices <= per_device


def reuse_stored_chunk(b: Bucket, p: Planning) -> bool:
    """Run `b` at a chunk size whose program the store already holds, where that is predicted
    faster than compiling a program for its own chunk size: a refinement round, or a re-run
    with another budget, loads the program an earlier plan compiled (the extra padding or
    chunks cost less than a compile)."""
    options = [c for c in p.stored_chunks(b.static) if c != b.chunk_size and fits(b, c, p)]
    if not options:
        return False
    run_s = {c: p.model.run_s(dataclasses.replace(b, chunk_size=c)) for c in options}
    best = min(options, key=lambda c: (run_s[c], -c))
    if run_s[best] >= p.model.compile_s(b.static, b.compile_options) + p.model.run_s(b):
        return False
    b.chunk_size = best
    return True


def make_bucket(networks: Sequence[Network], p: Planning) -> Bucket:
    """A bucket of `networks` (a list, or `Networks`: already in order) padded to their largest
    sizes, ordered by first run id, chunked, with its predicted seconds."""
    if not isinstance(networks, Networks):
        networks = sorted(networks, key=lambda n: n.runs[0].run_id)
    b = Bucket(padded_spec(_statics(networks)), networks)
    choose_chunk(b, p.memory_budget, p.n_devices, chunk_size=p.chunk_size, model=p.model)
    if p.model is not None:
        stored = p.in_store(b.static, b.chunk_size) or (p.chunk_size is None and reuse_stored_chunk(b, p))
        b.predicted_compile_s = 0.0 if stored else p.model.compile_s(b.static, b.compile_options)
        b.predicted_run_s = p.model.run_s(b)
    return b


def _greedy(clusters: list[Bucket], merge_score, p: Planning) -> list[Bucket]:
    """Merge the best-scoring pair while some pair scores above zero (None: not allowed)."""
    clusters = list(clusters)
    scores: dict[tuple[int, int], tuple[float, Bucket]] = {}
    alive = dict(enumerate(clusters))
    next_id = len(clusters)

    def score(i, j):
        merged = make_bucket(alive[i].networks + alive[j].networks, p)
        s = merge_score(alive[i], alive[j], merged)
        if s is not None:
            scores[(i, j)] = (s, merged)

    ids = sorted(alive)
    for x, i in enumerate(ids):
        for j in ids[x + 1:]:
            score(i, j)
    while scores:
        (i, j), (s, merged) = max(scores.items(), key=lambda kv: (kv[1][0], -kv[0][0], -kv[0][1]))
        if s <= 0:
            break
        del alive[i], alive[j]
        scores = {k: v for k, v in scores.items() if i not in k and j not in k}
        alive[next_id] = merged
        for k in sorted(alive):
            if k != next_id:
                score(k, next_id)
        next_id += 1
    return [alive[k] for k in sorted(alive)]


def bucketize(networks: list[Network] | NetworkSet, p: Planning) -> list[Bucket]:
    """Group networks into programs: by categorical choices, then by the chosen padding. Buckets
    are unions of exact shapes, so the search works on shapes (a count and FLOPs each), however
    many networks each holds."""
    nets = networks if isinstance(networks, NetworkSet) else NetworkSet.of_networks(networks)
    groups: dict[Static, list[int]] = {}  # pad key -> its shapes, first seen first
    for shape in np.argsort(nets.shape_first, kind="stable").tolist():
        if nets.shape_first[shape] < len(nets):
            groups.setdefault(pad_key(nets.statics[shape]), []).append(shape)
    if p.min_efficiency is None:
        def merge_score(a, b, merged):  # seconds saved
            return a.predicted_s + b.predicted_s - merged.predicted_s
    else:
        def merge_score(a, b, merged):  # the most efficient merge first, while it is efficient enough
            return merged.efficiency + 1e-9 if merged.efficiency >= p.min_efficiency - 1e-12 else None
    buckets = []
    for shapes in groups.values():
        exact = [make_bucket(Networks(nets, (s,)), p) for s in sorted(shapes, key=nets.statics.__getitem__)]
        merged = _greedy(exact, merge_score, p)
        buckets += _improve(merged, p) if p.min_efficiency is None else merged
    return buckets


def _improve(buckets: list[Bucket], p: Planning, rounds: int = 20) -> list[Bucket]:
    """Local search after the greedy merges: move one shape's networks to another bucket (or to
    a bucket of its own) while that lowers the predicted total (buckets of `Networks`)."""
    buckets = list(buckets)
    for _ in range(rounds):
        best = None  # (gain, source index, target index or None, the shape's networks)
        for i, src in enumerate(buckets):
            if len(src.networks.shapes) < 2:
                continue
            for shape in src.networks.shapes:  # first seen (in run-id order) first
                rest = make_bucket(src.networks.without(shape), p)
                nets = src.networks.only(shape)
                for j in [None] + [j for j in range(len(buckets)) if j != i]:
                    moved = make_bucket(nets + buckets[j].networks if j is not None else nets, p)
                    before = src.predicted_s + (buckets[j].predicted_s if j is not None else 0.0)
                    gain = before - rest.predicted_s - moved.predicted_s
                    if gain > 1e-9 and (best is None or gain > best[0]):
                        best = (gain, i, j, rest, moved)
        if best is None:
            break
        _, i, j, rest, moved = best
        buckets[i] = rest
        if j is None:
            buckets.append(moved)
        else:
            buckets[j] = moved
    return buckets


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def parse_bytes(text: str) -> int:
    """'512MB', '2GiB', '1.5G', '1000000' -> bytes."""
    t = text.strip().upper().replace(" ", "")
    units = {"TIB": 2**40, "GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "TB": 10**12, "GB": 10**9, "MB": 10**6,
             "KB": 10**3, "T": 2**40, "G": 2**30, "M": 2**20, "K": 2**10, "B": 1}
    for u, mult in units.items():
        if t.endswith(u):
            num = t[: -len(u)]
            break
    else:
        num, mult = t, 1
    try:
        value = float(num)
    except ValueError:
        raise PlanError(f"--memory-budget: cannot read {text!r}; use e.g. 512MB, 2GiB") from None
    if value <= 0:
        raise PlanError(f"--memory-budget: must be positive, got {text!r}")
    return int(value * mult)
