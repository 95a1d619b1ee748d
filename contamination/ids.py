"""Every hash of a config: run and config ids, the training key, PRNG key words, and the
results version that says when draws changed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from . import experiments
from .config import EVAL_ONLY_FIELDS, SCHEMA, Config
from .experiments import ignored_fields

# The simulator's results version: every change to how data, inits or batches are drawn, or to
# what a metric means, changes numbers, and bumps it. A results directory holds one version.
# 1: the first round; 2: per-row draws and exact padding of every shape axis; 3: act_asym through
# the activation's derivative, the mean-direction and gradient-balance metrics, and data keys
# that no longer depend on the batch mode; 4: contaminated_frac two-sided on the init weight norm,
# bg_norm and bg_shift_rms net of init, act_asym on the gate's range, digits' border metrics along
# the border's mean direction, contamination_sign and contamination_ratio.
RESULTS_VERSION = 4


# Fields that determine each random stream. Numeric fields (ranges, lr, init_scale, ...)
# are excluded on purpose: they transform the same base draws, so runs that differ only
# in them share data and init (common random numbers) and the key never depends on a
# run's position in a batch. Width is excluded because init draws are per neuron.
# The batch mode is excluded too (since results version 3): a fixed-set run and a fresh-batch
# run of one seed share their dictionary, training set and test sets, so the two differ in how
# the student or classifier sees data and in nothing else (the distillation controls).
DATA_KEY_FIELDS = ("seed", "core_dim", "bg_dim", "input_dim", "core", "n_train", "n_test")
INIT_KEY_FIELDS = ("seed", "input_dim", "init", "bias", "output")


def stable_hash(obj: Any, nbytes: int = 8) -> str:
    """A hex digest of a JSON-able object that is identical across processes and runs."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[: 2 * nbytes]


def key_words(purpose: str, cfg: Config, fields: tuple[str, ...]) -> np.ndarray:
    d = cfg.to_dict()
    digest = stable_hash([purpose, {f: d[f] for f in fields}])
    return np.array([int(digest[:8], 16), int(digest[8:16], 16)], dtype=np.uint32)


def training_key(cfg: Config) -> str:
    """Runs with equal training keys train the same network (they differ in EVAL_ONLY_FIELDS only)."""
    return stable_hash(training_dict(cfg))


# The rule for ids: fields the run's experiment does not read are left out (`experiments/`),
# and so is a field at its default value, so adding a field (at a default that keeps today's
# behaviour) never changes an existing id, and a run that sets it gets an id of its own. The only
# exceptions are frozen (`fields.Field.hashed`): the fields ids hashed whatever their value when
# results were first written (the first round's fields; for a distill run, also the distillation
# fields, which existed from its first run), hashed so that those ids stay what they were.
ALWAYS_IN_IDS = frozenset(n for n, f in SCHEMA.items() if f.hashed == "always")
FIRST_ROUND_FIELDS = tuple(f.name for f in experiments.base_fields(SCHEMA.values()) if f.hashed == "always")
ALWAYS_HASHED = {name: FIRST_ROUND_FIELDS + tuple(f.name for f in exp.fields if f.hashed == "always")
                 for name, exp in experiments.REGISTRY.items()}
DEFAULTS = Config().to_dict()


def id_fields(values: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run's id hashes: of the fields its experiment reads (`experiments/`), the frozen
    ones and every other one not at its default."""
    defaults = DEFAULTS if defaults is None else defaults
    ignored = ignored_fields(values.get("experiment", experiments.DEFAULT))
    return {k: v for k, v in values.items() if k not in ignored and (k in ALWAYS_IN_IDS or v != defaults[k])}


def _id_dict(cfg: Config) -> dict[str, Any]:
    return id_fields(cfg.to_dict())


def config_id(cfg: Config) -> str:
    """Stable id of a config without its seed."""
    d = _id_dict(cfg)
    d.pop("seed")
    return stable_hash(d)


def run_id(cfg: Config) -> str:
    """Stable id of a run: the config and its seed."""
    return stable_hash(_id_dict(cfg))


# --- many seeds at once ---------------------------------------------------------------------------
# A grid point's runs differ only in their seeds: its JSON text is split once around the seed's
# value, the hash of the text before it is computed once, and each seed hashes only the rest. The
# digests are `stable_hash`'s (its first 8 bytes, as big-endian unsigned 64-bit integers: sorting
# them sorts the hex ids).

_SEED_MARK = 7_919_000_000_000_000_001  # stands for the seed in the text: `"seed":MARK` occurs once


class SeedHasher:
    """`stable_hash` of one dict with its `seed` key set to each of many seeds."""

    def __init__(self, obj: dict[str, Any]):
        text = json.dumps({**obj, "seed": _SEED_MARK}, sort_keys=True, separators=(",", ":"))
        # exactly once: a key occurs once, values are not objects, and a string escapes its '"'
        head, tail = text.split(f'"seed":{_SEED_MARK}')
        self._head = hashlib.sha256(f'{head}"seed":'.encode())
        self._tail = tail.encode()

    def digests(self, seeds) -> np.ndarray:
        """uint64 digests of the object with each of `seeds` (Python ints) as its seed."""
        head, tail = self._head, self._tail
        out = bytearray()
        for s in seeds:
            h = head.copy()
            h.update(b"%d%s" % (s, tail))
            out += h.digest()[:8]
        return np.frombuffer(bytes(out), dtype=">u8").astype(np.uint64)


def hex_ids(keys: np.ndarray) -> list[str]:
    """The hex ids (`stable_hash`, 8 bytes) of uint64 digests."""
    return np.asarray(keys, dtype=">u8").tobytes().hex(" ", 8).split(" ") if len(keys) else []


def id_keys(ids: list[str]) -> np.ndarray:
    """uint64 digests of hex ids (each 16 hex digits)."""
    return np.frombuffer(bytes.fromhex("".join(ids)), dtype=">u8").astype(np.uint64)


# The fields a training key (network id) hashes whatever their value (`fields.Field.hashed`
# `always` or `network`): every field Config had when network ids were first compared across
# versions (commit ec221b9). A field added since is hashed only away from its default, as in run
# ids, so adding one never changes a network id.
TRAINING_KEY_FIELDS = tuple(n for n, f in SCHEMA.items() if f.hashed in ("always", "network") and not f.eval_only)


def training_fields(d: dict[str, Any]) -> dict[str, Any]:
    """What a training key hashes of a config's dict: the frozen fields, and every later one (but
    EVAL_ONLY_FIELDS) away from its default."""
    return {k: v for k, v in d.items() if k not in EVAL_ONLY_FIELDS and (k in TRAINING_KEY_FIELDS or v != DEFAULTS[k])}


def training_dict(cfg: Config) -> dict[str, Any]:
    """What a training key hashes (`training_fields`)."""
    return training_fields(cfg.to_dict())


def point_keys(cfg: Config, seeds) -> tuple[str, np.ndarray, np.ndarray]:
    """The config id of `cfg` (its seed aside), and the run ids and training keys (uint64 digests)
    of `cfg` with each of `seeds`: equal to `config_id`, `run_id` and `training_key` of
    `cfg.replace(seed=s)`, without building those configs."""
    d = cfg.to_dict()
    ids = id_fields(d)
    train = training_fields(d)
    seeded = "seed" in ids
    ids.pop("seed", None)
    cid = stable_hash(ids)
    runs = SeedHasher(ids).digests(seeds) if seeded else np.full(len(seeds), id_keys([stable_hash(ids)])[0])
    return cid, runs, SeedHasher(train).digests(seeds)
