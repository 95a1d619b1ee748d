"""The environment matches its lock file, and the locks cover pyproject's dependencies.

`make install` installs from a hash-pinned lock in requirements/ and writes the lock's path into
.venv/.installed-stamp (`make install UNLOCKED=1` writes "unlocked ..." there instead).
"""

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"
STAMP = Path(sys.prefix) / ".installed-stamp"
# Tools of the environment itself, never in an application lock (pip has requirements/pip.lock).
NOT_LOCKED = {"pip", "setuptools", "wheel", "distribute"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?:\s*;\s*(.*?))?\s*(?:\\)?$")


def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(path):
    """[(name, version, marker or None, [hashes])] of a `uv pip compile --generate-hashes` file."""
    pins = []
    for line in Path(path).read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins.append((canon(m.group(1)), m.group(2), m.group(3), []))
        elif line.strip().startswith("--hash=") and pins:
            pins[-1][3].append(line.strip().split()[0].removeprefix("--hash="))
    return pins


def applies(marker):
    """Whether a pin's PEP 508 marker holds here (packaging comes with pytest)."""
    return not marker or Marker(marker).evaluate()


def installed():
    """{name: version} of every distribution in this environment except pip/setuptools/wheel."""
    dists = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and canon(name) not in NOT_LOCKED:
            dists[canon(name)] = dist.version
    return dists


def project_name():
    return canon(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"])


def installed_lock():
    text = STAMP.read_text().strip() if STAMP.exists() else ""
    if not text:
        pytest.skip(f"not installed by `make install` ({STAMP} missing or empty): no lock to compare")
    if text.startswith("unlocked"):
        pytest.skip("installed with `make install UNLOCKED=1` (newest releases): no lock to compare")
    lock = ROOT / text
    if not lock.exists():
        pytest.skip(f"the stamp names {text}, which this checkout lacks")
    return lock


def test_installed_versions_are_the_locked_ones():
    """pip freeze == the lock: each pin whose marker applies here is installed at its version,
    and nothing else is installed (but the project itself, pip and setuptools)."""
    lock = installed_lock()
    want = {name: version for name, version, marker, _ in parse_lock(lock) if applies(marker)}
    have = installed()
    have.pop(project_name(), None)
    wrong = {n: (v, have.get(n)) for n, v in want.items() if have.get(n) != v}
    assert not wrong, f"locked (want, installed) in {lock.name}: {wrong}; run `make clean install`"
    extra = sorted(set(have) - set(want))
    assert not extra, f"installed but not in {lock.name}: {extra}; `make clean install` rebuilds .venv"


def test_pip_is_the_locked_one():
    lock = installed_lock()
    (pip,) = [v for n, v, _, _ in parse_lock(lock.parent / "pip.lock") if n == "pip"]
    assert importlib.metadata.version("pip") == pip


def _satisfied(version, spec):
    return version in SpecifierSet(spec)


@pytest.mark.parametrize("lock_name", ["test", "tpu", "gpu"])
def test_pyproject_dependencies_are_in_the_lock(lock_name):
    """Every dependency of pyproject (runtime, `test` and `digits`, plus the lock's own extra) is
    pinned, at a version its specifier allows, and every pin has hashes: `make lock` is up to date."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = project["dependencies"] + extras["test"] + extras["digits"]
    reqs += extras.get(lock_name, []) if lock_name != "test" else []
    pins = parse_lock(REQ / f"{lock_name}.lock")
    versions = {}
    for name, version, _, hashes in pins:
        assert hashes, f"{name}=={version} has no hash in {lock_name}.lock"
        versions.setdefault(name, []).append(version)
    for req in reqs:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)", req)
        name, spec = canon(m.group(1)), m.group(2).strip()
        assert name in versions, f"{req} (pyproject) is not in {lock_name}.lock: run `make lock`"
        assert any(_satisfied(v, spec) for v in versions[name]), \
            f"{req} (pyproject) vs {name}=={versions[name]} in {lock_name}.lock: run `make lock`"
    accel = {"tpu": "libtpu", "gpu": "jax-cuda12-plugin"}.get(lock_name)
    assert accel is None or accel in versions, f"{lock_name}.lock lacks {accel}"


@pytest.mark.parametrize("lock_name", ["tpu", "gpu"])
def test_accelerator_locks_agree_with_the_cpu_lock(lock_name):
    """The TPU and GPU locks pin every package they share with test.lock at the same version."""
    cpu = {(n, m): v for n, v, m, _ in parse_lock(REQ / "test.lock")}
    accel = {(n, m): v for n, v, m, _ in parse_lock(REQ / f"{lock_name}.lock")}
    differ = {k: (cpu[k], accel[k]) for k in cpu.keys() & accel.keys() if cpu[k] != accel[k]}
    assert not differ
    assert cpu.keys() <= accel.keys(), sorted(cpu.keys() - accel.keys())
