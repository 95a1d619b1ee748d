"""A grid's runs as columns: one row per run (its point, seed, run id and training key), over the
grid's points (a config without its seed, its labels and refine round).

A million-run grid is a few thousand points times many seeds: each point is built and validated
once, its ids are hashed once per seed from a text split around the seed (`ids.point_keys`), and
the runs stay four numpy columns; `Run` objects are built only for the runs asked for (a chunk
being trained, `Grid.runs()` of a small grid). `metric_names` lists the metric columns the runs'
results hold.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from contamination.config import Config
from contamination.ids import config_id, hex_ids, point_keys, run_id
from contamination.spec import static_spec
from contamination.train import metric_names as _metric_names


@dataclasses.dataclass(frozen=True)
class Run:
    config: Config
    labels: dict[str, str]  # label column -> value, for table-valued axes
    run_id: str
    config_id: str
    round: int = 0  # the grid's own points: 0; a point `sweeps refine` added in round k: k

    @classmethod
    def of(cls, config: Config, labels: dict[str, str], round: int = 0) -> "Run":
        return cls(config, labels, run_id(config), config_id(config), round)


@dataclasses.dataclass(frozen=True)
class Point:
    """A config without its seed (the config holds any seed; each run has its own)."""

    config: Config
    labels: dict[str, str]
    round: int
    config_id: str


class RunTable:
    """Runs as columns over points: `point` (index into `points`), `seed`, `run_key` (the run id)
    and `net_key` (the training key), both as uint64 digests (`ids.hex_ids` gives the hex ids)."""

    def __init__(self, points: list[Point], point: np.ndarray, seed: np.ndarray, run_key: np.ndarray,
                 net_key: np.ndarray):
        self.points, self.point, self.seed, self.run_key, self.net_key = points, point, seed, run_key, net_key

    @classmethod
    def build(cls, points: Iterable[tuple[Config, dict[str, str], int, Sequence[int]]]) -> "RunTable":
        """The runs of `(config, labels, round, seeds)` points, in order; a run whose id an earlier
        one has is dropped (the first is kept)."""
        pts, cols = [], ([], [], [], [])
        for k, (cfg, labels, round_, seeds) in enumerate(points):
            seeds = [int(s) for s in seeds]
            cid, runs, nets = point_keys(cfg, seeds)
            pts.append(Point(cfg, labels, round_, cid))
            for col, v in zip(cols, (np.full(len(seeds), k, np.int32), np.array(seeds, np.int64), runs, nets)):
                col.append(v)
        point, seed, run, net = (np.concatenate(c) if c else np.zeros(0, t)
                                 for c, t in zip(cols, (np.int32, np.int64, np.uint64, np.uint64)))
        _, first = np.unique(run, return_index=True)
        if len(first) < len(run):
            keep = np.sort(first)
            point, seed, run, net = point[keep], seed[keep], run[keep], net[keep]
        return cls(pts, point, seed, run, net)

    def __len__(self) -> int:
        return len(self.run_key)

    def run_ids(self, rows=None) -> list[str]:
        return hex_ids(self.run_key if rows is None else self.run_key[rows])

    def network_ids(self, rows=None) -> list[str]:
        return hex_ids(self.net_key if rows is None else self.net_key[rows])

    def run(self, i: int) -> Run:
        return self._run(i, hex_ids(self.run_key[i:i + 1])[0])

    def _run(self, i: int, rid: str) -> Run:
        p = self.points[self.point[i]]
        seed = int(self.seed[i])
        cfg = p.config if p.config.seed == seed else dataclasses.replace(p.config, seed=seed)
        return Run(cfg, p.labels, rid, p.config_id, p.round)

    def runs(self, rows=None) -> list[Run]:
        """The `Run`s of `rows` (default: all), in that order."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        return [self._run(i, rid) for i, rid in zip(rows.tolist(), self.run_ids(rows))]

    def live_points(self) -> list[int]:
        """Indices of the points that hold runs, in order of their first run."""
        _, first = np.unique(self.point, return_index=True)
        return self.point[np.sort(first)].tolist()


def metric_names(runs: list[Run] | RunTable) -> list[str]:
    """Metric columns of these runs (the union over their experiments, in first-seen order)."""
    if isinstance(runs, RunTable):
        configs = [runs.points[k].config for k in runs.live_points()]
    else:
        configs = [r.config for r in runs]
    names: list[str] = []
    for spec in dict.fromkeys(static_spec(c) for c in configs):
        names += [m for m in _metric_names(spec) if m not in names]
    return names
