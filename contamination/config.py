"""The run configuration's schema: the fields every experiment shares (with their metadata,
`fields.Field`), the frozen `Config` built from them and the experiments' own fields, field
types, validation, `--set` parsing.

The other jobs live next to it: `presets.py` (named presets), `spec.py` (the compile spec: the
static/traced split, padding), `ids.py` (run and config ids, PRNG keys, the results version).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from typing import Any

import numpy as np

from . import experiments
from .fields import ConfigError, Field

F = Field
RANGE, INTS = "tuple[float, float]", "tuple[int, ...]"

# The fields every experiment shares, in `Config`'s order; each experiment's own fields
# (`experiments/`) follow `experiment`. Defaults are the reference script's (`toy.py`).
BASE_FIELDS = (
    F("width", "int", 256, "the first hidden layer's width", pad="always", hashed="always"),
    F("depth", "int", 1, "hidden layers: `depth` layers of `width` units, or `widths` = [m1, m2, ...] (which, "
      "when given, sets `width` = m1 and `depth` = its length; equal widths are stored as width/depth)",
      compiled="layers", hashed="network"),
    F("widths", INTS, (), "the width of each hidden layer (empty: `depth` layers of `width`)", compiled="layers",
      hashed="network"),
    F("core_dim", "int", 32, "core features", pad="synthetic", hashed="always"),
    F("bg_dim", "int", 32, "background features", pad="synthetic", hashed="always"),
    F("input_dim", "int", 256, "the input dimension d", pad="synthetic", hashed="always"),
    F("core", "str", "nonlinear", "the core's code: `linear` (z_j = y U[0,1]) or `nonlinear` (norm-coded)",
      hashed="always", choices=("linear", "nonlinear")),
    F("n_classes", "int", 2, "K classes: 2 is the binary model (labels +-1, one output); K > 2 gives each class "
      "its own core features (feature j belongs to class j mod K) and the network K logits", hashed="network"),
    F("dataset", "str", "synthetic", "`synthetic` (the feature model) or `digits` (scikit-learn's 8x8 digits framed "
      "by a label-independent border of `border` pixels whose intensity is U[bg_train], OOD U[bg_ood]; "
      "contamination/digits.py). With `digits`, core_dim = 64 digit pixels, bg_dim = border pixels, input_dim "
      "their sum", hashed="network", choices=("synthetic", "digits")),
    F("border", "int", 2, "the digits' border in pixels", hashed="network"),
    F("digit_classes", INTS, (), "the digit classes (empty: all ten; two: a binary pair)", hashed="network"),
    F("model", "str", "mlp", "`mlp` (the fully connected network) or `cnn` (image data only: `width` 3x3 filters, "
      "2x2 average pooling, a linear read-out; contamination/cnn.py)", hashed="network", choices=("mlp", "cnn")),
    F("bg_train", RANGE, (0.0, 1.0), "the training background's range", compiled="traced", hashed="always",
      entry="computed"),
    F("bg_ood", RANGE, (-1.0, 0.0), "the OOD background's range", compiled="traced", eval_only=True,
      hashed="always", entry="computed"),
    F("n_train", "int", 1000, "training samples", pad="synthetic", hashed="always"),
    F("n_test", "int", 1000, "test samples (ID, and each OOD set)", pad="synthetic", hashed="always"),
    F("batch_size", "int", 0, "0: full batch", hashed="always"),
    F("online", "bool", False, "a fresh batch of `batch_size` every step", hashed="always"),
    F("activation", "str", "relu", "the hidden layers' activation", hashed="always",
      choices=("relu", "gelu", "leaky_relu", "sigmoid", "tanh", "linear")),
    F("leaky_slope", "float", 0.1, "LeakyReLU's negative-side slope", compiled="traced", hashed="always",
      entry="computed"),
    F("bias", "bool", True, "biases in every layer", hashed="always"),
    F("output", "str", "train", "the output layer: trained, or frozen (half +1 half -1, or random)",
      hashed="always", choices=("train", "frozen_half", "frozen_random")),
    F("init", "str", "torch", "PyTorch's default init or the theory's", hashed="always", choices=("torch", "theory")),
    F("init_scale", "float", 1.0, "a factor on the initial first-layer weights", compiled="traced", hashed="always"),
    F("loss", "str", "logistic", "the training loss", hashed="always", choices=("logistic", "hinge", "mse")),
    F("optimizer", "str", "adamw", "PyTorch's SGD, Adam or AdamW", hashed="always",
      choices=("sgd", "adam", "adamw")),
    F("lr", "float", 1e-3, "the learning rate", compiled="traced", hashed="always"),
    F("weight_decay", "float", 1e-3, "weight decay (coupled for SGD and Adam, decoupled for AdamW)",
      compiled="traced", hashed="always"),
    F("momentum", "float", 0.9, "SGD's momentum", compiled="traced", hashed="always"),
    F("warmup_steps", "int", 0, "a linear learning-rate warm-up: step t (from 0) trains at lr * min(1, (t + 1) / "
      "warmup_steps); 0: none. The distillation teacher trains without it", compiled="traced", entry="float"),
    F("steps", "int", 20000, "optimizer steps", hashed="always"),
    F("log_every", "int", 1000, "steps between logged points", hashed="always"),
    F("log_schedule", "str", "linear", "`linear`: log at 0, log_every, 2 log_every, ..., steps. `geometric`: as "
      "many points as `linear` would log, spaced geometrically from step 1 (early dynamics resolved)",
      hashed="network", choices=("linear", "geometric")),
    F("seed", "int", 0, "the run's seed (its PRNG keys: `ids.key_words`)", compiled="traced", hashed="always",
      entry="computed"),
    F("experiment", "str", experiments.DEFAULT, "which experiment (`experiments/`): `classify` trains the network "
      "on labels; the others' own fields follow this one", hashed="network", choices=experiments.names()),
    F("precision", "str", "highest", "the precision of float32 matrix products (contamination/numerics.py): "
      "`highest` (full float32, what a CPU computes), `tf32` (JAX's default on NVIDIA GPUs) or `bf16`. A "
      "results directory holds one precision (sweeps/results.py)", choices=("highest", "tf32", "bf16")),
    F("critical_level", "float", 0.5, "the critical shift (metrics.shift_metrics): the smallest translation s of "
      "the test set's background, from its training range towards the OOD range, at which test accuracy falls "
      "below id_acc - critical_level * (id_acc - 1/K); searched on a geometric ladder of SHIFT_POINTS shifts from "
      "shift_min to shift_max, then refined by bisection", compiled="traced", eval_only=True),
    F("shift_min", "float", 0.125, "the critical shift's smallest shift", compiled="traced", eval_only=True,
      entry="computed"),
    F("shift_max", "float", 64.0, "the critical shift's largest shift", compiled="traced", eval_only=True,
      entry="computed"),
    # Interventions: docs/interventions.md
    F("center_inputs", "bool", False, "subtract the training background's population mean, mean(bg_train) * "
      "sum_bg m_j, from every input (training, ID test, OOD and shifted sets alike)", compiled="traced",
      entry="computed"),
    F("bg_ood_direction", "str", "mean", "`mean` (the OOD background range translates every coefficient: the "
      "shift lies along the background mean) or `orthogonal` (the same L2 shift over the coefficients in a "
      "zero-sum pattern, +s on even and -s on odd background features: the background mean is unchanged)",
      compiled="traced", eval_only=True, choices=("mean", "orthogonal"), entry="computed"),
    F("bg_spurious", "float", 0.0, "the first background coefficient's class-conditional mean moves by y * "
      "bg_spurious (two classes, y = +-1), flipped on every OOD set: a spurious correlation", compiled="traced"),
    # Not evaluation-only: a refit is compiled only into programs that ask for it (a static field),
    # and a run that asks for it trains a network of its own, the same one as without it.
    F("retrain_output", "str", "none", "after training, refit the last layer (ridge least squares on the frozen "
      "last hidden layer, relative ridge `probe_ridge`) on fresh OOD data (`ood`) or a half ID half OOD mix "
      "(`mix`) and report its accuracy (`none`: not refitted)", choices=("none", "ood", "mix")),
    F("stop", "str", "steps", "when a run stops (checked at its logged steps; "
      "docs/interventions.md#stopping-at-matched-fit): `steps` trains all `steps` steps; `id_loss` stops at the "
      "first logged step whose ID fit metric is <= `target_id_loss`; `converged` at the first logged step where "
      "every tracked metric moved by at most `stop_tol` of its size over the last `stop_window` logged points. "
      "`steps` caps both; a stopped run's later logged points repeat its values at the stop",
      choices=("steps", "id_loss", "converged")),
    F("target_id_loss", "float", 0.1, "the ID fit at which `stop = id_loss` stops", compiled="traced"),
    F("stop_tol", "float", 0.01, "the relative change under which `stop = converged` stops", compiled="traced"),
    F("stop_window", "int", 5, "logged points back for `stop = converged`, and the window of `drift_trend`",
      compiled="traced"),
)


def all_fields() -> tuple[Field, ...]:
    """Every field in `Config`'s order: the shared ones, each experiment's own after `experiment`."""
    split = [f.name for f in BASE_FIELDS].index("experiment") + 1
    own = tuple(f for exp in experiments.REGISTRY.values() for f in exp.fields)
    fields = BASE_FIELDS[:split] + own + BASE_FIELDS[split:]
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"config fields declared twice: {sorted({n for n in names if names.count(n) > 1})}")
    return tuple(f.check() for f in fields)


SCHEMA: dict[str, Field] = {f.name: f for f in all_fields()}
CHOICES: dict[str, tuple[str, ...]] = {n: f.choices for n, f in SCHEMA.items() if f.choices}


class _ConfigMethods:
    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        # Shallow: every value is immutable (a tuple is listed below), so no deep copy is needed.
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        """The width of every hidden layer, first to last."""
        return self.widths or (self.width,) * self.depth

    @property
    def n_logs(self) -> int:
        """Number of logged points: step 0, every `log_every` steps, and the last step."""
        return len(log_steps(self.steps, self.log_every, self.log_schedule))


# One training run: a frozen dataclass of every field (`SCHEMA`), each at its default.
Config = dataclasses.make_dataclass(
    "Config", [(f.name, f.type, dataclasses.field(default=f.default, metadata={"field": f}))
               for f in SCHEMA.values()],
    bases=(_ConfigMethods,), frozen=True, namespace={"__module__": __name__})
Config.__doc__ = "One training run. Defaults are the reference script's (`toy.py`) defaults; `SCHEMA` documents each field."

FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
INT_FIELDS = {n for n, f in FIELDS.items() if f.type == "int"}
FLOAT_FIELDS = {n for n, f in FIELDS.items() if f.type == "float"}
BOOL_FIELDS = {n for n, f in FIELDS.items() if f.type == "bool"}
RANGE_FIELDS = {n for n, f in FIELDS.items() if f.type == RANGE}
LIST_FIELDS = {"widths"}
TUPLE_FIELDS = tuple(n for n, f in FIELDS.items() if f.type in (RANGE, INTS))
# Fields that only change what a trained network is measured on, never its training: runs that
# differ only in them train one network and are evaluated once each (`n_evals` variants).
EVAL_ONLY_FIELDS = tuple(n for n, f in SCHEMA.items() if f.eval_only)


def suggest(name, options) -> str:
    """' (did you mean ...?)' for the option closest to a mistyped name, or ''; every error
    message about an unknown name (fields, grid keys, presets, analysis columns) uses it."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
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
    if name == "digit_classes":
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = [value]
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 9 for v in value)
        if not ok or len(set(value)) != len(value) or len(value) == 1:
            raise ConfigError(f"{name}: expected two or more distinct digits 0-9 (empty: all ten), got {value!r}")
        return tuple(int(v) for v in value)
    if name in LIST_FIELDS:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = [value]
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
        if not ok:
            raise ConfigError(f"{name}: expected a list of positive integers (one width per hidden layer), "
                              f"got {value!r}")
        return tuple(int(v) for v in value)
    if name in CHOICES:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected one of {', '.join(CHOICES[name])}, got {value!r}")
        v = value.lower()
        if v not in CHOICES[name]:
            raise ConfigError(
                f"{name}: unknown value {value!r}; allowed: {', '.join(CHOICES[name])}{suggest(v, CHOICES[name])}")
        return v
    raise AssertionError(name)


def check_field(name: str) -> None:
    if name not in FIELDS:
        raise ConfigError(f"unknown field '{name}'{suggest(name, FIELDS)}; allowed: {', '.join(FIELDS)}")


def validate(cfg: Config) -> Config:
    """Cross-field checks; raises ConfigError with a one-line message."""
    if cfg.dataset == "digits":
        check_digits(cfg)
    elif cfg.digit_classes:
        raise ConfigError("digit_classes: only for dataset = \"digits\"")
    for name in ("width", "depth", "core_dim", "bg_dim", "input_dim", "n_train", "n_test", "steps", "log_every"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}: must be a positive integer, got {getattr(cfg, name)}")
    if cfg.batch_size < 0:
        raise ConfigError(f"batch_size: must be >= 0 (0 = full batch), got {cfg.batch_size}")
    if cfg.core_dim + cfg.bg_dim > cfg.input_dim:
        raise ConfigError(
            f"input_dim: core_dim + bg_dim = {cfg.core_dim + cfg.bg_dim} exceeds input_dim = {cfg.input_dim}; "
            "need core_dim + bg_dim <= input_dim")
    if cfg.n_classes < 2:
        raise ConfigError(f"n_classes: must be >= 2, got {cfg.n_classes}")
    if cfg.n_classes > 2 and cfg.core_dim < cfg.n_classes:
        raise ConfigError(f"core_dim: {cfg.core_dim} < n_classes = {cfg.n_classes}; each class needs a core "
                          "feature of its own")
    if cfg.n_train < cfg.n_classes or cfg.n_test < cfg.n_classes:
        raise ConfigError(f"n_train, n_test: need at least {cfg.n_classes} points (one per class)")
    if cfg.model == "cnn":
        check_cnn(cfg)
    if cfg.online and cfg.batch_size == 0:
        raise ConfigError("batch_size: online = true needs batch_size > 0 (a fresh batch each step)")
    if cfg.online and cfg.batch_size < cfg.n_classes:
        raise ConfigError(f"batch_size: online batches need at least one point per class ({cfg.n_classes})")
    if not cfg.online and cfg.batch_size > cfg.n_train:
        raise ConfigError(f"batch_size: {cfg.batch_size} exceeds n_train = {cfg.n_train}")
    if not 0 <= cfg.warmup_steps <= max(cfg.steps, 1):
        raise ConfigError(f"warmup_steps: must be between 0 and steps ({cfg.steps}), got {cfg.warmup_steps}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr: must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay: must be >= 0, got {cfg.weight_decay}")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum: must be in [0, 1), got {cfg.momentum}")
    if cfg.init_scale <= 0:
        raise ConfigError(f"init_scale: must be > 0, got {cfg.init_scale}")
    if not 0 < cfg.critical_level < 1:
        raise ConfigError(f"critical_level: must be in (0, 1) (the share of the way from ID accuracy to chance), "
                          f"got {cfg.critical_level}")
    if not 0 < cfg.shift_min < cfg.shift_max:
        raise ConfigError(f"shift_min, shift_max: need 0 < shift_min < shift_max, got {cfg.shift_min} and {cfg.shift_max}")
    check_interventions(cfg)
    check_stop(cfg)
    for exp in experiments.REGISTRY.values():  # each experiment's own fields, wherever they are set
        exp.check_fields(cfg)
    experiments.get(cfg.experiment).validate(cfg)  # and its rules on its runs
    if cfg.seed < 0 or cfg.seed >= 2**63:
        raise ConfigError(f"seed: must be in [0, 2^63), got {cfg.seed}")
    return cfg


def check_interventions(cfg: Config) -> None:
    """The interventions (docs/interventions.md) that are defined on the synthetic feature model's classifier only."""
    synthetic_mlp = cfg.dataset == "synthetic" and cfg.model == "mlp" and cfg.experiment == "classify"
    if cfg.bg_ood_direction == "orthogonal":
        if not synthetic_mlp:
            raise ConfigError("bg_ood_direction: orthogonal needs dataset = \"synthetic\", model = \"mlp\" and "
                              "experiment = \"classify\" (a digit border is one intensity: it has no direction "
                              "orthogonal to its mean)")
        if cfg.bg_dim < 2:
            raise ConfigError(f"bg_dim: orthogonal OOD shifts need at least 2 background features, got {cfg.bg_dim}")
    if cfg.bg_spurious != 0:
        if not synthetic_mlp or cfg.n_classes != 2:
            raise ConfigError("bg_spurious: a spurious background coefficient needs the synthetic binary classifier "
                              "(dataset = \"synthetic\", model = \"mlp\", experiment = \"classify\", n_classes = 2)")
    if cfg.retrain_output != "none" and not synthetic_mlp:
        raise ConfigError("retrain_output: last-layer retraining needs dataset = \"synthetic\", model = \"mlp\" "
                          "and experiment = \"classify\" (it draws fresh OOD data from the feature model)")


def check_stop(cfg: Config) -> None:
    if cfg.target_id_loss <= 0:
        raise ConfigError(f"target_id_loss: must be > 0 (the ID loss at which a run stops), got {cfg.target_id_loss}")
    if cfg.stop_tol <= 0:
        raise ConfigError(f"stop_tol: must be > 0 (a relative change), got {cfg.stop_tol}")
    if cfg.stop_window < 1:
        raise ConfigError(f"stop_window: must be at least 1 logged point, got {cfg.stop_window}")
    if cfg.stop == "converged" and cfg.stop_window >= cfg.n_logs:
        raise ConfigError(f"stop_window: {cfg.stop_window} logged points back from the last would reach before step 0 "
                          f"(the run logs {cfg.n_logs} points); stop = \"converged\" could never stop")


def check_cnn(cfg: Config) -> None:
    if cfg.dataset == "synthetic":
        raise ConfigError("model: cnn needs image data (dataset = \"digits\"); the synthetic inputs have no pixels")
    if cfg.experiment != "classify":
        raise ConfigError("model: cnn is trained on labels only (experiment = \"classify\")")
    for name, allowed in (("depth", 1), ("output", "train"), ("init", "torch")):
        if getattr(cfg, name) != allowed:
            raise ConfigError(f"{name}: the cnn has one convolutional layer, a trained read-out and PyTorch's "
                              f"init; {name} must be {allowed!r}, got {getattr(cfg, name)!r}")


def check_digits(cfg: Config) -> None:
    from .digits import DataError, available

    if cfg.border < 1:
        raise ConfigError(f"border: must be at least 1 pixel with dataset = \"digits\", got {cfg.border}")
    k = len(cfg.digit_classes) or 10
    if cfg.n_classes != k:
        raise ConfigError(f"n_classes: {cfg.n_classes} does not match the {k} digit classes "
                          f"({'all ten' if not cfg.digit_classes else list(cfg.digit_classes)})")
    if cfg.online:
        raise ConfigError("online: the digits are a finite data set; use full batches or minibatches")
    try:
        n = available(cfg.digit_classes)
    except DataError as e:
        raise ConfigError(f"dataset: {e}") from None
    if cfg.n_train + cfg.n_test > n:
        raise ConfigError(f"n_train, n_test: {cfg.n_train} + {cfg.n_test} exceeds the {n} digits of these classes")


def from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    """Build a validated Config from field values over `base` (default: `Config()`)."""
    fields = (base or Config()).to_dict()
    for name, value in values.items():
        check_field(name)
        fields[name] = value
    coerced = {name: _coerce(name, value) for name, value in fields.items()}
    return validate(Config(**canonical_stop(canonical_data(canonical_widths(coerced)))))


def canonical_stop(fields: dict[str, Any]) -> dict[str, Any]:
    """A stopping number the run's `stop` mode does not read is stored at its default (so it
    changes no id): `target_id_loss` outside `id_loss`, `stop_tol` outside `converged`."""
    defaults = {"target_id_loss": ("id_loss", FIELDS["target_id_loss"].default),
                "stop_tol": ("converged", FIELDS["stop_tol"].default)}
    mode = fields.get("stop", "steps")
    return {**fields, **{k: d for k, (m, d) in defaults.items() if mode != m and k in fields}}


def canonical_data(fields: dict[str, Any]) -> dict[str, Any]:
    """With `dataset = "digits"` the sizes are the images': 64 digit pixels (the core), the border's
    pixels (the background), and d their sum."""
    if fields.get("dataset") != "digits":
        return fields
    border = fields.get("border", 2)
    side = 8 + 2 * max(border, 0)
    return {**fields, "core_dim": 64, "bg_dim": side * side - 64, "input_dim": side * side}


def canonical_widths(fields: dict[str, Any]) -> dict[str, Any]:
    """`widths`, when given, sets `width` and `depth`; equal widths are stored as width x depth
    (so `widths = [64]` is `width = 64`, the same run with the same id)."""
    widths = fields.get("widths", ())
    if not widths:
        return fields
    fields = {**fields, "width": widths[0], "depth": len(widths)}
    fields["widths"] = () if len(set(widths)) == 1 else widths
    return fields


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
