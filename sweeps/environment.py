"""The process's JAX environment: host devices, device facts, memory budget (the compilation
cache is `contamination.cache`)."""

from __future__ import annotations

import os

import jax

from .plan import PlanError


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def use_host_devices(n: int | None = None, runs: int | None = None) -> int | None:
    """Split the host CPU into `n` JAX devices (default: one per usable core, at most `runs`)
    before JAX starts.

    On a CPU backend the engine shards each chunk's runs over the local devices, so one device
    per core runs the vmapped runs on all cores at once; one device alone leaves most of a
    small program's steps on a single core (BENCHMARKS.md: the small grid trains about twice
    as fast on 2 cores). Accelerator backends ignore the CPU's devices.

    Returns the count set, or None where it was left alone: `n` is None and the user already
    chose (`XLA_FLAGS=--xla_force_host_platform_device_count` or `JAX_NUM_CPU_DEVICES`), or
    JAX's backends are already running (in-process callers keep what they have). An explicit
    `n` that can no longer be applied raises PlanError.
    """
    explicit = n is not None
    if not explicit:
        if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "") \
                or os.environ.get("JAX_NUM_CPU_DEVICES"):
            return None
        n = usable_cores() if runs is None else max(1, min(usable_cores(), runs))
    if n < 1:
        raise PlanError(f"--host-devices: must be >= 1, got {n}")
    if jax.config.jax_num_cpu_devices == n:
        return n
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # backends already initialized
        if explicit:
            raise PlanError(f"--host-devices {n}: JAX is already running in this process; "
                            "it must be set before the first JAX call") from None
        return None
    return n


def device_info() -> dict:
    devs = jax.local_devices()
    return {"backend": jax.default_backend(), "device_kind": devs[0].device_kind,
            "local_device_count": len(devs), "device_count": jax.device_count(),
            "process_index": jax.process_index(), "process_count": jax.process_count()}


def default_memory_budget() -> int:
    """Per-device budget: half the device's memory where JAX reports it, else a quarter of host RAM."""
    stats = None
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] * 0.5)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 8 * 2**30
    return int(ram / 4 / max(len(jax.local_devices()), 1))


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc), for the engine's start-up timings; None
    where the start time is unknown."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
