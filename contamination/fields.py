"""Config field metadata: what one field of the run configuration is (type, default, meaning) and
how the rest of the simulator treats it (compiled or traced, padded, evaluation-only, hashed).

`config.py` declares the fields every experiment shares, each experiment module
(`experiments/`) its own; `Config`, `spec.Static`, the traced, padded and evaluation-only field
lists and the id rules (`ids.py`) are all derived from these declarations.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class ConfigError(ValueError):
    """A user-caused configuration error; its message is one line naming the field."""


class Field(NamedTuple):
    name: str
    type: str  # "int", "float", "bool", "str", "tuple[float, float]" (a range) or "tuple[int, ...]"
    default: Any
    doc: str
    # `static`: part of `spec.Static`, one compiled program per value; `traced`: a traced value (a
    # change never recompiles); `layers`: compiled through `Static.hidden` (depth, widths)
    compiled: str = "static"
    # a static size a program may pad (exactly: masks, the run's own size traced as `true_*`):
    # `always`, or `synthetic` (a data size: padded on the synthetic feature model only, a real
    # data set's split is its own); "" never
    pad: str = ""
    # only changes what a trained network is measured on, never its training: runs that differ
    # only in such fields train one network, evaluated once per variant (`Static.n_evals`)
    eval_only: bool = False
    # how ids hash it (`ids.py`): `set`, only away from its default (every field added since ids
    # were first written, so adding a field at a default that keeps today's runs changes no id);
    # `always`, whatever its value, in run ids and network ids (the fields ids had when first
    # written); `network`, whatever its value in network ids only (those network ids had when first
    # compared across versions). The `always` and `network` sets are frozen: never add a name.
    hashed: str = "set"
    choices: tuple[str, ...] = ()  # the allowed values of a `str` field
    # a traced field's entry in the traced values (`spec.Traced`): its value as `float` (the
    # default for a float field) or `int32` (for an int field), or `computed`: read only through a
    # computed entry (`spec.COMPUTED`: the seed's key words, a centred range, ...)
    entry: str = ""

    def check(self) -> "Field":
        assert self.compiled in ("static", "traced", "layers"), self
        assert self.pad in ("", "always", "synthetic") and self.hashed in ("set", "always", "network"), self
        assert (self.type == "str") == bool(self.choices), self
        assert self.entry in ("", "float", "int32", "computed") and (self.compiled == "traced" or not self.entry), self
        return self
