"""Children that do not outlive their parent: Linux's parent-death signal, set between fork and exec."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None]:
    """A Popen preexec_fn: the child gets `sig` when the thread that started it dies.

    The signal follows the *thread* that forked, so start children from a thread that lives as long as they
    should. prctl is Linux-only; elsewhere the caller's own cleanup must do.
    """
    parent_pid = os.getpid()

    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # The parent may have died before prctl took effect; then no signal would ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def stop(process: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds; reaped either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
