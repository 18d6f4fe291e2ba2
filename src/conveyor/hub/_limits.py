"""Rate limits: failed logins per client address."""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["LoginLimiter"]

MOST_ADDRESSES = 100_000
"""Addresses tracked at most (failures and lockouts each): past it the least recent go."""


class LoginLimiter:
    """Locks an address out for ``lockout`` seconds after ``failures`` failed
    logins within ``window`` seconds.

    Both records are kept in order of their last change, so that what is over (a
    lockout ended, failures older than the window) is dropped from the front as
    new failures come: an address that failed once and never came back is not
    kept for good (the hub's memory grew with every address that had failed),
    and a scan of many addresses costs at most ``MOST_ADDRESSES`` of each."""

    def __init__(self, failures: int = 5, window: float = 60.0, lockout: float = 60.0) -> None:
        self.failures = failures
        self.window = window
        self.lockout = lockout
        self._lock = threading.Lock()
        self._fails: dict[str, deque[float]] = {}  # by last failure, oldest first
        self._locked: dict[str, float] = {}        # by lockout end, soonest first

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
            fails = self._fails.pop(client, None) or deque()
            self._fails[client] = fails  # the most recent now
            fails.append(now)
            while fails and fails[0] < now - self.window:
                fails.popleft()
            if len(fails) >= self.failures:
                self._locked.pop(client, None)
                self._locked[client] = now + self.lockout
                fails.clear()
            self._forget(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._fails.pop(client, None)

    def tracked(self) -> tuple[int, int]:
        """How many addresses have failures, and how many are locked out, on record."""
        with self._lock:
            return len(self._fails), len(self._locked)

    def _forget(self, now: float) -> None:
        """Drop, from the front, what is over, and the least recent past the bound."""
        fails, locked = self._fails, self._locked
        while fails:
            client, times = next(iter(fails.items()))
            if len(fails) <= MOST_ADDRESSES and times and times[-1] >= now - self.window:
                break
            del fails[client]
        while locked:
            client, until = next(iter(locked.items()))
            if len(locked) <= MOST_ADDRESSES and until > now:
                break
            del locked[client]
