"""Single-run command for quick looks.

    python -m contamination.run --preset toy_theory --set width=64 --set activation=linear

prints one JSON object with the config and the final metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .cache import setup_jax
from .config import ConfigError, parse_assignment
from .numerics import enable_x64, float_name
from .presets import preset
from .simulate import simulate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m contamination.run", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="toy", help="toy, toy_theory or theory (default: toy)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field; VALUE reads like a TOML value, a bare word is a string")
    parser.add_argument("--curves", action="store_true", help="also print the logged curves")
    parser.add_argument("--x64", action="store_true", help="compute in float64 (as JAX_ENABLE_X64=1)")
    args = parser.parse_args(argv)
    try:
        overrides = dict(parse_assignment(a) for a in args.set)
        cfg = preset(args.preset, **overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.x64:
        enable_x64()
    setup_jax()  # a program compiled before (by this command or a sweep) is loaded from the cache

    t0 = time.perf_counter()
    out = simulate(cfg)
    result = {"preset": args.preset, "config": cfg.to_dict(), "dtype": float_name(),
              "final": {k: v.item() for k, v in out["final"].items()},
              "seconds": round(time.perf_counter() - t0, 3)}
    if args.curves:
        result["curves"] = {"step": out["steps"].tolist(), **{k: v.tolist() for k, v in out["curves"].items()}}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
