"""How to batch CNN runs: `vmap` against `lax.map`, with the convolution as `lax.conv` or as one
matrix product of gathered 3 x 3 patches (contamination/cnn.py), one process, no JAX cache.

    python benchmarks/cnn_batching.py [--runs 8] [--steps 500] [--width 16] [--repeats 3] [--conv patches lax]

A vmapped `lax.conv_general_dilated` over per-run filters becomes a grouped convolution; `lax.map`
runs the runs one after another in the program; the patch form is a batched matrix product under
`vmap`. The program is the digits 3-vs-8 CNN (250 training and 107 test digits with a 2-pixel
border, full batch, AdamW), `--runs` seeds in one program, measured every 100 steps. Prints
compile and run seconds per variant (run: the best of `--repeats`, after one warm call) and their
ratio to the fastest. The variants' final metrics are checked equal (rtol 1e-3).
"""

from __future__ import annotations

import argparse
import time



def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--conv", nargs="+", default=["patches", "lax"], choices=["patches", "lax"],
                    help="the convolutions to measure (vmapped lax.conv is slow: leave it out at many runs)")
    args = ap.parse_args()
    import jax
    import numpy as np

    from contamination import cnn
    from contamination.presets import preset
    from contamination.spec import stack_traced, static_spec
    from contamination.train import make_run

    cfgs = [preset("digits_distill", experiment="classify", model="cnn", width=args.width, steps=args.steps,
                   log_every=100, seed=i) for i in range(args.runs)]
    s, traced = static_spec(cfgs[0]), stack_traced(cfgs)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {args.runs} runs x {args.steps} steps, "
          f"width {args.width}", flush=True)
    rows, finals = [], {}
    default_conv = cnn.CONV
    for batching in ("vmap", "map"):
        for conv in args.conv:
            cnn.CONV = conv  # read when the run is traced
            run = make_run(s)
            fn = jax.vmap(run) if batching == "vmap" else (lambda t, run=run: jax.lax.map(run, t))
            t0 = time.perf_counter()
            compiled = jax.jit(fn).lower(traced).compile()
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(compiled(traced))
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = jax.block_until_ready(compiled(traced))
                times.append(time.perf_counter() - t0)
            finals[(batching, conv)] = {k: np.asarray(v) for k, v in out["final"].items()}
            rows.append((batching, conv, compile_s, min(times)))
            print(f"{batching:5s} {conv:8s} compile {compile_s:6.2f} s  run {min(times):7.3f} s", flush=True)
    cnn.CONV = default_conv
    best = min(r[3] for r in rows)
    print("\n| batching | convolution | compile s | run s | run / fastest |\n|---|---|---|---|---|")
    for batching, conv, c, r in rows:
        print(f"| {batching} | {conv} | {c:.2f} | {r:.3f} | {r / best:.2f} |")
    ref = finals[("vmap", "patches")]
    for key, fin in finals.items():
        for k in ("id_acc", "ood_acc", "bg_mean_proj"):
            np.testing.assert_allclose(fin[k], ref[k], rtol=1e-3, atol=1e-4, err_msg=f"{key} {k}")
    print("final metrics equal across variants (rtol 1e-3: the two convolutions sum in different orders)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
