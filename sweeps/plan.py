"""Plan a sweep: shape buckets (one compile each), width padding, chunks that fit memory."""

from __future__ import annotations

import dataclasses
import math

from contamination.config import Static, stable_hash, static_spec
from contamination.cost import flops, memory_bytes

from .grid import Run


@dataclasses.dataclass
class Bucket:
    static: Static  # padded width
    runs: list[Run]
    chunk_size: int = 0

    @property
    def id(self) -> str:
        return stable_hash(list(self.static), nbytes=4)

    @property
    def widths(self) -> list[int]:
        return sorted({r.config.width for r in self.runs})

    @property
    def efficiency(self) -> float:
        """Share of the bucket's neuron-compute that belongs to true (unpadded) neurons."""
        return sum(r.config.width for r in self.runs) / (len(self.runs) * self.static.width)

    @property
    def n_chunks(self) -> int:
        return math.ceil(len(self.runs) / self.chunk_size) if self.chunk_size else 0

    def chunks(self) -> list[list[Run]]:
        c = self.chunk_size
        return [self.runs[i:i + c] for i in range(0, len(self.runs), c)]

    @property
    def flops(self) -> float:
        """FLOPs of the true runs (what a researcher asked for)."""
        return sum(flops(static_spec(r.config)) for r in self.runs)

    @property
    def executed_flops(self) -> float:
        """FLOPs executed, padding of width and of the last chunk included."""
        return self.n_chunks * self.chunk_size * flops(self.static)

    @property
    def run_memory(self) -> int:
        return memory_bytes(self.static)


class PlanError(ValueError):
    pass


def bucketize(runs: list[Run], min_efficiency: float = 0.8) -> list[Bucket]:
    """Group runs by static spec; merge width groups while padding keeps `min_efficiency`.

    Merging pads narrower runs up to the widest of the group (exact: see model.py), trading
    padded compute for fewer compiles. min_efficiency = 1 never pads; 0 pads every width
    of a shape group into one program.
    """
    groups: dict[Static, dict[int, list[Run]]] = {}
    for r in runs:
        key = static_spec(r.config)._replace(width=0)
        groups.setdefault(key, {}).setdefault(r.config.width, []).append(r)
    buckets = []
    for key, by_width in groups.items():
        widths = sorted(by_width, reverse=True)
        while widths:
            top = widths.pop(0)
            members = list(by_width[top])
            while widths:
                cand = members + by_width[widths[0]]
                eff = sum(r.config.width for r in cand) / (len(cand) * top)
                if eff < min_efficiency:
                    break
                members = cand
                widths.pop(0)
            members.sort(key=lambda r: r.run_id)  # deterministic chunking
            buckets.append(Bucket(key._replace(width=top), members))
    return buckets


def choose_chunks(buckets: list[Bucket], memory_budget: int, n_devices: int, max_chunk: int = 4096) -> None:
    """Per bucket, the chunk size: a multiple of the device count that fits `memory_budget`
    per device (two chunks in flight when there are several), split so that chunks are as
    even as possible (least padding)."""
    for b in buckets:
        per_device = memory_budget // b.run_memory
        if per_device < 1:
            raise PlanError(
                f"memory budget {fmt_bytes(memory_budget)} per device is below one run of bucket "
                f"{b.id} ({fmt_bytes(b.run_memory)}, width {b.static.width}, n_train {b.static.n_train}, "
                f"input_dim {b.static.input_dim}); raise --memory-budget")
        if len(b.runs) > per_device * n_devices:
            # Several chunks: the engine dispatches the next chunk while the host fetches and
            # writes the last, so two chunks are in flight and each gets half the budget.
            per_device = max(per_device // 2, 1)
        cap = min(per_device * n_devices, max(max_chunk // n_devices, 1) * n_devices)
        n_chunks = math.ceil(len(b.runs) / cap)
        even = math.ceil(len(b.runs) / n_chunks)
        b.chunk_size = math.ceil(even / n_devices) * n_devices


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
