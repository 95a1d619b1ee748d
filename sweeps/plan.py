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
from typing import Callable

from contamination.ids import stable_hash, training_key
from contamination.spec import Static, pad_key, padded_spec, static_spec
from contamination.cost import flops, memory_bytes

from .grid import Run


class PlanError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Network:
    """The runs that train one network (equal `training_key`), ordered by run id."""

    runs: tuple[Run, ...]

    @property
    def config(self):
        return self.runs[0].config

    @property
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


@dataclasses.dataclass
class Bucket:
    static: Static  # padded sizes
    networks: list[Network]
    chunk_size: int = 0  # networks per compiled call
    predicted_compile_s: float = 0.0
    predicted_run_s: float = 0.0
    n_devices: int = 1  # the chunk's networks are shared out over this many devices

    @property
    def id(self) -> str:
        return stable_hash(list(self.static), nbytes=4)

    @property
    def runs(self) -> list[Run]:
        return [r for n in self.networks for r in n.runs]

    @property
    def widths(self) -> list[int]:
        return sorted({n.config.width for n in self.networks})

    @property
    def shapes(self) -> list[Static]:
        return sorted({n.static for n in self.networks})

    @property
    def efficiency(self) -> float:
        """Share of the executed FLOPs (last chunk's padding aside) that belongs to true sizes."""
        return self.flops / (len(self.networks) * flops(self.static))

    @property
    def n_chunks(self) -> int:
        return math.ceil(len(self.networks) / self.chunk_size) if self.chunk_size else 0

    def chunks(self) -> list[list[Network]]:
        c = self.chunk_size
        return [self.networks[i:i + c] for i in range(0, len(self.networks), c)]

    @property
    def flops(self) -> float:
        """FLOPs of the true networks (what a researcher asked for)."""
        return sum(n.flops for n in self.networks)

    @property
    def executed_flops(self) -> float:
        """FLOPs executed, padding of sizes and of the last chunk included."""
        return self.n_chunks * self.chunk_size * flops(self.static)

    @property
    def run_memory(self) -> int:
        return memory_bytes(self.static)

    @property
    def chunk_bytes_per_device(self) -> float:
        """Estimated bytes a chunk works on at once on each device (one network where the program
        runs them one after another)."""
        from contamination.train import sequential

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
    model: object  # calibrate.DeviceModel: compile_s(static), run_s(bucket); None: no predictions
    min_efficiency: float | None = None  # None: auto (least predicted time)
    chunk_size: int | None = None
    in_store: Callable[[Static, int], bool] = lambda static, chunk: False  # noqa: E731


def make_bucket(networks: list[Network], p: Planning) -> Bucket:
    """A bucket of `networks` padded to their largest sizes, chunked, with its predicted seconds."""
    b = Bucket(padded_spec(n.static for n in networks), sorted(networks, key=lambda n: n.runs[0].run_id))
    choose_chunk(b, p.memory_budget, p.n_devices, chunk_size=p.chunk_size, model=p.model)
    if p.model is not None:
        b.predicted_compile_s = 0.0 if p.in_store(b.static, b.chunk_size) else p.model.compile_s(b.static)
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


def bucketize(networks: list[Network], p: Planning) -> list[Bucket]:
    """Group networks into programs: by categorical choices, then by the chosen padding."""
    groups: dict[Static, dict[Static, list[Network]]] = {}
    for n in networks:
        groups.setdefault(pad_key(n.static), {}).setdefault(n.static, []).append(n)
    if p.min_efficiency is None:
        def merge_score(a, b, merged):  # seconds saved
            return a.predicted_s + b.predicted_s - merged.predicted_s
    else:
        def merge_score(a, b, merged):  # the most efficient merge first, while it is efficient enough
            return merged.efficiency + 1e-9 if merged.efficiency >= p.min_efficiency - 1e-12 else None
    buckets = []
    for by_shape in groups.values():
        exact = [make_bucket(nets, p) for _, nets in sorted(by_shape.items())]
        merged = _greedy(exact, merge_score, p)
        buckets += _improve(merged, p) if p.min_efficiency is None else merged
    return buckets


def _improve(buckets: list[Bucket], p: Planning, rounds: int = 20) -> list[Bucket]:
    """Local search after the greedy merges: move one shape's networks to another bucket (or to
    a bucket of its own) while that lowers the predicted total."""
    buckets = list(buckets)
    for _ in range(rounds):
        best = None  # (gain, source index, target index or None, the shape's networks)
        for i, src in enumerate(buckets):
            by_shape: dict[Static, list[Network]] = {}
            for n in src.networks:
                by_shape.setdefault(n.static, []).append(n)
            if len(by_shape) < 2:
                continue
            for shape, nets in by_shape.items():
                rest = make_bucket([n for n in src.networks if n.static != shape], p)
                for j in [None] + [j for j in range(len(buckets)) if j != i]:
                    moved = make_bucket(nets + (buckets[j].networks if j is not None else []), p)
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
