"""Run configuration: the frozen `Config`, its presets, validation and `--set` parsing.

A config splits in two for the compiler: `static_spec` (shapes and categorical choices,
one compile per distinct value) and `traced_values` (numbers and PRNG keys, traced, so
changing them never recompiles).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
from typing import Any, NamedTuple

import numpy as np


class ConfigError(ValueError):
    """A user-caused configuration error; its message is one line naming the field."""


CHOICES: dict[str, tuple[str, ...]] = {
    "core": ("linear", "nonlinear"),
    "activation": ("relu", "gelu", "leaky_relu", "sigmoid", "tanh", "linear"),
    "output": ("train", "frozen_half", "frozen_random"),
    "init": ("torch", "theory"),
    "loss": ("logistic", "hinge", "mse"),
    "optimizer": ("sgd", "adam", "adamw"),
    "experiment": ("classify", "distill"),
    "teacher": ("core", "trained", "linear", "standard"),
    "log_schedule": ("linear", "geometric"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. Defaults are the reference script's (`toy.py`) defaults."""

    width: int = 256
    core_dim: int = 32
    bg_dim: int = 32
    input_dim: int = 256
    core: str = "nonlinear"
    bg_train: tuple[float, float] = (0.0, 1.0)
    bg_ood: tuple[float, float] = (-1.0, 0.0)
    n_train: int = 1000
    n_test: int = 1000
    batch_size: int = 0
    online: bool = False
    activation: str = "relu"
    leaky_slope: float = 0.1
    bias: bool = True
    output: str = "train"
    init: str = "torch"
    init_scale: float = 1.0
    loss: str = "logistic"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-3
    momentum: float = 0.9
    steps: int = 20000
    log_every: int = 1000
    # `linear`: log at 0, log_every, 2 log_every, ..., steps. `geometric`: as many points as
    # `linear` would log, spaced geometrically from step 1 (early dynamics resolved).
    log_schedule: str = "linear"
    seed: int = 0
    # Which experiment: `classify` (train the network on labels) or `distill` (train it as a
    # student on a teacher's representation, then probe both; contamination/distill.py).
    # The remaining fields only matter to `distill`.
    experiment: str = "classify"
    rep_dim: int = 64
    teacher: str = "core"
    teacher_bias: float = 3.0
    teacher_steps: int = 2000
    teacher_lr: float = 1e-2
    probe_ridge: float = 1e-4

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["bg_train"] = list(self.bg_train)
        d["bg_ood"] = list(self.bg_ood)
        return d

    @property
    def n_logs(self) -> int:
        """Number of logged points: step 0, every `log_every` steps, and the last step."""
        return len(log_steps(self.steps, self.log_every, self.log_schedule))


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
INT_FIELDS = {n for n, f in FIELDS.items() if f.type == "int"}
FLOAT_FIELDS = {n for n, f in FIELDS.items() if f.type == "float"}
BOOL_FIELDS = {n for n, f in FIELDS.items() if f.type == "bool"}
RANGE_FIELDS = {"bg_train", "bg_ood"}

PRESETS: dict[str, dict[str, Any]] = {
    # The reference script's defaults: non-linear core, logistic loss, AdamW, full batch.
    "toy": {},
    # The reference script's theory-matching variant: hinge, SGD (momentum 0.9), linear
    # core, output layer frozen at +1/m (first half) and -1/m (second half).
    "toy_theory": {"loss": "hinge", "optimizer": "sgd", "core": "linear", "output": "frozen_half"},
    # The paper's own setting (Theorems 1-4): online SGD without momentum, no biases,
    # N(0, 1/d) init, frozen random output signs +-1/m, hinge loss, linear core, weight
    # decay on W (the only trainable tensor). Sizes sit inside the theory's regime:
    # d0 = 16 and d = 1024 = d0^2.5, while width m = 256 >> d0. The per-neuron gradient
    # carries the 1/m of the output layer, so the time scales are T0 ~ m/(eta sqrt d) and
    # T1 ~ m/(eta d0): lr = 0.5 puts them at 16 and 32 steps, so the dynamics unfold over
    # hundreds of steps (bg_mean_proj reaches 90% of its final value after ~700 steps, the
    # ID hinge loss falls under 0.06 by ~1000; 40 logged points). The first round's lr = 8
    # ended them within the first two steps. lambda = 1e-3 is well under d0/m^1.01 ~ 0.06
    # and decays W by exp(-eta lambda t) = 0.37 over the 2000 steps: checks of cancellation
    # (linear network) set weight_decay = 0.
    "theory": {
        "width": 256, "core_dim": 8, "bg_dim": 8, "input_dim": 1024, "core": "linear",
        "n_train": 1000, "n_test": 1000, "batch_size": 64, "online": True,
        "bias": False, "output": "frozen_random", "init": "theory", "loss": "hinge",
        "optimizer": "sgd", "momentum": 0.0, "lr": 0.5, "weight_decay": 1e-3,
        "steps": 2000, "log_every": 50,
    },
    # Representation distillation, simulated (PAPER.md section 5; contamination/distill.py).
    # Teacher (`core`, constructed): phi_T(x) = ReLU(W_T x + b_T), rep_dim = 64 units whose rows
    # lie in the core subspace, so it cannot see the background; biases 3 * N(0, 1) (without
    # them, teacher_bias = 0, the student needs no offsets and is barely contaminated). The
    # `trained` teacher is learned instead: a ReLU network of width rep_dim trained on the
    # labels from the core coordinates only. Student: the config's two-layer network with a
    # linear read-out to R^rep_dim, trained by Adam (lr 1e-3, no weight decay) on the MSE to
    # phi_T over ID inputs, no labels; ridge probes on ID labels read both representations.
    # Reference data (non-linear core, 32 + 32 features in d = 256; n = 1000 points for the
    # probes and the training-set metrics). The student trains on **fresh batches** of 512 ID
    # inputs each step (`online`), the population setting of the theory: on a fixed training
    # set a student also fails OOD by fitting sample noise through background coordinates
    # (over-fitting, not contamination; `--set online=false --set batch_size=0` is that
    # control, `distill_controls` separates the two).
    "distill": {
        "experiment": "distill", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
        "online": True, "batch_size": 512, "steps": 5000, "log_every": 500,
    },
}


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(name: str, value: Any) -> Any:
    """Check one field's type and return it in canonical form."""
    if name in BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if name in INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if name in FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return value
    if name in RANGE_FIELDS:
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not ok:
            raise ConfigError(f"{name}: expected a range [low, high] of two numbers, got {value!r}")
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise ConfigError(f"{name}: range low {lo} > high {hi}; expected [low, high] with low <= high")
        return (lo, hi)
    if name in CHOICES:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected one of {', '.join(CHOICES[name])}, got {value!r}")
        v = value.lower()
        if v not in CHOICES[name]:
            raise ConfigError(
                f"{name}: unknown value {value!r}; allowed: {', '.join(CHOICES[name])}{_suggest(v, CHOICES[name])}")
        return v
    raise AssertionError(name)


def check_field(name: str) -> None:
    if name not in FIELDS:
        raise ConfigError(f"unknown field '{name}'{_suggest(name, FIELDS)}; allowed: {', '.join(FIELDS)}")


def validate(cfg: Config) -> Config:
    """Cross-field checks; raises ConfigError with a one-line message."""
    for name in ("width", "core_dim", "bg_dim", "input_dim", "n_train", "n_test", "steps", "log_every", "rep_dim",
                 "teacher_steps"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}: must be a positive integer, got {getattr(cfg, name)}")
    if cfg.batch_size < 0:
        raise ConfigError(f"batch_size: must be >= 0 (0 = full batch), got {cfg.batch_size}")
    if cfg.core_dim + cfg.bg_dim > cfg.input_dim:
        raise ConfigError(
            f"input_dim: core_dim + bg_dim = {cfg.core_dim + cfg.bg_dim} exceeds input_dim = {cfg.input_dim}; "
            "need core_dim + bg_dim <= input_dim")
    if cfg.n_train < 2 or cfg.n_test < 2:
        raise ConfigError("n_train, n_test: need at least 2 points (one per class)")
    if cfg.online and cfg.batch_size == 0:
        raise ConfigError("batch_size: online = true needs batch_size > 0 (a fresh batch each step)")
    if not cfg.online and cfg.batch_size > cfg.n_train:
        raise ConfigError(f"batch_size: {cfg.batch_size} exceeds n_train = {cfg.n_train}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay: must be >= 0, got {cfg.weight_decay}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum: must be in [0, 1), got {cfg.momentum}")
    if cfg.init_scale <= 0:
        raise ConfigError(f"init_scale: must be > 0, got {cfg.init_scale}")
    if cfg.teacher_bias < 0:
        raise ConfigError(f"teacher_bias: must be >= 0 (scale of the core teacher's biases), got {cfg.teacher_bias}")
    if cfg.teacher_lr <= 0:
        raise ConfigError(f"teacher_lr: must be > 0, got {cfg.teacher_lr}")
    if cfg.probe_ridge <= 0:
        raise ConfigError(f"probe_ridge: must be > 0 (relative ridge of the linear probes), got {cfg.probe_ridge}")
    if cfg.seed < 0 or cfg.seed >= 2**63:
        raise ConfigError(f"seed: must be in [0, 2^63), got {cfg.seed}")
    return cfg


def from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    """Build a validated Config from field values over `base` (default: `Config()`)."""
    fields = (base or Config()).to_dict()
    for name, value in values.items():
        check_field(name)
        fields[name] = value
    coerced = {name: _coerce(name, value) for name, value in fields.items()}
    return validate(Config(**coerced))


def preset(name: str, **overrides: Any) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'{_suggest(name, PRESETS)}; allowed: {', '.join(PRESETS)}")
    return from_dict({**PRESETS[name], **overrides})


def parse_value(text: str) -> Any:
    """Read a `--set` value like a TOML value; a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignment(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected FIELD=VALUE")
    name, value = text.split("=", 1)
    name = name.strip()
    check_field(name)
    return name, parse_value(value.strip())


def log_steps(steps: int, log_every: int, schedule: str = "linear") -> list[int]:
    """The steps at which curves are logged, always 0 first and `steps` last.

    `linear`: 0, log_every, 2 log_every, ..., steps. `geometric`: 0 and round(steps^(i/(K-1)))
    for i = 0..K-1 with K = ceil(steps / log_every), duplicates dropped (at most as many points
    as `linear`, dense at the start where the dynamics are fast).
    """
    if schedule == "geometric":
        k = -(-steps // log_every)
        if k < 2:
            return [0, steps]
        return [0] + sorted({max(1, round(steps ** (i / (k - 1)))) for i in range(k)})
    out = list(range(0, steps + 1, log_every))
    if out[-1] != steps:
        out.append(steps)
    return out


# --- static / traced split ---------------------------------------------------------

class Static(NamedTuple):
    """Everything that fixes the compiled program: shapes and categorical choices."""

    width: int
    core_dim: int
    bg_dim: int
    input_dim: int
    core: str
    n_train: int
    n_test: int
    batch_size: int
    online: bool
    activation: str
    bias: bool
    output: str
    init: str
    loss: str
    optimizer: str
    steps: int
    log_every: int
    experiment: str
    rep_dim: int
    teacher: str
    teacher_steps: int
    log_schedule: str = "linear"
    n_evals: int = 1  # evaluation variants per trained network (EVAL_ONLY_FIELDS), padded


STATIC_FIELDS = tuple(f for f in Static._fields if f != "n_evals")
TRACED_FIELDS = ("lr", "weight_decay", "momentum", "leaky_slope", "init_scale", "bg_train", "bg_ood", "seed",
                 "teacher_bias", "teacher_lr", "probe_ridge")
assert set(STATIC_FIELDS) | set(TRACED_FIELDS) == set(FIELDS)

# Shape fields a program may pad (exactly: masks, true sizes traced; model.py, data.py). A run's
# own sizes travel as traced `true_*` values. n_train is padded only where the training set is
# used whole (full batch) or only for evaluation (online); epoch-wise minibatch shuffling
# permutes the training set, and a permutation of a padded set is not the unpadded one.
PAD_FIELDS = ("width", "core_dim", "bg_dim", "input_dim", "n_train", "n_test", "n_evals")


def pad_fields(spec: "Static") -> tuple[str, ...]:
    """The shape fields of `spec` that may be padded (n_train is static with minibatches)."""
    minibatches = spec.batch_size > 0 and not spec.online
    return tuple(f for f in PAD_FIELDS if not (f == "n_train" and minibatches))


# Fields that only change what a trained network is measured on, never its training: runs that
# differ only in them train one network and are evaluated once each (`n_evals` variants).
EVAL_ONLY_FIELDS = ("bg_ood", "probe_ridge")

# The simulator's results version: every change to how data, inits or batches are drawn, or to
# what a metric means, changes numbers, and bumps it. A results directory holds one version.
# 1: the first round; 2: per-row draws and exact padding of every shape axis; 3: act_asym through
# the activation's derivative, the mean-direction and gradient-balance metrics, and data keys
# that no longer depend on the batch mode.
RESULTS_VERSION = 3


# ReLU and the linear network are LeakyReLU with slope 0 and 1 (exactly: where(x >= 0, x, s x)),
# so the three share one compiled program with the slope traced: a ReLU-vs-linear sweep, or a
# slope sweep, is one compile.
PIECEWISE_LINEAR_SLOPE = {"relu": 0.0, "linear": 1.0}


def compiled_activation(activation: str) -> str:
    return "leaky_relu" if activation in PIECEWISE_LINEAR_SLOPE else activation


def effective_slope(cfg: Config) -> float:
    """The traced negative-side slope: 0 for ReLU, 1 for linear, `leaky_slope` for LeakyReLU."""
    return PIECEWISE_LINEAR_SLOPE.get(cfg.activation, cfg.leaky_slope)


def static_spec(cfg: Config, n_evals: int = 1) -> Static:
    """The compile-time description of `cfg` alone (its own sizes; `padded_spec` pads several)."""
    spec = Static(**{n: getattr(cfg, n) for n in STATIC_FIELDS}, n_evals=n_evals)
    return spec._replace(activation=compiled_activation(cfg.activation))


def pad_key(spec: Static) -> Static:
    """What a program must share with `spec` to hold it: `spec` with its paddable sizes zeroed."""
    return spec._replace(**{f: 0 for f in pad_fields(spec)})


def padded_spec(specs) -> Static:
    """The smallest spec that holds every one of `specs` (which share their `pad_key`)."""
    specs = list(specs)
    key = pad_key(specs[0])
    assert all(pad_key(s) == key for s in specs), "specs differ in more than their paddable sizes"
    return specs[0]._replace(**{f: max(getattr(s, f) for s in specs) for f in pad_fields(specs[0])})


# Fields that determine each random stream. Numeric fields (ranges, lr, init_scale, ...)
# are excluded on purpose: they transform the same base draws, so runs that differ only
# in them share data and init (common random numbers) and the key never depends on a
# run's position in a batch. Width is excluded because init draws are per neuron.
# The batch mode is excluded too (since results version 3): a fixed-set run and a fresh-batch
# run of one seed share their dictionary, training set and test sets, so the two differ in how
# the student or classifier sees data and in nothing else (issue 12's controls).
DATA_KEY_FIELDS = ("seed", "core_dim", "bg_dim", "input_dim", "core", "n_train", "n_test")
INIT_KEY_FIELDS = ("seed", "input_dim", "init", "bias", "output")


def stable_hash(obj: Any, nbytes: int = 8) -> str:
    """A hex digest of a JSON-able object that is identical across processes and runs."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[: 2 * nbytes]


def _key_words(purpose: str, cfg: Config, fields: tuple[str, ...]) -> np.ndarray:
    d = cfg.to_dict()
    digest = stable_hash([purpose, {f: d[f] for f in fields}])
    return np.array([int(digest[:8], 16), int(digest[8:16], 16)], dtype=np.uint32)


def training_key(cfg: Config) -> str:
    """Runs with equal training keys train the same network (they differ in EVAL_ONLY_FIELDS only)."""
    d = cfg.to_dict()
    for f in EVAL_ONLY_FIELDS:
        d.pop(f)
    return stable_hash(d)


def traced_values(cfgs: Config | list[Config], n_evals: int | None = None) -> dict[str, np.ndarray]:
    """The traced inputs of one trained network: key words, true sizes, numeric hyperparameters.

    `cfgs` are its runs (equal `training_key`); their EVAL_ONLY_FIELDS stack along a leading
    axis of `n_evals` evaluation variants (default: one per run), the last repeated to pad.
    """
    cfgs = [cfgs] if isinstance(cfgs, Config) else list(cfgs)
    cfg = cfgs[0]
    n_evals = n_evals or len(cfgs)
    if len({training_key(c) for c in cfgs}) != 1 or len(cfgs) > n_evals:
        raise ValueError("traced_values: the runs of one network must differ only in EVAL_ONLY_FIELDS")
    evals = cfgs + [cfgs[-1]] * (n_evals - len(cfgs))
    f32, i32 = np.float32, np.int32
    return {
        "data_key": _key_words("data", cfg, DATA_KEY_FIELDS),
        "init_key": _key_words("init", cfg, INIT_KEY_FIELDS),
        "true_width": i32(cfg.width),
        "true_core": i32(cfg.core_dim),
        "true_bg": i32(cfg.bg_dim),
        "true_d": i32(cfg.input_dim),
        "true_n_train": i32(cfg.n_train),
        "true_n_test": i32(cfg.n_test),
        "lr": f32(cfg.lr),
        "weight_decay": f32(cfg.weight_decay),
        "momentum": f32(cfg.momentum),
        "leaky_slope": f32(effective_slope(cfg)),
        "init_scale": f32(cfg.init_scale),
        "bg_train": np.array(cfg.bg_train, dtype=f32),
        "bg_ood": np.array([c.bg_ood for c in evals], dtype=f32),
        "teacher_bias": f32(cfg.teacher_bias),
        "teacher_lr": f32(cfg.teacher_lr),
        "probe_ridge": np.array([c.probe_ridge for c in evals], dtype=f32),
    }


def stack_traced(networks: list, n_evals: int | None = None) -> dict[str, np.ndarray]:
    """Stack the traced values of several networks (each a Config or a list of its runs) along a
    leading axis; every network gets `n_evals` variants (default: the most any has)."""
    nets = [[n] if isinstance(n, Config) else list(n) for n in networks]
    n_evals = n_evals or max(len(n) for n in nets)
    rows = [traced_values(n, n_evals) for n in nets]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


# Fields added with the distillation experiment. A `classify` run leaves them out of its ids,
# so its ids are what they were before these fields existed (results directories written
# earlier resume without re-running or duplicating a run), and they cannot matter to it.
DISTILL_FIELDS = ("experiment", "rep_dim", "teacher", "teacher_bias", "teacher_steps", "teacher_lr", "probe_ridge")


# Fields added later, left out of ids at their default value (ids of earlier runs stay as they were).
LATER_FIELDS = {"log_schedule": "linear"}


def _id_dict(cfg: Config) -> dict[str, Any]:
    d = cfg.to_dict()
    if cfg.experiment == "classify":
        for f in DISTILL_FIELDS:
            d.pop(f)
    for f, default in LATER_FIELDS.items():
        if d[f] == default:
            d.pop(f)
    return d


def config_id(cfg: Config) -> str:
    """Stable id of a config without its seed."""
    d = _id_dict(cfg)
    d.pop("seed")
    return stable_hash(d)


def run_id(cfg: Config) -> str:
    """Stable id of a run: the config and its seed."""
    return stable_hash(_id_dict(cfg))
