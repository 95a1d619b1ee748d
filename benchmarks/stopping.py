"""What stopping on matched fit saves: one chunk trained for its fixed steps against the same chunk
with `stop = "id_loss"`, one process.

    python benchmarks/stopping.py [--runs 16] [--steps 2000] [--log-every 50] [--width 64] [--repeats 5]
                                  [--schedule linear|geometric] [--x64]

The chunk is `--runs` seeds of the `toy` preset with the linear core (8 + 8 features in d = 64,
n = 256, AdamW lr 0.003), widths alternating `--width` and half of it (padded into one program).
Three arms, each compiled once, called once warm, then timed in `--repeats` interleaved rounds
(the least kept; the median beside it):

- `steps`: the fixed-length scan (`stop = "steps"`);
- `never`: the stopping loop with a target no run meets (1e-9): the loop's overhead at equal steps;
- `fit`: the stopping loop with the target every run meets by a quarter of its steps (the largest ID
  loss over the chunk at the logged step nearest steps / 4, read from the `steps` arm): the chunk
  ends when its slowest run stops.

Prints compile and run seconds per arm, the ratio to `steps`, the chunk's largest and mean
`stopped_step`, and checks that each `fit` run equals the `steps` run up to its stop (rtol 1e-5
in float32: the programs differ).
"""

from __future__ import annotations

import argparse
import time


def compile_arm(cfgs):
    """Compile the chunk's program: (compiled, inputs, compile seconds, numpy output of a warm call)."""
    import jax
    import numpy as np

    from contamination.spec import padded_spec, stack_traced, static_spec
    from contamination.train import batched

    spec = padded_spec([static_spec(c) for c in cfgs])
    traced = stack_traced(cfgs, depth=spec.depth)
    t0 = time.perf_counter()
    compiled = jax.jit(batched(spec)).lower(traced).compile()
    compile_s = time.perf_counter() - t0
    out = jax.tree_util.tree_map(np.asarray, jax.block_until_ready(compiled(traced)))
    return compiled, traced, compile_s, out


def timed(arms: dict, repeats: int) -> dict:
    """Run seconds of each arm, the arms interleaved in every round (a shared machine's load
    then falls on all of them alike): {arm: [seconds per round]}."""
    import jax

    times = {name: [] for name in arms}
    for _ in range(repeats):
        for name, (compiled, traced, _, _) in arms.items():
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(traced))
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--schedule", default="linear", choices=["linear", "geometric"])
    ap.add_argument("--x64", action="store_true")
    args = ap.parse_args()
    import jax
    import numpy as np

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from contamination.config import log_steps
    from contamination.presets import preset

    base = [preset("toy", core="linear", core_dim=8, bg_dim=8, input_dim=64, n_train=256, n_test=256, lr=0.003,
                   steps=args.steps, log_every=args.log_every, log_schedule=args.schedule, seed=i,
                   width=args.width if i % 2 == 0 else args.width // 2) for i in range(args.runs)]
    points = log_steps(args.steps, args.log_every, args.schedule)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {args.runs} runs x {args.steps} steps "
          f"({len(points)} logged, {args.schedule}), widths {args.width} and {args.width // 2}, "
          f"{'float64' if args.x64 else 'float32'}", flush=True)
    arms = {"steps": compile_arm(base)}
    quarter = int(np.argmin([abs(p - args.steps / 4) for p in points]))
    target = float(np.max(arms["steps"][3]["curves"]["id_loss"][:, quarter, 0]))
    arms["never"] = compile_arm([c.replace(stop="id_loss", target_id_loss=1e-9) for c in base])
    arms["fit"] = compile_arm([c.replace(stop="id_loss", target_id_loss=target) for c in base])
    print(f"fit target: ID loss {target:.4g} (the chunk's largest at step {points[quarter]})")
    times = timed(arms, args.repeats)
    ref = min(times["steps"])
    print(f"\nrun s: the least of {args.repeats} interleaved rounds (median in brackets)")
    print("| arm | compile s | run s | run / steps | largest stopped_step | mean stopped_step |\n|---|---|---|---|---|---|")
    for name, (_, _, c, out) in arms.items():
        stopped = out["final"]["stopped_step"][:, 0]
        r = min(times[name])
        print(f"| {name} | {c:.2f} | {r:.3f} ({np.median(times[name]):.3f}) | {r / ref:.2f} | {stopped.max()} | "
              f"{stopped.mean():.0f} |")
    fixed, fit = arms["steps"][3]["curves"], arms["fit"][3]
    for i in range(args.runs):
        at = points.index(int(fit["final"]["stopped_step"][i, 0]))
        for k in ("id_loss", "ood_acc", "bg_mean_proj"):
            np.testing.assert_allclose(fit["curves"][k][i, :at + 1], fixed[k][i, :at + 1], rtol=1e-5, atol=1e-6,
                                       err_msg=f"run {i} {k}")
    print("each `fit` run equals the `steps` run up to its stop (rtol 1e-5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
