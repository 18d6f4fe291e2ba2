"""Rate limits: failed logins per client address."""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["LoginLimiter"]


class LoginLimiter:
    """Locks an address out for ``lockout`` seconds after ``failures`` failed
    logins within ``window`` seconds."""

    def __init__(self, failures: int = 5, window: float = 60.0, lockout: float = 60.0) -> None:
        self.failures = failures
        self.window = window
        self.lockout = lockout
        self._lock = threading.Lock()
        self._fails: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}

    def locked_for(self, client: str) -> float:
        """Seconds this client must still wait (0 if it may try)."""
        now = time.monotonic()
        with self._lock:
            until = self._locked.get(client)
            if until is None:
                return 0.0
            if until <= now:
                del self._locked[client]
                return 0.0
            return until - now

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            fails = self._fails.setdefault(client, deque())
            fails.append(now)
            while fails and fails[0] < now - self.window:
                fails.popleft()
            if len(fails) >= self.failures:
                self._locked[client] = now + self.lockout
                fails.clear()
            if len(self._fails) > 100_000:  # bound memory under a scan
                self._fails.clear()

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._fails.pop(client, None)
