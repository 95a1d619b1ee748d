"""The run configuration's schema: the frozen `Config`, field types, validation, `--set` parsing.

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


class ConfigError(ValueError):
    """A user-caused configuration error; its message is one line naming the field."""


CHOICES: dict[str, tuple[str, ...]] = {
    "core": ("linear", "nonlinear"),
    "activation": ("relu", "gelu", "leaky_relu", "sigmoid", "tanh", "linear"),
    "output": ("train", "frozen_half", "frozen_random"),
    "init": ("torch", "theory"),
    "loss": ("logistic", "hinge", "mse"),
    "optimizer": ("sgd", "adam", "adamw"),
    "experiment": experiments.names(),  # the modules of experiments/
    "teacher": ("core", "trained", "linear", "standard"),
    "teacher_bias_unit": ("absolute", "spread"),
    "teacher_data": ("full", "student"),
    "log_schedule": ("linear", "geometric"),
    "dataset": ("synthetic", "digits"),
    "model": ("mlp", "cnn"),
    "precision": ("highest", "tf32", "bf16"),  # numerics.PRECISIONS
    "bg_ood_direction": ("mean", "orthogonal"),
    "retrain_output": ("none", "ood", "mix"),
    "stop": ("steps", "id_loss", "converged"),  # spec.STOP_KINDS
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. Defaults are the reference script's (`toy.py`) defaults."""

    width: int = 256
    # Hidden layers: `depth` layers of `width` units, or `widths` = [m1, m2, ...] (which, when
    # given, sets `width` = m1 and `depth` = its length; equal widths are stored as width/depth).
    depth: int = 1
    widths: tuple[int, ...] = ()
    core_dim: int = 32
    bg_dim: int = 32
    input_dim: int = 256
    core: str = "nonlinear"
    # K classes: 2 is the binary model (labels +-1, one output); K > 2 gives each class its own
    # core features (feature j belongs to class j mod K) and the network K logits.
    n_classes: int = 2
    # The dataset: `synthetic` (the feature model above) or `digits` (scikit-learn's 8x8 digits framed
    # by a label-independent border of `border` pixels whose intensity is U[bg_train], OOD U[bg_ood];
    # contamination/digits.py). `digit_classes` picks classes (empty: all ten; two: a binary pair).
    # With `digits`, core_dim = 64 digit pixels, bg_dim = border pixels, input_dim = their sum.
    dataset: str = "synthetic"
    border: int = 2
    digit_classes: tuple[int, ...] = ()
    # The network: `mlp` (the fully connected network above) or `cnn` (image data only: `width`
    # 3x3 filters, 2x2 average pooling, a linear read-out; contamination/cnn.py).
    model: str = "mlp"
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
    # A linear learning-rate warm-up: step t (from 0) trains at lr * min(1, (t + 1) / warmup_steps);
    # 0: none. Traced (changing it never recompiles); the distillation teacher trains without it.
    warmup_steps: int = 0
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
    # The unit of `teacher_bias`: `absolute` (the biases are teacher_bias * N(0, 1), whatever the
    # pre-activations' scale: the first rounds' teacher, kept so their ids mean what they meant)
    # or `spread` (teacher_bias * N(0, 1) times each unit's standard deviation of W_T x over the ID
    # training inputs: the same share of a unit's range at every core type and dimension). The
    # `distill` preset uses `spread`.
    teacher_bias_unit: str = "absolute"
    teacher_steps: int = 2000
    teacher_lr: float = 1e-2
    # How a `trained` or `standard` teacher sees its data: `full` (full batch on the fixed training
    # set, whatever the student does: the first rounds') or `student` (the student's batch mode:
    # fresh batches of batch_size with `online`, minibatches of the fixed set with batch_size > 0,
    # else full batch), so an effective-robustness baseline trains as the students it is compared with.
    teacher_data: str = "full"
    probe_ridge: float = 1e-4
    # The precision of float32 matrix products (contamination/numerics.py): `highest` (full
    # float32, what a CPU computes), `tf32` (JAX's default on NVIDIA GPUs) or `bf16`. A results
    # directory holds one precision (sweeps/results.py).
    precision: str = "highest"
    # The critical shift (metrics.shift_metrics): the smallest translation s of the test set's
    # background, from its training range towards the OOD range, at which test accuracy falls
    # below id_acc - critical_level * (id_acc - 1/K); searched on a geometric ladder of
    # SHIFT_POINTS shifts from shift_min to shift_max, then refined by bisection. Evaluation only.
    critical_level: float = 0.5
    shift_min: float = 0.125
    shift_max: float = 64.0
    # Interventions (docs/interventions.md). `center_inputs`: subtract the training
    # background's population mean, mean(bg_train) * sum_bg m_j, from every input (training, ID
    # test, OOD and shifted sets alike). `bg_ood_direction`: `mean` (the OOD background range
    # translates every coefficient: the shift lies along the background mean) or `orthogonal`
    # (the same L2 shift over the coefficients in a zero-sum pattern, +s on even and -s on odd
    # background features: the background mean is unchanged). Evaluation only. `bg_spurious`:
    # the first background coefficient's class-conditional mean moves by y * bg_spurious (two
    # classes, y = +-1), flipped (-y * bg_spurious) on every OOD set: a spurious correlation.
    # `retrain_output`: after training, refit the last layer (ridge least squares on the frozen
    # last hidden layer, relative ridge `probe_ridge`) on fresh OOD data (`ood`) or a half ID
    # half OOD mix (`mix`) and report its accuracy (`none`: not refitted). Evaluation only.
    center_inputs: bool = False
    bg_ood_direction: str = "mean"
    bg_spurious: float = 0.0
    retrain_output: str = "none"
    # When a run stops (checked at its logged steps; docs/interventions.md#stopping-at-matched-fit):
    # `steps` trains all `steps` steps; `id_loss` stops at the first logged step whose ID test loss
    # (a distillation student's ID representation error) is <= `target_id_loss`: runs compared at
    # matched fit; `converged` stops at the first logged step where every tracked metric (the
    # training loss and bg_mean_proj) moved by at most `stop_tol` of its size over the last
    # `stop_window` logged points. `steps` caps both. A stopped run trains no further while the
    # rest of its program goes on; its later logged points repeat its values at the stop.
    # `stop_window` is also the window of the `drift_trend` column, in every mode.
    stop: str = "steps"
    target_id_loss: float = 0.1
    stop_tol: float = 0.01
    stop_window: int = 5

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        # Shallow: every value is immutable (a tuple is listed below), so no deep copy is needed.
        d = {name: getattr(self, name) for name in self.__dataclass_fields__}
        d["bg_train"] = list(self.bg_train)
        d["bg_ood"] = list(self.bg_ood)
        d["widths"] = list(self.widths)
        d["digit_classes"] = list(self.digit_classes)
        return d

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        """The width of every hidden layer, first to last."""
        return self.widths or (self.width,) * self.depth

    @property
    def n_logs(self) -> int:
        """Number of logged points: step 0, every `log_every` steps, and the last step."""
        return len(log_steps(self.steps, self.log_every, self.log_schedule))


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
INT_FIELDS = {n for n, f in FIELDS.items() if f.type == "int"}
FLOAT_FIELDS = {n for n, f in FIELDS.items() if f.type == "float"}
BOOL_FIELDS = {n for n, f in FIELDS.items() if f.type == "bool"}
RANGE_FIELDS = {"bg_train", "bg_ood"}
LIST_FIELDS = {"widths"}

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
    for name in ("width", "depth", "core_dim", "bg_dim", "input_dim", "n_train", "n_test", "steps", "log_every", "rep_dim",
                 "teacher_steps"):
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
    if cfg.experiment == "distill" and (cfg.depth > 1 or cfg.n_classes > 2):
        raise ConfigError("experiment: distill trains a one-hidden-layer student on a binary task; "
                          "depth and n_classes must stay 1 and 2")
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
    if cfg.teacher_bias < 0:
        raise ConfigError(f"teacher_bias: must be >= 0 (scale of the core teacher's biases), got {cfg.teacher_bias}")
    if cfg.teacher_lr <= 0:
        raise ConfigError(f"teacher_lr: must be > 0, got {cfg.teacher_lr}")
    if cfg.probe_ridge <= 0:
        raise ConfigError(f"probe_ridge: must be > 0 (relative ridge of the linear probes), got {cfg.probe_ridge}")
    if not 0 < cfg.critical_level < 1:
        raise ConfigError(f"critical_level: must be in (0, 1) (the share of the way from ID accuracy to chance), "
                          f"got {cfg.critical_level}")
    if not 0 < cfg.shift_min < cfg.shift_max:
        raise ConfigError(f"shift_min, shift_max: need 0 < shift_min < shift_max, got {cfg.shift_min} and {cfg.shift_max}")
    check_interventions(cfg)
    check_stop(cfg)
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


# Fields that only change what a trained network is measured on, never its training: runs that
# differ only in them train one network and are evaluated once each (`n_evals` variants).
# (`retrain_output` is not one: a refit is compiled only into programs that ask for it, so it is a
# static field, and a run that asks for it trains a network of its own, the same one as without it.)
EVAL_ONLY_FIELDS = ("bg_ood", "probe_ridge", "critical_level", "shift_min", "shift_max", "bg_ood_direction")
