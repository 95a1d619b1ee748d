"""The FLOP rate of a bucket program against its chunk size: does it drop once a device's share
of the chunk leaves the CPU's caches?

    python benchmarks/chunk_cache.py [--shapes 256x128,256x256,64x256,32x128] [--chunks 4,8,16,48] [--steps 500]

For each shape (width x input_dim; core and background dimensions input_dim / 8 each, n = 256
train and test samples, `width_vs_dim`'s linear core, learning rate and logging) and chunk size,
compiles the engine's bucket program sharded over the local devices (`--host-devices auto`, as
`make sweep` does), times one call after a warm-up call, and prints the estimated bytes per
device (`cost.memory_bytes`), the seconds and the FLOP rate (`cost.flops`). The device model
(`sweeps/calibrate.py`) measures the same drop with the bare training step, and the planner
keeps chunks within the cache where that is faster.
"""

from __future__ import annotations

import argparse
import time


from sweeps.environment import use_host_devices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="256x128,256x256,64x256,32x128")
    ap.add_argument("--chunks", default="4,8,16,48")
    ap.add_argument("--steps", type=int, default=500)
    args = ap.parse_args()
    use_host_devices()

    import jax
    import numpy as np
    from jax.sharding import Mesh

    from contamination.cost import flops, memory_bytes
    from contamination.presets import preset
    from contamination.spec import static_spec
    from sweeps.grid import Run
    from sweeps.plan import networks_of
    from sweeps.programs import chunk_inputs, compile_bucket

    mesh = Mesh(np.array(jax.local_devices()), ("cfg",))
    n_dev = mesh.devices.size
    print(f"{n_dev} x {jax.local_devices()[0].device_kind}; {args.steps} steps, log every 100")
    print(f"{'shape':>8} {'chunk':>5} {'MiB/device':>10} {'run s':>7} {'GFLOP/s':>8}")
    for shape in args.shapes.split(","):
        width, d = (int(v) for v in shape.split("x"))
        cfg = preset("toy", core="linear", width=width, core_dim=d // 8, bg_dim=d // 8, input_dim=d,
                     n_train=256, n_test=256, lr=0.003, steps=args.steps, log_every=100)
        s = static_spec(cfg)
        for chunk in (int(c) for c in args.chunks.split(",")):
            chunk = max(n_dev, chunk // n_dev * n_dev)
            nets = networks_of([Run.of(cfg.replace(seed=i), {}) for i in range(chunk)])
            prog = compile_bucket(s, chunk, mesh)
            inputs = chunk_inputs(s, chunk, nets, prog.sharding)
            jax.block_until_ready(prog.compiled(inputs))
            t0 = time.perf_counter()
            jax.block_until_ready(prog.compiled(inputs))
            t = time.perf_counter() - t0
            print(f"{shape:>8} {chunk:>5} {memory_bytes(s) * chunk / n_dev / 2**20:>10.1f} {t:>7.2f} "
                  f"{chunk * flops(s) / t / 1e9:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
