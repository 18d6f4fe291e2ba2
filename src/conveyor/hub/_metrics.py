"""Prometheus metrics of a hub, served at ``/metrics`` (text format 0.0.4).

Each hub has its own :class:`~prometheus_client.CollectorRegistry` (never the
global one), so several hubs can live in one process. Counters are fed by
a tally on the app's event bus (:meth:`EventBus.add_tally
<conveyor.events.EventBus.add_tally>`): tasks added, started and finished
through any route, by this process's worker, and (through the storage change
feed) by other processes on the same storage. Gauges of task counts per action and status
are read from the storage when the metrics are scraped (``Hub.stats``: shared
with ``/api/v1/stats`` once a read is costly).

A credential only sees the samples of the actions it may read (admins see
every one); samples without an ``action`` label are shown to every
credential.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import Metric as PromMetric
from prometheus_client.exposition import generate_latest

from ..errors import StorageError
from ..model import Status
from ._stats import retrieved

if TYPE_CHECKING:
    from ._credentials import Credential
    from ._hub import Hub

__all__ = ["RUN_BUCKETS", "Metrics"]

log = logging.getLogger("conveyor.hub.metrics")

RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Buckets of the run duration histogram, in seconds."""


class Metrics:
    """The hub's metrics: a hub service (it listens to the event bus while the hub runs)."""

    content_type = CONTENT_TYPE_LATEST
    storage_timeout = 5.0
    """Seconds a scrape waits for the task counts before serving the rest without them
    (Prometheus's own scrape timeout is 10 s by default)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.added = Counter("conveyor_tasks_added", "Tasks added.", ["action"], registry=r)
        self.started = Counter("conveyor_tasks_started",
                               "Claims: task runs started and offers to remote services.",
                               ["action"], registry=r)
        self.finished = Counter("conveyor_tasks_finished",
                                "Tasks that ended, by final status.", ["action", "status"],
                                registry=r)
        self.run_seconds = Histogram("conveyor_task_run_seconds",
                                     "Run time of ended tasks (started_at to finished_at).",
                                     ["action"], buckets=RUN_BUCKETS, registry=r)
        self.queued = Gauge("conveyor_queue_depth", "Tasks queued, per action.", ["action"],
                            registry=r)
        self.tasks = Gauge("conveyor_tasks", "Tasks stored, per action and status.",
                           ["action", "status"], registry=r)
        self.connections = Gauge("conveyor_hub_connections",
                                 "Open WebSocket connections to this hub.", registry=r)
        self.uptime = Gauge("conveyor_hub_uptime_seconds", "Seconds since this hub started.",
                            registry=r)
        self.storage_up = Gauge("conveyor_storage_up",
                                "1 if the storage answered this scrape's read of the task "
                                "counts in time, else 0 (and the task-count gauges are left "
                                "out).", registry=r)
        self._unsubscribe: Callable[[], None] | None = None
        self._reading: asyncio.Task[dict[str, dict[str, int]]] | None = None
        self._children: dict[str, tuple[Any, Any, Any]] = {}
        self._finished_children: dict[tuple[str, str], Any] = {}

    # -- service --------------------------------------------------------------------

    async def start(self) -> None:
        if self._unsubscribe is None:
            # a tally, not an event listener: a run that ends costs no Event and no read
            self._unsubscribe = self.hub.app.bus.add_tally(self._on_tally)
            self.hub.app._ensure_relay()  # other processes' tasks, through the change feed

    async def stop(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        if self._reading is not None:
            self._reading.cancel()

    # -- tallies --------------------------------------------------------------------

    def _on_tally(self, kind: str, action: str, status: str | None,
                  seconds: float | None) -> None:
        children = self._children.get(action)
        if children is None:  # labels() is slow: keep each action's children
            children = self._children[action] = (
                self.added.labels(action), self.started.labels(action),
                self.run_seconds.labels(action))
        if kind == "added":
            children[0].inc()
        elif kind == "started":
            children[1].inc()
        elif kind == "ended":
            done = self._finished_children.get((action, str(status)))
            if done is None:
                done = self._finished_children[(action, str(status))] = self.finished.labels(
                    action, str(status))
            done.inc()
            if seconds is not None:
                children[2].observe(max(0.0, seconds))

    # -- scraping -------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the gauges' values (task counts) from storage, waiting at most
        ``storage_timeout`` seconds: a storage that is down or stuck leaves them out
        (``conveyor_storage_up`` 0), the counters are served all the same. Scrapes
        at the same time share one read (each with its own deadline), and a read
        that outlives its scrape is the next scrape's, so reads never pile up."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self.hub.stats.read())
            self._reading.add_done_callback(retrieved)
        try:
            stats = await asyncio.wait_for(asyncio.shield(self._reading), self.storage_timeout)
        except (TimeoutError, StorageError) as exc:
            log.warning("metrics: task counts left out, the storage %s",
                        f"did not answer within {self.storage_timeout:g}s"
                        if isinstance(exc, TimeoutError) else f"failed: {exc}")
            stats = None
        # no await from here to the rendering: each scrape sees one read's counts
        self.queued.clear()
        self.tasks.clear()
        self.storage_up.set(0 if stats is None else 1)
        for action, counts in (stats or {}).items():
            self.queued.labels(action).set(counts.get(Status.QUEUED.value, 0))
            for status, n in counts.items():
                self.tasks.labels(action, status).set(n)
        self.connections.set(sum(len(c) for c in self.hub.connections.values()))
        self.uptime.set(time.time() - self.hub.started_at)

    async def render(self, cred: Credential) -> bytes:
        """The metrics in the Prometheus text format, as ``cred`` may see them."""
        await self.refresh()
        if cred.admin:
            return generate_latest(self.registry)
        return generate_latest(_Visible(self.registry, cred))


class _Visible:
    """A registry view with only the samples of actions a credential may read."""

    def __init__(self, registry: CollectorRegistry, cred: Credential) -> None:
        self.registry = registry
        self.cred = cred

    def collect(self) -> Iterator[PromMetric]:
        for family in self.registry.collect():
            shown = PromMetric(family.name, family.documentation, family.type, family.unit)
            shown.samples = list(self._visible(family.samples))
            yield shown

    def _visible(self, samples: Iterable[Any]) -> Iterator[Any]:
        for sample in samples:
            action = sample.labels.get("action")
            if action is None or self.cred.can_read(action):
                yield sample
