"""Feature contamination simulator: the structured feature model, two-layer networks and
their training as pure, jit-compilable and vmappable JAX functions."""

from . import lowering  # noqa: F401  (faster CPU compiles; before any program is lowered)
from .config import Config, ConfigError, from_dict
from .presets import preset, PRESETS
from .simulate import simulate

__all__ = ["Config", "ConfigError", "from_dict", "preset", "PRESETS", "simulate"]
