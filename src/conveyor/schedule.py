"""Recurring tasks: cron and interval schedules.

Declare them with the handler::

    @app.handler("reports:daily", schedule="0 3 * * *")        # cron, UTC
    async def daily(ctx: Context) -> None: ...

    @app.handler("feeds:poll", schedule=60)                     # every 60 s
    async def poll(ctx: Context) -> None: ...

or add more with :meth:`Conveyor.schedule`. Cron expressions have five
fields, or six with seconds last (croniter's format: ``"* * * * * */10"`` is
every ten seconds); other lengths (croniter's seventh field, a year, or
``@daily``-style names), random or hashed fields (``R``, ``H``) and
expressions that never fire (``"0 0 30 2 *"``) are refused. ``tz`` names the
time zone they are read in (default UTC; a place's name, not the host's own
``localtime``); where its clocks are set back, an
expression that names its hours fires once in the repeated hour (hourly
ones, hour field ``*``, fire in both), and where they go forward, a time
that does not exist fires at the first moment after it (an hourly
expression has no occurrence in the missing hour). Interval schedules fire on
multiples of the interval since the Unix epoch, so every process computes the
same occurrences (``tz`` is for cron expressions only); an interval is from
0.001 s (occurrences are told apart by the millisecond) to
:data:`~conveyor.model.MAX_SECONDS`.

Every worker that has the handler keeps the next occurrence queued: it adds
a task whose ``unique_key`` names the schedule and the occurrence, with a
dedupe scope of every status. However many workers and processes share the
database, each occurrence is added once and therefore runs once. When the
last worker stops, the occurrence it had queued stays queued: it runs, late,
when a worker starts again. The occurrences that fell due while no worker
was running are not made up: the schedule goes on with the next one after
the start. An occurrence whose add failed is tried again until it is added,
late if need be.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from ._specs import MAX_UNIQUE_KEY
from .errors import ConfigurationError
from .model import MAX_TIME, seconds

__all__ = ["MIN_INTERVAL", "Schedule"]


MIN_INTERVAL = 0.001
"""The shortest interval of a schedule, in seconds: occurrences are keyed by the millisecond."""
_CRON_FIELDS = (5, 6)
_HOST_ZONES = frozenset({"localtime", "posixrules", "Factory"})
"""Zone files (also under ``posix/`` or ``right/``) that stand for the host's own
zone, or for none, rather than a place."""
_HASHED = re.compile(r"[hr](?:\(|/|$)", re.IGNORECASE)


def _seconds(value: float) -> str:
    """An interval as a default name shows it: short (``60``, ``0.5``), yet exact
    (``1000001.0``, where ``:g`` made two intervals ``1e+06``)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _check_cron(cron: object) -> None:
    """Refuse what is not a cron expression of five fields (or six, seconds last)
    that every process reads alike."""
    if not isinstance(cron, str):
        raise ConfigurationError(f"a cron expression is a string, not {cron!r}")
    fields = cron.split()
    if len(fields) not in _CRON_FIELDS:
        raise ConfigurationError(
            f"bad cron expression {cron!r}: it has {len(fields)} field(s); a cron expression "
            "has five (minute hour day month weekday), or six with seconds last")
    if any(_HASHED.match(part) for f in fields for part in f.split(",")):
        raise ConfigurationError(
            f"bad cron expression {cron!r}: random and hashed fields (R, H) are not "
            "supported (every process must compute the same occurrences)")
    if not croniter.is_valid(cron):
        raise ConfigurationError(f"bad cron expression {cron!r}")


@dataclass(frozen=True)
class Schedule:
    """When to add a task of ``action``: a ``cron`` expression or ``every`` N seconds."""

    action: str
    cron: str | None = None
    every: float | None = None
    payload: Any = None
    name: str | None = None
    tz: str = "UTC"
    priority: float | None = None
    _zone: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError("a schedule needs either cron or every (not both)")
        if self.cron is not None:
            _check_cron(self.cron)
        else:
            try:
                every = seconds(self.every, "schedule interval", allow_none=False,
                                allow_zero=False)
            except Exception as exc:
                raise ConfigurationError(str(exc)) from None
            if every is not None and every < MIN_INTERVAL:
                raise ConfigurationError(
                    f"schedule interval must be at least {MIN_INTERVAL:g} seconds "
                    f"(occurrences are told apart by the millisecond), not {self.every!r}")
            object.__setattr__(self, "every", every)
        if not isinstance(self.tz, str):
            raise ConfigurationError(f"a time zone is a name such as 'Europe/Paris', "
                                     f"not {self.tz!r}")
        if self.tz.rsplit("/", 1)[-1] in _HOST_ZONES:
            raise ConfigurationError(
                f"time zone {self.tz!r} is not a place's zone ('localtime' is this host's "
                "own, which may differ from another host's: every process must compute "
                "the same occurrences): name the zone, such as 'Europe/Paris'")
        try:
            zone = UTC if self.tz == "UTC" else ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"unknown time zone {self.tz!r}") from None
        object.__setattr__(self, "_zone", zone)
        if self.every is not None and self.tz != "UTC":
            raise ConfigurationError(
                f"an interval schedule fires on multiples of the interval since the Unix "
                f"epoch, whatever the zone: tz={self.tz!r} applies to cron expressions only")
        if self.cron is not None:
            try:
                self.next_after(time.time())
            except (CroniterError, ValueError, OverflowError):
                raise ConfigurationError(
                    f"bad cron expression {self.cron!r}: it never fires") from None
        if self.name is None:
            spec = (self.cron if self.cron is not None
                    else f"every {_seconds(self.every or 0.0)}s")
            object.__setattr__(self, "name", f"{self.action} {spec}")
        elif not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"a schedule's name is a non-empty string, not "
                                     f"{self.name!r}")
        if len(self.unique_key(MAX_TIME)) > MAX_UNIQUE_KEY:  # the longest key it makes
            raise ConfigurationError(
                f"schedule {str(self.name)[:40]!r}...: the name is too long for the unique keys "
                f"of its occurrences (at most {MAX_UNIQUE_KEY} characters); give a shorter "
                "name=")

    @classmethod
    def parse(cls, action: str, value: Any, **options: Any) -> Schedule:
        """A schedule from a handler's ``schedule=`` option: a cron string,
        seconds, a timedelta, or a Schedule."""
        if isinstance(value, Schedule):
            return value
        if isinstance(value, str):
            return cls(action, cron=value, **options)
        if isinstance(value, timedelta) or (isinstance(value, int | float)
                                            and not isinstance(value, bool)):
            return cls(action, every=value if not isinstance(value, timedelta)
                       else value.total_seconds(), **options)
        raise ConfigurationError(
            f"schedule must be a cron string, a number of seconds or a Schedule, not {value!r}")

    def next_after(self, t: float) -> float:
        """The first occurrence strictly after ``t`` (epoch seconds)."""
        if self.every is not None:
            n = math.floor(t / self.every) + 1
            while n * self.every <= t:  # a quotient rounded down
                n += 1
            return n * self.every
        assert self.cron is not None
        while True:  # a loop: an hour set back repeats up to 3,600 times to step over
            start = datetime.fromtimestamp(t, tz=self._zone)
            value = float(croniter(self.cron, start).get_next(datetime).timestamp())
            if value > t and not self._repeated_wall_time(value):
                return value
            t = max(value, t + 1)

    def _repeated_wall_time(self, at: float) -> bool:
        """Whether ``at`` is the second time its local wall time comes (a clock set
        back) and the expression names its hours: as cron does, such a time fires
        once, the first time. Hourly ones (hour field ``*``) fire in both hours."""
        assert self.cron is not None
        if self._zone is UTC or self.cron.split()[1] == "*":
            return False
        wall = datetime.fromtimestamp(at, tz=self._zone).replace(tzinfo=None)
        first = wall.replace(tzinfo=self._zone, fold=0).timestamp()
        return first < at

    def unique_key(self, at: float) -> str:
        """The dedupe key of the occurrence at ``at``."""
        return f"schedule:{self.name}@{round(at * 1000)}"
