"""The compile spec: how a config splits into `Static` (shapes and categorical choices, one
compile per distinct value) and traced values (numbers, true sizes and PRNG key words, traced, so
changing them never recompiles), and how specs pad into one program."""

from __future__ import annotations

import collections

import numpy as np

from .config import SCHEMA, Config
from .ids import DATA_KEY_FIELDS, INIT_KEY_FIELDS, key_words, training_key
from .numerics import np_float

# Static fields that are not config fields: evaluation variants per trained network
# (EVAL_ONLY_FIELDS; padded), and the widths of hidden layers 2..L (`width` is the first's;
# from `widths`/`depth`; padded).
DERIVED_FIELDS = {"n_evals": 1, "hidden": ()}
STATIC_FIELDS = tuple(n for n, f in SCHEMA.items() if f.compiled == "static")
TRACED_FIELDS = tuple(n for n, f in SCHEMA.items() if f.compiled == "traced")


class Static(collections.namedtuple("StaticFields", STATIC_FIELDS + tuple(DERIVED_FIELDS),
                                    defaults=[SCHEMA[n].default for n in STATIC_FIELDS] + list(DERIVED_FIELDS.values()))):
    """Everything that fixes the compiled program: shapes and categorical choices (the config
    fields declared `static`, `fields.Field.compiled`, and DERIVED_FIELDS). `activation` is the
    compiled one (`compiled_activation`) and `stop` the compiled loop (`compiled_stop`)."""

    __slots__ = ()

    @property
    def depth(self) -> int:
        return 1 + len(self.hidden)

    @property
    def width_last(self) -> int:
        """The (padded) width of the last hidden layer, which the output layer reads."""
        return self.hidden[-1] if self.hidden else self.width

    @property
    def full_batch(self) -> bool:
        """Every step on the whole fixed training set (no fresh batches, no minibatches)."""
        return not self.online and not self.batch_size

    @property
    def minibatches(self) -> bool:
        """Steps on minibatches of the fixed training set (epoch-wise shuffles)."""
        return self.batch_size > 0 and not self.online


# Shape fields a program may pad (exactly: masks, true sizes traced; model.py, data.py): those
# declared `pad` (`fields.Field.pad`) and DERIVED_FIELDS. A run's own sizes travel as traced
# `true_*` values. A distillation teacher's step count pads too: its steps past the run's own
# leave the teacher as it was (`distill.trained_teacher`). n_train is padded only where the
# training set is used whole (full batch) or only for evaluation (online); epoch-wise minibatch
# shuffling permutes the training set, and a permutation of a padded set is not the unpadded one.
PAD_FIELDS = tuple(n for n, f in SCHEMA.items() if f.pad) + tuple(DERIVED_FIELDS)
ALWAYS_PADDED = tuple(n for n in PAD_FIELDS if n in DERIVED_FIELDS or SCHEMA[n].pad == "always")


def pad_fields(spec: "Static") -> tuple[str, ...]:
    """The shape fields of `spec` that may be padded (n_train is static with minibatches)."""
    if spec.dataset != "synthetic":  # a real data set's sizes are its own (the split is static)
        return ALWAYS_PADDED
    return tuple(f for f in PAD_FIELDS if not (f == "n_train" and spec.minibatches))


# ReLU and the linear network are LeakyReLU with slope 0 and 1 (exactly: where(x >= 0, x, s x)),
# so the three share one compiled program with the slope traced: a ReLU-vs-linear sweep, or a
# slope sweep, is one compile.
PIECEWISE_LINEAR_SLOPE = {"relu": 0.0, "linear": 1.0}


def compiled_activation(activation: str) -> str:
    return "leaky_relu" if activation in PIECEWISE_LINEAR_SLOPE else activation


def effective_slope(cfg: Config) -> float:
    """The traced negative-side slope: 0 for ReLU, 1 for linear, `leaky_slope` for LeakyReLU."""
    return PIECEWISE_LINEAR_SLOPE.get(cfg.activation, cfg.leaky_slope)


# The stopping rules share one compiled loop, the rule traced (`loop.StopRule`): -1 for none.
STOP_KINDS = {"steps": -1, "id_loss": 0, "converged": 1}


def compiled_stop(stop: str) -> str:
    return "steps" if stop == "steps" else "rule"


def static_spec(cfg: Config, n_evals: int = 1) -> Static:
    """The compile-time description of `cfg` alone (its own sizes; `padded_spec` pads several)."""
    spec = Static(**{n: getattr(cfg, n) for n in STATIC_FIELDS}, n_evals=n_evals,
                  hidden=cfg.hidden_widths[1:])
    return spec._replace(activation=compiled_activation(cfg.activation), stop=compiled_stop(cfg.stop))


def pad_key(spec: Static) -> Static:
    """What a program must share with `spec` to hold it: `spec` with its paddable sizes zeroed
    (depth included: a shallower network rides in a deeper program, its extra layers skipped)."""
    return spec._replace(**{f: () if f == "hidden" else 0 for f in pad_fields(spec)})


def padded_widths(specs: list[Static]) -> tuple[int, tuple[int, ...]]:
    """The first layer's and the deeper layers' padded widths. Equal depths pad layer by layer;
    mixed depths give every layer the largest width of any, so that a shallower run's last layer
    passes unchanged through the layers it skips (`model.forward`)."""
    depth = max(s.depth for s in specs)
    if all(s.depth == depth for s in specs):
        return max(s.width for s in specs), tuple(max(s.hidden[i] for s in specs) for i in range(depth - 1))
    m = max(max((s.width, *s.hidden)) for s in specs)
    return m, (m,) * (depth - 1)


def padded_spec(specs) -> Static:
    """The smallest spec that holds every one of `specs` (which share their `pad_key`)."""
    specs = list(specs)
    key = pad_key(specs[0])
    assert all(pad_key(s) == key for s in specs), "specs differ in more than their paddable sizes"
    fields = [f for f in pad_fields(specs[0]) if f not in ("width", "hidden")]
    width, hidden = padded_widths(specs)
    return specs[0]._replace(width=width, hidden=hidden, **{f: max(getattr(s, f) for s in specs) for f in fields})


# --- the traced values ---------------------------------------------------------------------------
# One network's traced inputs, `Traced` (a NamedTuple: a pytree that stacks, vmaps and shards as
# one): the true size of every padded field (`true_<field>`), the value of every traced field
# declared with an entry of its own (`fields.Field.entry`; an evaluation-only one per variant),
# the COMPUTED entries, and a deeper program's layer sizes (None in a program of depth 1).

# retrain_output as the share of OOD rows in the refit set (`retrain.py`); negative: not refitted
RETRAIN_OOD_SHARE = {"none": -1.0, "ood": 1.0, "mix": 0.5}


def centre(cfg: Config) -> float:
    """center_inputs: the training background mean c = mean(bg_train) lies in the background's
    span, so x - c sum_bg m_j is the input whose background coefficients are drawn from the ranges
    moved by -c: every consumer (data, metrics, shifts) sees the centred inputs."""
    return 0.5 * (cfg.bg_train[0] + cfg.bg_train[1]) if cfg.center_inputs else 0.0


# The entries that are not one field's value, declared once: name -> f(cfg, evals, float dtype),
# `cfg` the network's first run and `evals` its `n_evals` evaluation variants.
COMPUTED = {
    "data_key": lambda cfg, evals, f: key_words("data", cfg, DATA_KEY_FIELDS),
    "init_key": lambda cfg, evals, f: key_words("init", cfg, INIT_KEY_FIELDS),
    "leaky_slope": lambda cfg, evals, f: f(effective_slope(cfg)),
    "bg_train": lambda cfg, evals, f: np.array(cfg.bg_train, dtype=f) - f(centre(cfg)),
    "bg_ood": lambda cfg, evals, f: np.array([e.bg_ood for e in evals], dtype=f) - f(centre(cfg)),
    "bg_ood_orth": lambda cfg, evals, f: np.array([e.bg_ood_direction == "orthogonal" for e in evals], dtype=f),
    "retrain_ood_share": lambda cfg, evals, f: np.array([RETRAIN_OOD_SHARE[e.retrain_output] for e in evals], dtype=f),
    "shift_range": lambda cfg, evals, f: np.array([[e.shift_min, e.shift_max] for e in evals], dtype=f),
    "stop_kind": lambda cfg, evals, f: np.int32(STOP_KINDS[cfg.stop]),
}
TRUE_SIZES = tuple(n for n, f in SCHEMA.items() if f.pad)  # each traced as `true_<field>`
FIELD_ENTRIES = tuple(n for n, f in SCHEMA.items() if f.compiled == "traced" and f.entry != "computed")
DEEP = ("true_depth", "true_hidden")  # the run's depth and the true widths of layers 2..depth


class Traced(collections.namedtuple("TracedFields", tuple(f"true_{n}" for n in TRUE_SIZES) + FIELD_ENTRIES
                                    + tuple(COMPUTED) + DEEP, defaults=(None,) * len(DEEP))):
    """The traced inputs of one network (or, stacked, of many): arrays named as above."""

    __slots__ = ()


def traced_values(cfgs: Config | list[Config], n_evals: int | None = None, depth: int | None = None) -> Traced:
    """The traced inputs of one trained network: key words, true sizes, numeric hyperparameters.

    `cfgs` are its runs (equal `training_key`); their EVAL_ONLY_FIELDS stack along a leading
    axis of `n_evals` evaluation variants (default: one per run), the last repeated to pad.
    A program of `depth` > 1 hidden layers (default: the run's own) also takes the run's depth
    and the true widths of layers 2..depth (0 past the run's depth).
    """
    cfgs = [cfgs] if isinstance(cfgs, Config) else list(cfgs)
    cfg = cfgs[0]
    n_evals = n_evals or len(cfgs)
    if len({training_key(c) for c in cfgs}) != 1 or len(cfgs) > n_evals:
        raise ValueError("traced_values: the runs of one network must differ only in EVAL_ONLY_FIELDS")
    evals = cfgs + [cfgs[-1]] * (n_evals - len(cfgs))
    f32 = np_float()  # float64 under jax_enable_x64 (numerics.py)
    values = {f"true_{n}": np.int32(getattr(cfg, n)) for n in TRUE_SIZES}
    for n in FIELD_ENTRIES:
        f = SCHEMA[n]
        dtype = np.int32 if (f.entry or ("int32" if f.type == "int" else "float")) == "int32" else f32
        values[n] = np.array([getattr(e, n) for e in evals], dtype=dtype) if f.eval_only else dtype(getattr(cfg, n))
    values.update({n: fn(cfg, evals, f32) for n, fn in COMPUTED.items()})
    return Traced(**values, **deep_sizes(cfg, depth or cfg.depth))


def deep_sizes(cfg: Config, depth: int) -> dict[str, np.ndarray]:
    """The true sizes of a run's deeper layers in a program of `depth` layers (none for depth 1)."""
    if depth < cfg.depth:
        raise ValueError(f"a run of depth {cfg.depth} does not fit a program of depth {depth}")
    if depth == 1:
        return {}
    hidden = list(cfg.hidden_widths[1:]) + [0] * (depth - cfg.depth)
    return {"true_depth": np.int32(cfg.depth), "true_hidden": np.array(hidden, dtype=np.int32)}


def stack_traced(networks: list, n_evals: int | None = None, depth: int | None = None) -> Traced:
    """Stack the traced values of several networks (each a Config or a list of its runs) along a
    leading axis; every network gets `n_evals` variants (default: the most any has) and the
    sizes of a program of `depth` layers (default: the deepest)."""
    nets = [[n] if isinstance(n, Config) else list(n) for n in networks]
    n_evals = n_evals or max(len(n) for n in nets)
    depth = depth or max(n[0].depth for n in nets)
    rows = [traced_values(n, n_evals, depth) for n in nets]
    return Traced(*(None if column[0] is None else np.stack(column) for column in zip(*rows)))
