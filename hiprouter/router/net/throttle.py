"""Rate limits for audit events and log lines about refused peers.

A flood of refused connections must not become a flood of audit rows (or log lines):
`Throttle.admit(key)` lets the first event of each key through per `window_s`, and at
most `burst` events of all keys per window; the rest are counted. `drain()` returns what
was held back for keys whose window is over, for one summary event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass
class _Key:
    window_start: float
    admitted: int = 0
    suppressed: int = 0


class Throttle:
    """Thread-safe per-key and overall event budget per time window."""

    def __init__(self, window_s: float = 60.0, per_key: int = 1, burst: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.per_key = per_key
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[Hashable, _Key] = {}
        self._window_start = clock()
        self._admitted = 0

    def admit(self, key: Hashable) -> int | None:
        """None when the event for `key` is to be held back (it is counted); else the
        number of events of `key` held back since the last one let through, to mention."""
        now = self._clock()
        with self._lock:
            if now - self._window_start >= self.window_s:
                self._window_start, self._admitted = now, 0
            entry = self._keys.get(key)
            held = 0
            if entry is None or now - entry.window_start >= self.window_s:
                held = entry.suppressed if entry is not None else 0
                entry = self._keys[key] = _Key(now)
            if entry.admitted < self.per_key and self._admitted < self.burst:
                entry.admitted += 1
                self._admitted += 1
                return held
            entry.suppressed += held + 1
            return None

    def drain(self, force: bool = False) -> dict[Hashable, int]:
        """Suppressed counts of keys whose window is over (every key with `force`); those
        keys start afresh."""
        now = self._clock()
        out: dict[Hashable, int] = {}
        with self._lock:
            for key, entry in list(self._keys.items()):
                if force or now - entry.window_start >= self.window_s:
                    if entry.suppressed:
                        out[key] = entry.suppressed
                    del self._keys[key]
        return out
