"""The planner's device model: how long a program takes to compile and to run, on this device kind.

Three constants per device kind and set of local devices (for a CPU: its model name and core
count), kept in `calibration/` next to the program store (or in `$CONTAMINATION_DEVICE_MODELS`).
A machine that has none starts from the shipped default of its platform (`DEFAULTS_FILE`,
scaled by its devices and cores; `source` says which) and never waits for a measurement: every
bucket it trains and every program it compiles is recorded into its own model, and the fit
below takes over from the default after `MIN_RECORDED_RUNS` buckets. `measure` (`python -m
sweeps calibrate`, or `run --calibrate`) measures the constants on the devices (about 5-15 s):

- `compile_s`: seconds to trace, lower and compile a bucket program afresh (a small
  classifier, JAX's cache bypassed, default compile options). Every later fresh compile is
  recorded too, per experiment and compile options (`compile_key`: a small CPU program compiles
  with XLA's older emitters in about 0.6 the time, `contamination/lowering.py`), and the median
  of the recorded ones is used where there are any (for other options before any, the default
  options' times their share);
- `step_s` and `flop_rate`: a chunk's seconds per training step are `step_s + FLOPs /
  flop_rate` (FLOPs as `contamination.cost` counts them), the line through two points
  measured with a chunk sharded as the engine shards it: that small program (fixed costs
  dominate: loop, dispatch or kernel launches, small memory-bound ops) and the real training
  step (forward, backward, AdamW) at reference sizes (FLOPs dominate);
- `cache_bytes` and `flop_rate_large`: the same step timed again with eight times the chunk.
  Where the FLOP rate drops (a CPU whose caches no longer hold a device's share of the chunk:
  on the project's 2-core machine 166 GFLOP/s at 8.8 MiB per device, 108 at 53 MiB), the
  rate `flop_rate` holds up to the smaller chunk's bytes per device (`cost.memory_bytes`)
  and `flop_rate_large` beyond; where it does not (an accelerator), `cache_bytes` is None.
  The planner sizes chunks by it (`plan.choose_chunk`).

A bucket's predicted time is `compile_s` (zero when the store has the program) plus, per
chunk, `steps * step_s` plus its executed FLOPs over the rate at its bytes per device. Every bucket trained
afterwards is recorded too (chunks, chunk-steps, executed FLOPs, seconds); from
`MIN_RECORDED_RUNS` of them on, training seconds are predicted as seconds per chunk plus a
multiple of the calibrated time, both fitted by non-negative least squares to the recorded
buckets (relative error), which takes in what the constants miss (writing results, a compile
running beside the training) while keeping the calibrated shape for buckets larger than any
recorded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from contamination.cost import memory_bytes, step_flops, total_steps
from contamination.loop import init_carry, make_optimizer, make_step
from contamination.model import Params, forward, loss_values, to_dm, trainable_mask
from contamination.numerics import float_dtype
from contamination.lowering import compile_share, options_tag
from contamination.presets import preset
from contamination.spec import Static, static_spec

from . import executables
from .environment import usable_cores
from .grid import Run
from .plan import networks_of
from .programs import chunk_inputs, compile_bucket
from .provenance import versions

CALIBRATION_STEPS = 400
MODEL_VERSION = 2  # part of a saved model's file name: a model of an older form is measured again
LARGE_CHUNK = 8  # the rate is measured again with this many times the chunk
ROUNDS = 5  # timed calls per measurement (the least counts)
CACHE_DROP = 0.85  # a rate this much below the small chunk's means the large chunk left the cache
RECORDED = 32  # recorded compile times kept per experiment
RECORDED_RUNS = 64  # recorded buckets kept
MIN_RECORDED_RUNS = 4
DEFAULTS_FILE = Path(__file__).with_name("device_defaults.json")


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min ||a x - b|| over x >= 0, for a few columns: the best feasible least-squares fit
    over every subset of columns."""
    best, best_res = np.zeros(a.shape[1]), float(np.sum(b ** 2))
    for mask in range(1, 2 ** a.shape[1]):
        cols = [j for j in range(a.shape[1]) if mask >> j & 1]
        x, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        if (x >= 0).all():
            res = float(np.sum((a[:, cols] @ x - b) ** 2))
            if res < best_res:
                best, best_res = np.zeros(a.shape[1]), res
                best[cols] = x
    return best


def compile_key(static: Static, options: tuple = ()) -> str:
    """Where the device model records a compile: by experiment, and by compile options other than
    the default (`lowering.options_tag`: small CPU programs compile in about 0.6 the time)."""
    tag = options_tag(options)
    return f"{static.experiment}+{tag}" if tag else static.experiment


@dataclasses.dataclass
class DeviceModel:
    device: str  # backend, kind and count of the local devices
    flop_rate: float
    step_s: float
    calibration_compile_s: float
    cache_bytes: float | None = None  # bytes per device up to which flop_rate holds (None: any)
    flop_rate_large: float | None = None  # the rate beyond cache_bytes
    recorded_compile_s: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    recorded_runs: list[list[float]] = dataclasses.field(default_factory=list)  # chunks, chunk-steps, FLOPs, s
    path: str | None = None
    source: str = "measured"  # or "default: ..." (a shipped default, not measured here)

    def compile_s(self, static: Static, options: tuple = ()) -> float:
        """Predicted seconds of a fresh compile of a program of `static` with XLA compile `options`
        (`train.program_options`): the median recorded for its experiment and options; before any,
        the default options' (recorded, or calibrated) scaled by `lowering.compile_share`."""
        seen = self.recorded_compile_s.get(compile_key(static, options))
        if seen:
            return statistics.median(seen)
        base = self.recorded_compile_s.get(static.experiment)
        return (statistics.median(base) if base else self.calibration_compile_s) * compile_share(options)

    def rate(self, bytes_per_device: float) -> float:
        """FLOP/s of a chunk holding this many bytes per device."""
        if self.cache_bytes is None or self.flop_rate_large is None or bytes_per_device <= self.cache_bytes:
            return self.flop_rate
        return self.flop_rate_large

    def features(self, bucket) -> list[float]:
        """What a bucket's training seconds are predicted from: chunks, chunk-steps, executed FLOPs
        (counted at `flop_rate`: scaled by how much slower its chunks' bytes per device run)."""
        s = bucket.static
        steps = total_steps(s)
        slowdown = 1.0 if self.cache_bytes is None else self.flop_rate / self.rate(bucket.chunk_bytes_per_device)
        return [float(bucket.n_chunks), float(bucket.n_chunks * steps), float(bucket.executed_flops) * slowdown]

    @functools.cached_property
    def run_coefficients(self) -> tuple[float, float]:
        """Seconds per chunk and a multiplier of the calibrated step time: fitted to the recorded
        buckets (non-negative least squares on relative error), or (0, 1) while fewer than
        MIN_RECORDED_RUNS are recorded. Only these two are fitted, so that the calibrated shape
        (a per-step floor plus FLOPs at the measured rate) is kept: recorded buckets are often
        all small, and a free per-FLOP coefficient fitted to them extrapolated to a large bucket
        as if its FLOPs were free (a 22 TFLOP plan predicted at 0.9 s)."""
        if len(self.recorded_runs) < MIN_RECORDED_RUNS:
            return 0.0, 1.0
        rec = np.array(self.recorded_runs, dtype=float)
        x = np.stack([rec[:, 0], rec[:, 1] * self.step_s + rec[:, 2] / self.flop_rate], axis=1)
        scale = np.maximum(x.max(axis=0), 1e-30)
        a = x / scale / rec[:, 3:4]  # relative error: each bucket's seconds divide its row
        return tuple(float(c) for c in nnls(a, np.ones(len(rec))) / scale)

    def run_s(self, bucket) -> float:
        chunks, chunk_steps, flops = self.features(bucket)
        per_chunk, multiplier = self.run_coefficients
        return per_chunk * chunks + multiplier * (chunk_steps * self.step_s + flops / self.flop_rate)

    def record_run(self, bucket, seconds: float) -> None:
        """Remember a trained bucket's seconds (and save them, where the model has a file)."""
        if seconds > 0:
            self.recorded_runs.append(self.features(bucket) + [seconds])
            del self.recorded_runs[:-RECORDED_RUNS]
            self.__dict__.pop("run_coefficients", None)
            self.save()

    def record_compile(self, static: Static, seconds: float, options: tuple = ()) -> None:
        """Remember a fresh compile's seconds, with the options it was compiled with (and save
        them, where the model has a file)."""
        seen = self.recorded_compile_s.setdefault(compile_key(static, options), [])
        seen.append(round(seconds, 4))
        del seen[:-RECORDED]
        self.save()

    def save(self) -> None:
        if self.path:
            path = Path(self.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
            tmp.write_text(json.dumps(dataclasses.asdict(self) | {"path": None}))
            os.replace(tmp, path)

    def summary(self) -> dict:
        return {"device": self.device, "source": self.source, "flop_rate": self.flop_rate, "step_s": self.step_s,
                "cache_bytes": self.cache_bytes, "flop_rate_large": self.flop_rate_large,
                "compile_s": self.calibration_compile_s,
                "recorded_compile_s": {k: statistics.median(v) for k, v in self.recorded_compile_s.items() if v},
                "recorded_runs": len(self.recorded_runs),
                "run_coefficients": dict(zip(("s_per_chunk", "step_multiplier"), self.run_coefficients))}


def cpu_name() -> str:
    """The CPU's model name (Linux `/proc/cpuinfo`, else `platform.processor()`), for device keys."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_key(mesh) -> tuple[str, str]:
    """A readable description of the local devices and a file name for their model. A CPU is
    described by its model name and usable cores as well: JAX calls every CPU device `cpu`,
    and one fleet's shared models directory may hold several CPU kinds."""
    devices = list(mesh.devices.flat)
    client = devices[0].client
    desc = f"{client.platform} {devices[0].device_kind} x{len(devices)}"
    if client.platform == "cpu":
        desc += f" ({cpu_name()}, {usable_cores()} cores)"
    digest = hashlib.sha256(json.dumps([MODEL_VERSION, desc, client.platform_version, sorted(versions().items()),
                                        jax.config.jax_default_matmul_precision,
                                        jax.config.jax_enable_x64]).encode()).hexdigest()[:16]
    return desc, digest


def default_model(mesh) -> DeviceModel:
    """The shipped default of the mesh's platform (`DEFAULTS_FILE`): rates scale with the devices
    (a CPU's with its usable cores, however many devices they are split into)."""
    devices = list(mesh.devices.flat)
    platform_ = devices[0].client.platform
    table = json.loads(DEFAULTS_FILE.read_text())["platforms"]
    d = table.get(platform_, table["gpu"])
    scale = usable_cores() if platform_ == "cpu" else len(devices)
    cache = d["cache_bytes_per_core"] * scale / len(devices) if d.get("cache_bytes_per_core") else None
    return DeviceModel(device_key(mesh)[0], d["flop_rate_per_unit"] * scale, d["step_s"], d["compile_s"],
                       cache, d["large_rate_ratio"] * d["flop_rate_per_unit"] * scale if cache else None,
                       source=f"default: {platform_} ({d['measured_on']})")


def _times(*calls, rounds: int = ROUNDS) -> list[float]:
    """The least seconds of each zero-argument call over `rounds` rounds that call each in turn,
    after a warm-up call each: what the device can do, less the interference of whatever else
    the machine ran meanwhile, and the calls compared under the same conditions. (Timed once
    each, one after the other, the rate measured on the shared 2-core machine varied from 92 to
    147 GFLOP/s between cold runs, and one in three saw no drop past the caches.)"""
    for call in calls:
        jax.block_until_ready(call())
    best = [float("inf")] * len(calls)
    for _ in range(rounds):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def _train_steps(cfg, steps: int, x, w_dm):
    """`steps` classifier training steps on inputs `x` from first-layer weights `w_dm` (d, m)."""
    m = cfg.width
    y = jnp.where(jnp.arange(x.shape[0]) % 2 == 0, 1.0, -1.0)
    xT, mask = x.T, jnp.ones((m,))
    params = Params(w_dm, jnp.zeros((m,)), jnp.ones((m,)) / m, jnp.zeros(()))
    tx = make_optimizer(cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)

    def objective(p, batch):
        f, _ = forward(p, batch, "leaky_relu", jnp.zeros((), x.dtype), mask, xT)
        return jnp.mean(loss_values(f, y, cfg.loss))

    trainable = to_dm(trainable_mask(m, jnp.int32(m), output="train", bias=True))
    step = make_step(objective, tx, trainable, lambda t: x)
    return jax.lax.scan(step, init_carry(params, tx), None, length=steps)[0][0].w


def measure(mesh) -> DeviceModel:
    """Measure the three constants on the mesh's devices (module docstring)."""
    n_dev = mesh.devices.size
    sharding = NamedSharding(mesh, P("cfg"))

    chunk = 4 * n_dev
    # A small classifier program (the smallest sizes a CPU grid sweeps): its compile time, and
    # its seconds per step, where fixed costs (loop, dispatch, small memory-bound ops) dominate;
    # compiled with XLA's default emitters, as every program that runs long enough to plan for is.
    small = preset("toy", width=16, core_dim=4, bg_dim=4, input_dim=32, n_train=256, n_test=64,
                   steps=CALIBRATION_STEPS, log_every=CALIBRATION_STEPS)
    nets = networks_of([Run.of(small.replace(seed=i), {}) for i in range(chunk)])
    with executables.fresh_compile():
        prog = compile_bucket(static_spec(small), chunk, mesh, store=None, options=())
    compile_s = prog.seconds
    small_inputs = chunk_inputs(static_spec(small), chunk, nets, prog.sharding)

    # The real training step (contamination.loop.make_step: forward, loss, backward, AdamW,
    # divergence guard) at reference sizes, on synthetic data, in a scan; and the same step with
    # LARGE_CHUNK times the networks: does the rate hold past the caches?
    mid, steps, steps_large = preset("toy", width=256, core_dim=32, bg_dim=32, input_dim=256, n_train=256,
                                     n_test=16), 10, 6

    def fn(steps: int):
        return jax.jit(jax.vmap(functools.partial(_train_steps, mid, steps)), in_shardings=(sharding,) * 2,
                       out_shardings=sharding)

    def mid_inputs(n: int):
        return [jax.device_put(jnp.ones((n, *shape), float_dtype()) * 0.01, sharding)
                for shape in ((mid.n_train, mid.input_dim), (mid.input_dim, mid.width))]

    x, w = mid_inputs(chunk)
    x_large, w_large = mid_inputs(LARGE_CHUNK * chunk)
    fn_mid, fn_large = fn(steps), fn(steps_large)
    t_small, t_mid, t_large = _times(lambda: prog.compiled(small_inputs), lambda: fn_mid(x, w),
                                     lambda: fn_large(x_large, w_large))
    t_small, t_mid, t_large = t_small / CALIBRATION_STEPS, t_mid / steps, t_large / steps_large

    # seconds per step = step_s + FLOPs / flop_rate, through both points (FLOPs as `cost` counts them)
    f_small, f_mid = (chunk * step_flops(static_spec(c)) for c in (small, mid))
    flop_rate = (f_mid - f_small) / (t_mid - t_small) if t_mid > t_small else f_mid / t_mid
    step_s = max(t_small - f_small / flop_rate, 0.0)
    rate_large = LARGE_CHUNK * f_mid / max(t_large - step_s, 1e-12)
    cache_bytes = large = None
    if rate_large < CACHE_DROP * flop_rate:
        cache_bytes, large = float(memory_bytes(static_spec(mid)) * chunk / n_dev), rate_large
    desc, _ = device_key(mesh)
    return DeviceModel(desc, flop_rate, step_s, compile_s, cache_bytes, large)


def model_dir(cache: Path | None) -> Path | None:
    """Where device models live: `$CONTAMINATION_DEVICE_MODELS`, else `calibration/` in the cache."""
    env = os.environ.get("CONTAMINATION_DEVICE_MODELS")
    if env:
        return Path(env)
    return cache / "calibration" if cache is not None else None


def _saved(mesh, directory: Path | None) -> tuple[DeviceModel | None, Path | None]:
    """The model of these devices saved in `directory` (None: none, or unreadable), and its path."""
    path = directory / f"{device_key(mesh)[1]}.json" if directory is not None else None
    if path is not None and path.exists():
        try:
            return DeviceModel(**{**json.loads(path.read_text()), "path": str(path)}), path
        except (ValueError, TypeError):
            pass  # unreadable: a new one replaces it
    return None, path


def load(mesh, directory: Path | None) -> DeviceModel:
    """The model of these devices saved in `directory`, else the platform's shipped default
    (saved there on its first record, so that this machine's buckets refit it): no measurement."""
    model, path = _saved(mesh, directory)
    if model is None:
        model = default_model(mesh)
        model.path = str(path) if path is not None else None
    return model


def load_or_measure(mesh, directory: Path | None, again: bool = False) -> DeviceModel:
    """The model of these devices saved in `directory` if it was measured (and not `again`), else
    a fresh measurement, saved there with the records of the model it replaces."""
    model, path = _saved(mesh, directory)
    if model is not None and model.source == "measured" and not again:
        return model
    fresh = measure(mesh)
    if model is not None:
        fresh.recorded_compile_s, fresh.recorded_runs = model.recorded_compile_s, model.recorded_runs
    fresh.path = str(path) if path is not None else None
    fresh.save()
    return fresh
