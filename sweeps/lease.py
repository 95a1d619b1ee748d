"""One attempt at a time per shard of a results directory: claims that need no atomic create.

Array engines retry a task while its first attempt may still run (a node that stopped answering,
a requeue); two attempts that plan the same work differently would write some runs twice. So an
attempt writes nothing before it holds its shard's *lease*. Object stores have no atomic create,
so a lease is taken with claims: an attempt writes its claim `leases/NAME.ATTEMPT.json`, waits
`SETTLE_S` (longer than the store takes to list a new object: GCS and S3 list strongly, a local
folder at once), then lists the claims. It holds NAME if no other live claim conflicts with it;
otherwise it deletes its claim and waits until the others end. Of two attempts that overlap,
the later writer always sees the earlier's claim, so they never both go on (they may both back
off, and then retry after a random pause).

A holder rewrites its claim every `BEAT_S`; a claim is live while it is younger than `STALE_S`
(by its modification time), or, written from this machine's process namespace, while its process
exists (so a retry on the same node does not wait for a SIGKILLed attempt). A holder that finds
its claim gone (another attempt judged it dead) marks the lease `lost` and the engine stops
before its next write. `CONTAMINATION_LEASE_BEAT_S`, `_STALE_S`, `_SETTLE_S` set the times.
"""

from __future__ import annotations

import functools
import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from .storage import UNREADABLE, Location

FOLDER = "leases"


def _env_s(name: str, default: float) -> float:
    return float(os.environ.get(f"CONTAMINATION_LEASE_{name}_S", default))


def timings(local: bool) -> tuple[float, float, float]:
    """(beat, stale, settle) seconds."""
    return _env_s("BEAT", 10.0), _env_s("STALE", 60.0), _env_s("SETTLE", 0.05 if local else 1.0)


@functools.lru_cache(maxsize=None)
def pid_space() -> str:
    """This process namespace on this boot of this machine ("" where unknown): within it a pid
    tells whether a claim's process is still running."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{socket.gethostname()}/{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claim(dict):
    """A claim file's content (name, attempt, host, pid, pid_space, beat, time, and what the
    attempt adds), with `file` and `age_s`."""

    def live(self, stale_s: float) -> bool:
        if self.get("pid_space") and self["pid_space"] == pid_space():
            return _pid_alive(int(self["pid"]))
        return self.age_s < stale_s

    def who(self) -> str:
        return f"host {self.get('host')}, pid {self.get('pid')}, last beat {self.age_s:.0f} s ago"


def claims(out: Location) -> list[Claim]:
    """Every readable claim in `out` (a claim that vanished or does not parse is skipped)."""
    found = []
    now = time.time()
    for name, (_, mtime) in out.listing(FOLDER, suffix=".json").items():
        try:
            c = Claim(json.loads(out.read_text(FOLDER, name)))
        except (*UNREADABLE, ValueError):
            continue
        c["file"] = name
        c.age_s = now - (mtime / 1e9 if mtime > 0 else float(c.get("time", 0)))
        found.append(c)
    return found


class Lease:
    """The lease NAME of a results directory for this attempt (module docstring).

    `conflicts(mine, other)` says whether another live claim keeps this attempt from going on
    (default: the same name)."""

    def __init__(self, out: Location, name: str, info: dict | None = None,
                 conflicts: Callable[[Claim, Claim], bool] | None = None):
        self.out, self.name = out, name
        self.attempt = uuid.uuid4().hex[:12]
        self.file = f"{name}.{self.attempt}.json"
        self.info = {"name": name, "attempt": self.attempt, "host": socket.gethostname(), "pid": os.getpid(),
                     "pid_space": pid_space(), "beat": 0, **(info or {})}
        self.conflicts = conflicts or (lambda mine, other: other.get("name") == mine.get("name"))
        self.beat_s, self.stale_s, self.settle_s = timings(out.local)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        self.info.update(time=time.time())
        self.out.write_text(json.dumps(self.info), FOLDER, self.file)

    def others(self) -> list[Claim]:
        """The live claims of other attempts (dead ones are deleted on the way)."""
        live = []
        for c in claims(self.out):
            if c.get("attempt") == self.attempt:
                continue
            if c.live(self.stale_s):
                live.append(c)
            else:
                self.out.delete(FOLDER, c["file"])
        return live

    def blockers(self) -> list[Claim]:
        mine = Claim(self.info)
        return [c for c in self.others() if self.conflicts(mine, c)]

    def try_acquire(self) -> bool:
        """Claim, settle, look: True when held (the heartbeat then runs), else the claim is withdrawn."""
        self._write()
        time.sleep(self.settle_s)
        if self.blockers():
            self.out.delete(FOLDER, self.file)
            return False
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return True

    def acquire(self, stop=None, say: Callable[[str], None] | None = None) -> None:
        """Hold the lease, waiting while another attempt holds it; `stop` (a `preempt.StopFlag`)
        ends the wait with `Preempted`."""
        said = False
        while not self.try_acquire():
            while blockers := self.blockers():
                if not said:
                    (say or _say)(f"waiting: {self.name} is held by another attempt ({blockers[0].who()}); "
                                  f"going on when it ends, or when it has been silent for {self.stale_s:.0f} s")
                    said = True
                _sleep(min(1.0, self.beat_s / 2), stop)
            _sleep(random.uniform(0, 2 * self.settle_s), stop)  # both backed off: one goes first

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                if not self.out.exists(FOLDER, self.file):
                    self.lost = True
                    return
                self.info["beat"] += 1
                self._write()
            except (*UNREADABLE, ValueError):
                pass  # the store did not answer: the next beat tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.out.delete(FOLDER, self.file)
            if self.out.local:
                os.rmdir(self.out.path(FOLDER))  # when empty: no trace of a finished run
        except OSError:
            pass


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _sleep(seconds: float, stop) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stop is not None:
            stop.check()
        time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
