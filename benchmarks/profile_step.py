"""Where a training step's time goes: the full step against its parts, vmapped over a chunk.

    python benchmarks/profile_step.py [--preset toy] [--chunk 8] [--steps 200]

Times `steps` scanned steps of (1) the engine's full step, (2) the same step without the
divergence guard, (3) forward + weight-gradient matmuls alone (the FLOP floor), (4) the
same with the first layer stored transposed, (5) the forward matmul alone, all vmapped over
`chunk` configs on one device, of the reference size (or `--shape small`), and prints each
as a share of the full step (GFLOP/s column: the full step's model FLOPs over each time).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp


from contamination.presets import preset
from contamination.spec import stack_traced, static_spec
from contamination.cost import step_flops
from contamination import classify, loop
from contamination.setup import prepare


def scanned(make_step_fn, s, steps):
    def run(traced):
        step, carry, _ = classify.make_training(s, traced)[:3] if make_step_fn is None else make_step_fn(s, traced)
        out, _ = jax.lax.scan(step, carry, None, length=steps)
        return out[0]
    return jax.jit(jax.vmap(run))


def unguarded(s, traced):
    """The step without the non-finite guard (no isfinite, no where over params and state);
    the first layer in the training layout, as the engine's step."""
    setup = prepare(s, traced)
    tx = loop.make_optimizer(s.optimizer, traced.lr, traced.weight_decay, traced.momentum)
    from contamination.model import forward, loss_values

    from contamination.model import to_dm

    xT = setup.data.train.x.T
    trainable = to_dm(setup.trainable)

    def objective(p, batch):
        f, _ = forward(p, batch.x, s.activation, traced.leaky_slope, setup.mask, xT)
        return jnp.mean(loss_values(f, batch.y, s.loss))

    def step(carry, _):
        p, st = carry
        g = jax.grad(objective)(p, setup.data.train)
        g = jax.tree_util.tree_map(jnp.multiply, g, trainable)
        u, st = tx.update(g, st, p)
        return (jax.tree_util.tree_map(lambda x, v, m: x + v * m, p, u, trainable), st), None

    params = to_dm(setup.params)
    return step, (params, tx.init(params)), None


def matmuls_only(s, traced):
    """Forward x W^T and the weight gradient dpre^T x, first layer stored (m, d) (the layout
    before the training layout): the step's FLOP floor as it was."""
    setup = prepare(s, traced)
    x = setup.data.train.x

    def step(w, _):
        pre = x @ w.T
        return w - 1e-6 * (jax.nn.relu(pre).T @ x), None

    return step, setup.params.w, None


def forward_only(s, traced):
    """The forward matmul alone (half the FLOP floor); the mean keeps it from being hoisted."""
    setup = prepare(s, traced)
    x = setup.data.train.x

    def step(w, _):
        return w * (1.0 - 1e-9 * jnp.mean(x @ w.T)), None

    return step, setup.params.w, None


def matmuls_dm_layout(s, traced):
    """The two matmuls with the first layer stored as (d, m) (the engine's training layout):
    both GEMMs non-transposed."""
    setup = prepare(s, traced)
    x = setup.data.train.x
    xT = x.T

    def step(wT, _):
        return wT - 1e-6 * (xT @ jax.nn.relu(x @ wT)), None

    return step, setup.params.w.T, None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--shape", choices=["reference", "small"], default="reference",
                    help="reference: the preset's sizes; small: n=256, d=64, width 64, 8+8 features")
    args = ap.parse_args()
    sizes = {} if args.shape == "reference" else dict(n_train=256, n_test=256, input_dim=64, width=64, core_dim=8, bg_dim=8)
    cfgs = [preset(args.preset, seed=i, steps=args.steps, log_every=args.steps, **sizes) for i in range(args.chunk)]
    s, traced = static_spec(cfgs[0]), stack_traced(cfgs)
    rows = []
    variants = (("full step", None), ("without divergence guard", unguarded), ("matmuls only", matmuls_only),
                ("matmuls only, first layer stored (d, m)", matmuls_dm_layout),
                ("forward matmul only (half the matmul FLOPs)", forward_only))
    for name, fn in variants:
        f = scanned(fn, s, args.steps)
        jax.block_until_ready(f(traced))
        best = min(_time(f, traced) for _ in range(3))
        rows.append((name, best))
    full = rows[0][1]
    flop = step_flops(s) * args.steps * args.chunk
    print(f"{args.chunk} configs x {args.steps} steps, {s.n_train}x{s.input_dim}, width {s.width}, {s.optimizer}; "
          f"{jax.local_devices()[0].device_kind}")
    print("| variant | seconds | share of full step | GFLOP/s (model FLOPs of the full step) |")
    print("|---|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t:.3f} | {t / full:.0%} | {flop / t / 1e9:.0f} |")
    return 0


def _time(f, traced) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(f(traced))
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
