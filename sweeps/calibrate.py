"""The planner's device model: how long a program takes to compile and to run, on this device kind.

Three constants, measured once per device kind and set of local devices (about 2-4 s) and
cached in `calibration/` next to the program store:

- `compile_s`: seconds to trace, lower and compile a bucket program afresh (a tiny classifier,
  JAX's cache bypassed). Every later fresh compile is recorded too, per experiment, and the
  median of the recorded ones is used where there are any;
- `step_s`: seconds per training step of a chunk beyond its FLOPs: the per-step latency floor
  (loop, dispatch, kernel launches), measured on the same tiny program;
- `flop_rate`: FLOP/s of the local devices together on a training step's matmul pair at
  reference sizes, with the chunk sharded as the engine shards it.

A bucket's predicted time is `compile_s` (zero when the store has the program) plus, per
chunk, `steps * step_s` plus its executed FLOPs over `flop_rate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

from contamination.config import Static

CALIBRATION_STEPS = 400
RECORDED = 32  # recorded compile times kept per experiment


@dataclasses.dataclass
class DeviceModel:
    device: str  # backend, kind and count of the local devices
    flop_rate: float
    step_s: float
    calibration_compile_s: float
    recorded_compile_s: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    path: str | None = None

    def compile_s(self, static: Static) -> float:
        seen = self.recorded_compile_s.get(static.experiment)
        return statistics.median(seen) if seen else self.calibration_compile_s

    def run_s(self, bucket) -> float:
        s = bucket.static
        steps = s.steps + (s.teacher_steps if s.experiment == "distill" and s.teacher == "trained" else 0)
        return bucket.n_chunks * steps * self.step_s + bucket.executed_flops / self.flop_rate

    def record_compile(self, static: Static, seconds: float) -> None:
        """Remember a fresh compile's seconds (and save them, where the model has a file)."""
        seen = self.recorded_compile_s.setdefault(static.experiment, [])
        seen.append(round(seconds, 4))
        del seen[:-RECORDED]
        self.save()

    def save(self) -> None:
        if self.path:
            path = Path(self.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
            tmp.write_text(json.dumps(dataclasses.asdict(self) | {"path": None}, indent=1))
            os.replace(tmp, path)

    def summary(self) -> dict:
        return {"device": self.device, "flop_rate": self.flop_rate, "step_s": self.step_s,
                "compile_s": self.calibration_compile_s,
                "recorded_compile_s": {k: statistics.median(v) for k, v in self.recorded_compile_s.items() if v}}


def device_key(mesh) -> tuple[str, str]:
    """A readable description of the local devices and a file name for their model."""
    import jax

    from .provenance import versions

    devices = list(mesh.devices.flat)
    client = devices[0].client
    desc = f"{client.platform} {devices[0].device_kind} x{len(devices)}"
    digest = hashlib.sha256(json.dumps([desc, client.platform_version, sorted(versions().items()),
                                        jax.config.jax_default_matmul_precision]).encode()).hexdigest()[:16]
    return desc, digest


def _time(fn, *args) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # warm
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def measure(mesh) -> DeviceModel:
    """Measure the three constants on the mesh's devices (module docstring)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from contamination.config import preset, static_spec
    from sweeps.grid import Run
    from sweeps.plan import networks_of

    from . import executables
    from .programs import chunk_inputs, compile_bucket

    n_dev = mesh.devices.size
    sharding = NamedSharding(mesh, P("cfg"))

    # A tiny classifier program: its compile time, and the per-step floor (its FLOPs are negligible).
    cfg = preset("toy", width=8, core_dim=2, bg_dim=2, input_dim=8, n_train=16, n_test=16,
                 steps=CALIBRATION_STEPS, log_every=CALIBRATION_STEPS)
    nets = networks_of([Run.of(cfg.replace(seed=i), {}) for i in range(n_dev)])
    with executables.fresh_compile():
        t0 = time.perf_counter()
        prog = compile_bucket(static_spec(cfg), n_dev, mesh, store=None)
        compile_s = time.perf_counter() - t0
    step_s = _time(prog.compiled, chunk_inputs(static_spec(cfg), n_dev, nets, prog.sharding)) / CALIBRATION_STEPS

    # The matmul pair of a training step (forward x @ W and weight gradient x^T @ g) at reference sizes.
    n = d = m = 256
    chunk, steps = 4 * n_dev, 20

    def pair(x, xT, w):  # both GEMMs with operands as stored, as the training step has them (model.dense_dm)
        def body(w, _):
            g = x @ w
            return w - 1e-6 * (xT @ g), None
        return jax.lax.scan(body, w, None, length=steps)[0]

    fn = jax.jit(jax.vmap(pair), in_shardings=(sharding,) * 3, out_shardings=sharding)
    x = jax.device_put(jnp.ones((chunk, n, d), jnp.float32) * 0.01, sharding)
    xT = jax.device_put(jnp.ones((chunk, d, n), jnp.float32) * 0.01, sharding)
    w = jax.device_put(jnp.ones((chunk, d, m), jnp.float32) * 0.01, sharding)
    seconds = _time(fn, x, xT, w)
    flop_rate = chunk * steps * 4 * n * d * m / max(seconds - steps * step_s, 1e-9)
    desc, _ = device_key(mesh)
    return DeviceModel(desc, flop_rate, step_s, compile_s)


def load_or_measure(mesh, cache: Path | None) -> DeviceModel:
    """The cached model of these devices, or a fresh measurement (saved when `cache` is given)."""
    desc, digest = device_key(mesh)
    path = cache / "calibration" / f"{digest}.json" if cache is not None else None
    if path is not None and path.exists():
        try:
            data = json.loads(path.read_text())
            return DeviceModel(**{**data, "path": str(path)})
        except (ValueError, TypeError):
            pass  # unreadable: measure again
    model = measure(mesh)
    model.path = str(path) if path is not None else None
    model.save()
    return model
