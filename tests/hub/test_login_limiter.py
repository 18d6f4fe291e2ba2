"""The failed-login limiter forgets what is over: an address locked out once was
kept for good (the hub's memory grew with every address that ever failed: 1.2 KB
each, 300 MB an hour under a spray of forged X-Forwarded-For addresses), and past
100,000 addresses every count was cleared at once (a spray reset them all)."""

from __future__ import annotations

import time
from typing import Any

from conveyor.hub import _limits
from conveyor.hub._limits import LoginLimiter


def test_lockouts_and_failures_that_are_over_are_forgotten() -> None:
    limiter = LoginLimiter(failures=2, window=0.2, lockout=0.2)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 250}.{i % 250}")
        limiter.failed(f"10.0.{i // 250}.{i % 250}")
    assert limiter.tracked() == (0, 1000)
    assert limiter.locked_for("10.0.0.1") > 0
    ended = time.monotonic() + 0.25
    while time.monotonic() < ended:  # the clock: the lockouts and the window pass
        time.sleep(0.05)
    limiter.failed("10.9.9.9")  # any later failure drops what is over
    assert limiter.tracked() == (1, 0)
    assert limiter.locked_for("10.0.0.1") == 0.0


def test_a_spray_drops_the_least_recent_not_every_count(monkeypatch: Any) -> None:
    monkeypatch.setattr(_limits, "MOST_ADDRESSES", 100)
    limiter = LoginLimiter(failures=3, window=60.0, lockout=60.0)
    limiter.failed("victim")
    for i in range(500):
        limiter.failed(f"spray-{i}")
    assert limiter.tracked() == (100, 0)
    limiter.failed("recent")
    for i in range(90):
        limiter.failed(f"more-{i}")
    limiter.failed("recent")
    limiter.failed("recent")  # its three failures were all kept: locked out
    assert limiter.locked_for("recent") > 0
    limiter.failed("victim")  # its first failure went with the least recent
    limiter.failed("victim")
    assert limiter.locked_for("victim") == 0.0
