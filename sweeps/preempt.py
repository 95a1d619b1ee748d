"""Stopping cleanly on SIGTERM (what a spot TPU VM gets before it is taken) and on Ctrl-C.

The first signal only sets a flag: the run loop never stops inside a write. It polls the flag
while it waits for a chunk or a compile, abandons the chunk in flight (its result is never
written), and raises `Preempted` between chunks. A second signal of the same kind acts as it
normally would (the handler puts the default back), for a user who wants out at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Callable

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL_S = 0.005


class Preempted(Exception):
    """The sweep stopped on a signal; everything written is complete."""

    summary = None  # the engine's Summary of what this invocation wrote

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopFlag:
    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)

    @contextlib.contextmanager
    def installed(self):
        """Catch SIGTERM and SIGINT while the block runs (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def check(self) -> None:
        if self.signum is not None:
            raise Preempted(self.signum)

    def wait(self, ready: Callable[[], bool]) -> None:
        """Poll `ready` until it holds; raise `Preempted` if a signal comes first (what is
        ready when the signal is seen is still returned, so a finished chunk is written)."""
        while not ready():
            self.check()
            time.sleep(POLL_S)


def tree_ready(tree) -> Callable[[], bool]:
    """Whether every array of a pytree of JAX arrays has been computed."""
    leaves = jax.tree_util.tree_leaves(tree)
    return lambda: all(leaf.is_ready() for leaf in leaves)
