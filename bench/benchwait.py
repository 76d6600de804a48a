"""Time limits for the benchmarks: every wait gives up after a while and says what for."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any


class GaveUp(TimeoutError):
    """A benchmark step did not finish within its time limit."""


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.1, alive: Callable[[], str | None] | None = None) -> Any:
    """Poll `predicate` until it returns a true value (returned); raise GaveUp naming
    `what` after `timeout_s`, or as soon as `alive()` returns a reason (a process died)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and (dead := alive()):
            raise GaveUp(f"stopped waiting for {what}: {dead}")
        if time.monotonic() > deadline:
            raise GaveUp(f"gave up after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def run(cmd: list[str], timeout_s: float, what: str, **kwargs: Any
        ) -> subprocess.CompletedProcess[Any]:
    """subprocess.run with a time limit that names the step when it runs out."""
    try:
        return subprocess.run(cmd, timeout=timeout_s, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise GaveUp(f"gave up after {timeout_s:g} s waiting for {what} "
                     f"({' '.join(map(str, cmd[:3]))} ...)") from exc


def communicate(proc: subprocess.Popen[Any], timeout_s: float, what: str) -> tuple[Any, Any]:
    """Popen.communicate with a time limit (the process is killed when it runs out)."""
    try:
        return proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise GaveUp(f"gave up after {timeout_s:g} s waiting for {what}") from exc
