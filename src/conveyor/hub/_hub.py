"""The hub's shared state: the app, credentials, connections, background services."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from .._aio import stop_tasks
from ..app import Conveyor
from ..storage._url import hide_password
from ..storage.base import WorkerInfo
from ._config import HubConfig
from ._credentials import ANONYMOUS, Credential, CredentialStore
from ._limits import LoginLimiter
from ._stats import SharedStats

__all__ = ["WORKER_STALE_AFTER", "AuthError", "Hub", "HubConnection", "Service"]

log = logging.getLogger("conveyor.hub")

GOING_AWAY_WAIT = 2.0
"""Seconds :meth:`Hub.going_away` waits for clients to answer their close frames."""
WORKER_STALE_AFTER = 90.0
"""Seconds without a heartbeat after which the hub counts a registered worker as gone
(``alive`` in ``GET /api/v1/workers``; the ``unserved`` hint of a publish)."""
SERVED_FOR = 1.0
"""Seconds the hub reuses the workers list it read for :meth:`Hub.unserved`."""


class AuthError(Exception):
    """A request or connection is refused. ``status`` is the HTTP status
    (401 no or bad key, 403 not allowed, 429 rate limited or too many instances);
    ``code`` the WebSocket close code to use."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        """Seconds until a retry may succeed (the failed-login lockout), when known."""

    @property
    def code(self) -> int:
        """The WebSocket close code for this error (4001, 4003, 4029 or 4000)."""
        return {401: 4001, 403: 4003, 429: 4029}.get(self.status, 4000)


class HubConnection(Protocol):
    """A live client connection (a WebSocket) held by a credential."""

    credential: Credential

    async def close(self, code: int, reason: str) -> None: ...


class Service(Protocol):
    """A background part of the hub, started and stopped with it."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Hub:
    """Everything the hub's routes share. Built by :func:`conveyor.hub.create_hub`."""

    def __init__(self, app: Conveyor, config: HubConfig,
                 credentials: CredentialStore | None = None) -> None:
        self.app = app
        self.config = config
        if config.insecure:
            self.credentials: CredentialStore | None = None
        else:
            self.credentials = credentials or CredentialStore(config.credentials_path)
        self.limiter = LoginLimiter(config.login_failures, config.login_window,
                                    config.login_lockout)
        self.connections: dict[str, set[HubConnection]] = {}
        self.services: list[Service] = []
        self.farewells: list[Callable[[float], Awaitable[None]]] = []
        """Called by :meth:`going_away` (with the seconds they may wait)."""
        self.started_at = time.time()
        self.ready = False
        self._workers: tuple[float, list[WorkerInfo]] = (0.0, [])
        self.stats = SharedStats(app)
        """The task counts of ``/api/v1/stats`` and ``/metrics`` (shared once costly)."""
        self._watcher: asyncio.Task[None] | None = None

    # -- urls ---------------------------------------------------------------------

    def task_url(self, task_id: str) -> str:
        """The ``public_url`` of a task: its WebSocket stream (progress and logs)."""
        base = self.config.base_url
        if base.startswith("https://"):
            base = "wss://" + base[len("https://"):]
        elif base.startswith("http://"):
            base = "ws://" + base[len("http://"):]
        return f"{base}/ws/tasks/{task_id}"

    # -- credentials --------------------------------------------------------------

    def authenticate(self, key: str | None, client: str) -> Credential:
        """The credential of ``key`` (sent by ``client``, an address), or AuthError."""
        if self.credentials is None:
            return ANONYMOUS
        wait = self.limiter.locked_for(client)
        if wait > 0:
            raise AuthError(429, f"too many failed logins from {client}: try again in "
                                 f"{wait:.0f} s", retry_after=wait)
        if not key:
            raise AuthError(401, "a credential is required: send the header "
                                 "'Authorization: Bearer <key>'")
        cred = self.credentials.authenticate(key)
        if cred is None:
            self.limiter.failed(client)
            raise AuthError(401, "invalid or revoked key")
        self.limiter.succeeded(client)
        return cred

    def attach(self, conn: HubConnection) -> None:
        """Count a new connection of its credential; refuse it past max_instances."""
        cred = conn.credential
        live = self.connections.setdefault(cred.key_id, set())
        if cred.max_instances is not None and len(live) >= cred.max_instances:
            raise AuthError(429, f"credential {cred.name!r} already has {len(live)} "
                                 f"connection(s), its maximum")
        live.add(conn)

    def detach(self, conn: HubConnection) -> None:
        """Forget a closed connection (it no longer counts against its credential's limit)."""
        live = self.connections.get(conn.credential.key_id)
        if live is not None:
            live.discard(conn)
            if not live:
                del self.connections[conn.credential.key_id]

    async def _watch_credentials(self) -> None:
        """Reload the credentials file when it changes; close revoked connections."""
        assert self.credentials is not None
        said = ""  # the last error logged: a broken file is reported once, not every tick
        while True:
            await asyncio.sleep(0.25)
            try:
                await asyncio.to_thread(self.credentials.reload)
            except Exception as exc:
                if str(exc) != said:
                    log.warning("credentials: %s (the credentials read before stay in use)",
                                exc)
                    said = str(exc)
                continue
            said = ""
            # checked on every tick, not only when the file changed: a revocation
            # through this very store (an admin route) leaves the file stamp current
            for key_id, conns in list(self.connections.items()):
                if key_id and not self.credentials.is_live(key_id):
                    for conn in list(conns):
                        with contextlib.suppress(Exception):
                            await conn.close(4001, "credential revoked")

    # -- workers ------------------------------------------------------------------

    async def unserved(self, actions: Iterable[str]) -> list[str]:
        """Which of ``actions`` no live registered worker runs (remote services, the
        hub's own workers and any other process's workers on the storage), sorted: a
        publish answers with them, as the CLI warns. The workers are read at most once
        a second (``SERVED_FOR``); a service subscribing here clears that (with
        :meth:`workers_changed`), so it is seen at once. A hint: when the workers cannot
        be read, none is named (the tasks are added by then)."""
        wanted = set(actions)
        if not wanted:
            return []
        read_at, workers = self._workers
        if time.monotonic() - read_at >= SERVED_FOR:
            try:
                workers = await self.app.workers()
            except Exception as exc:
                log.warning("hub: could not read the workers to check the actions "
                            "published: %s", exc)
                return []
            self._workers = (time.monotonic(), workers)
        return self._missing(wanted, workers)

    def workers_changed(self) -> None:
        """A worker registered here: the next :meth:`unserved` reads them again."""
        self._workers = (0.0, [])

    @staticmethod
    def _missing(actions: set[str], workers: list[WorkerInfo]) -> list[str]:
        now = time.time()
        live = [w for w in workers if now - w.last_seen < WORKER_STALE_AFTER]
        return sorted(a for a in actions if not any(w.runs(a) for w in live))

    # -- life ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the storage, start in-process workers and schedules if any, the credentials
        reload and the hub's services; then the hub reports ready."""
        await self.app.open()
        if len(self.app.registry) or self.app.schedules:
            await self.app.start()
        if self.credentials is not None:
            self._watcher = asyncio.create_task(self._watch_credentials(),
                                                name="conveyor-hub-credentials")
        for service in self.services:
            await service.start()
        self.ready = True
        log.info("hub ready on %s (%s)", hide_password(self.config.base_url),
                 "INSECURE: no credentials" if self.credentials is None else "credentials on")

    async def going_away(self, timeout: float = GOING_AWAY_WAIT) -> None:
        """The server is about to shut down: report not ready and close every WebSocket
        with 1001 (going away), before the server closes them with a code of its own
        (uvicorn's is 1012). :func:`conveyor.hub.serve` and ``conveyor serve`` call it;
        :meth:`stop` closes what is left with 1001 under any ASGI server."""
        self.ready = False
        for farewell in self.farewells:
            with contextlib.suppress(Exception):
                await farewell(timeout)

    async def stop(self) -> None:
        """Stop the services, close every connection (1001), and close the app."""
        self.ready = False
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                await service.stop()
        for conns in list(self.connections.values()):
            for conn in list(conns):
                with contextlib.suppress(Exception):
                    await conn.close(1001, "hub shutting down")
        await stop_tasks(self._watcher, what="the hub's watcher")
        self.stats.close()
        await self.app.close()
