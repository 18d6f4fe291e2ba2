"""One WebSocket connection to a hub: authentication, requests and replies, pushes.

Requests get a fresh integer id; the first message the hub sends with that id
is the reply (or an ``error``). Later messages with the same id (the updates
of a publish, the changes of a live query, the offers of a subscription) go
to the route registered for the id. Outgoing messages are packed into one
frame (a JSON array) when several are waiting, and paced to stay under the
hub's ``max_rate``; a newer ``update`` of a task replaces one not yet sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from .. import _json
from ..errors import ValidationError
from ..storage._url import hide_password, scrub_password
from ._checks import check_hub_url
from ._errors import HubError

__all__ = ["CLOSED", "FrameTooBig", "Link", "Unsendable", "hub_error", "ws_url"]

log = logging.getLogger("conveyor.client")

CLOSED: dict[str, Any] = {"type": "_closed"}
"""What a route receives when the connection ends."""
_CODE_STATUS = {"unauthorized": 401, "forbidden": 403, "rate_limited": 429}
_CLOSE_STATUS = {4001: 401, 4003: 403, 4029: 429}
_REPLACEABLE = frozenset({"update", "pickup", "return", "drop", "fail", "retry", "reschedule"})
_CLOSE_CODE = {4001: "unauthorized", 4003: "forbidden", 4029: "rate_limited", 4008: "slow_reader",
               4009: "too_big", 4002: "no_heartbeat", 1008: "protocol_violation"}


_SECRET = re.compile(r"(cvk_[0-9A-Za-z]+_)[0-9A-Za-z_\-]+")


class _Redacting(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The ``websockets`` client's logger with key secrets blanked out: at DEBUG level
    it logs the handshake's headers and every frame (a ``hello`` holds the key)."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args!r}"
            self.logger.log(level, _SECRET.sub(r"\1***", text), **kwargs)


_wire_log = _Redacting(logging.getLogger("websockets.client"), {})


def ws_url(url: str, path: str = "/ws") -> str:
    """``http://host:port`` (or ``ws://...``, with or without ``/ws``) as the WebSocket
    URL; checked as ``--hub`` is (a host, a port from 1 to 65535), but a query is kept."""
    check_hub_url(url, ("http", "https", "ws", "wss"),
                  "http://, https://, ws:// or wss:// with a host", query=True)
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}[parts.scheme.lower()]
    base = parts.path.rstrip("/")
    if not base.endswith(path):
        base += path
    return urlunsplit((scheme, parts.netloc, base, parts.query, ""))


def hub_error(msg: dict[str, Any]) -> HubError:
    code = str(msg.get("code") or "error")
    error = HubError(_CODE_STATUS.get(code, 0), str(msg.get("message") or code), code)
    error.data = msg  # type: ignore[attr-defined]
    return error


class Unsendable(ValidationError):
    """A message the hub would refuse as a whole: not sent."""


class FrameTooBig(Unsendable):
    """A message over the hub's ``max_frame``: not sent (the hub would close the
    connection on it)."""


def _size(text: str) -> int:
    """Bytes of ``text`` in UTF-8."""
    return len(text) if text.isascii() else len(text.encode())


class Link:
    """A connected WebSocket with request/reply matching. Create with :meth:`open`."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any],
                 on_push: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.ws = ws
        self.welcome = welcome
        limits = welcome.get("limits") or {}
        self.max_rate = float(limits.get("max_rate") or 1000.0)
        self.service_lease = float(limits.get("service_lease") or 30.0)
        # the hub closes the connection (4009) on a frame over this many bytes
        self.max_frame = int(limits.get("max_frame") or 1 << 20)
        self._on_push = on_push
        self._next = 0
        self._pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.routes: dict[Any, Callable[[dict[str, Any]], None]] = {}
        self._out: list[str | None] = []
        self._updates: dict[str, int] = {}      # task id -> index of its unsent update
        self._pickups: dict[str, int] = {}      # task id -> index of its unsent pickup
        self._kick = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tokens = self.max_rate
        self._refilled = time.monotonic()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader = asyncio.create_task(self._read(), name="conveyor-client-read")
        self._writer = asyncio.create_task(self._write(), name="conveyor-client-write")

    @classmethod
    async def open(cls, url: str, key: str | None, *, timeout: float = 10.0,
                   hello: bool = False,
                   on_push: Callable[[dict[str, Any]], None] | None = None) -> Link:
        headers = {"Authorization": f"Bearer {key}"} if key and not hello else None
        try:
            ws = await connect(url, additional_headers=headers, max_size=None,
                               open_timeout=timeout, compression=None, ping_interval=20,
                               ping_timeout=20, close_timeout=2, logger=_wire_log)
        except InvalidStatus as exc:
            raise HubError(exc.response.status_code,
                           f"the hub refused the WebSocket handshake ({exc})") from None
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise HubError(0, f"cannot reach the hub at {hide_password(url)}: "
                              f"{scrub_password(str(exc), url)}", "unreachable") from None
        try:
            if hello:
                await ws.send(_json.dumps({"type": "hello", "id": 0, "key": key}))
            async with asyncio.timeout(timeout):
                welcome = await _first(ws)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            reason = exc.rcvd.reason if exc.rcvd else ""
            raise HubError(_CLOSE_STATUS.get(code, 0), reason or f"closed with code {code}",
                           _CLOSE_CODE.get(code, "closed")) from None
        except TimeoutError:
            await ws.close()
            raise HubError(401, "the hub sent no welcome: is a key needed?",
                           "unauthorized") from None
        if welcome.get("type") == "error":
            await ws.close()
            raise hub_error(welcome)
        if welcome.get("type") != "welcome":
            await ws.close()
            raise HubError(0, f"unexpected first message from the hub: {welcome!r:.200}",
                           "protocol")
        return cls(ws, welcome, on_push)

    # -- sending ----------------------------------------------------------------

    def new_id(self) -> int:
        self._next += 1
        return self._next

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message (no reply awaited)."""
        if self.closed.is_set():
            return
        kind = message.get("type")
        try:
            text = _json.dumps(message)
        except (TypeError, ValueError, RecursionError) as exc:  # a set, NaN: nothing sent
            raise Unsendable(f"the {kind} message is not JSON-serialisable: {exc}") from None
        try:  # deeper, the hub answers bad_json without the message's id
            _json.check_depth(message, f"the {kind} message", _json.WIRE_DEPTH)
        except ValueError as exc:
            raise Unsendable(str(exc)) from None
        try:
            size = _size(text)
        except UnicodeEncodeError:  # the hub refuses it (bad_json), even escaped
            raise Unsendable(f"the {kind} message holds text that is not valid Unicode "
                             "(a lone surrogate)") from None
        if size > self.max_frame:  # the hub would close the connection on it
            raise FrameTooBig(f"the {kind} message is {size} bytes, over the hub's frame "
                              f"limit of {self.max_frame} bytes (max_frame)")
        task_id = message.get("task_id")
        if isinstance(task_id, str) and kind in _REPLACEABLE:
            if kind == "update":
                index = self._updates.get(task_id)
                if index is not None:
                    self._out[index] = text
                    return
                self._updates[task_id] = len(self._out)
            elif kind == "pickup":
                self._pickups[task_id] = len(self._out)
            else:
                # an outcome while the pickup is still here: the outcome alone says both
                index = self._pickups.pop(task_id, None)
                if index is not None:
                    self._out[index] = None
        self._out.append(text)
        self._drained.clear()
        self._kick.set()

    async def request(self, message: dict[str, Any], timeout: float | None = None,
                      route: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Send a request and return its reply (an ``error`` reply raises :class:`HubError`).

        ``route`` receives the messages the hub sends later under the same id."""
        if self.closed.is_set():
            raise HubError(0, "the connection to the hub is closed", "disconnected")
        msg_id = message.get("id")
        if msg_id is None:
            msg_id = message["id"] = self.new_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        if route is not None:
            self.routes[msg_id] = route
        try:
            self.send(message)
            async with asyncio.timeout(timeout):
                reply = await future
        except BaseException:
            self._pending.pop(msg_id, None)
            if route is not None:
                self.routes.pop(msg_id, None)
            raise
        if reply.get("type") == "error":
            if route is not None:
                self.routes.pop(msg_id, None)
            raise hub_error(reply)
        return reply

    async def _write(self) -> None:
        ws = self.ws
        try:
            while True:
                if not self._out:
                    self._drained.set()
                    self._kick.clear()
                    await self._kick.wait()
                    # one more turn of the loop: what the wake-up set going (a handler
                    # that ends at once) joins this frame
                    await asyncio.sleep(0)
                    continue
                # pace to the hub's rate limit (it allows bursts of twice the rate)
                now = time.monotonic()
                self._tokens = min(self.max_rate * 1.5,
                                   self._tokens + (now - self._refilled) * self.max_rate)
                self._refilled = now
                if self._tokens < 1:
                    await asyncio.sleep((1 - self._tokens) / self.max_rate)
                    continue
                take, room = 0, self.max_frame - 2  # a frame of several is [a,b,...]
                for text in self._out[:min(len(self._out), max(1, int(self._tokens)), 1000)]:
                    size = 0 if text is None else _size(text) + 1
                    if take and size > room:
                        break
                    take += 1
                    room -= size
                batch = [m for m in self._out[:take] if m is not None]
                del self._out[:take]
                if self._updates:
                    self._updates = {k: i - take for k, i in self._updates.items() if i >= take}
                if self._pickups:
                    self._pickups = {k: i - take for k, i in self._pickups.items() if i >= take}
                if not batch:
                    continue
                self._tokens -= len(batch)
                await ws.send(batch[0] if len(batch) == 1 else "[" + ",".join(batch) + "]")
        except asyncio.CancelledError:
            raise
        except Exception:
            pass

    # -- receiving --------------------------------------------------------------

    async def _read(self) -> None:
        ws = self.ws
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    continue
                try:
                    parsed = _json.loads(frame)
                except ValueError:
                    log.warning("hub sent a frame that is not JSON")
                    continue
                for msg in parsed if isinstance(parsed, list) else [parsed]:
                    if isinstance(msg, dict):
                        self._dispatch(msg)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("hub connection reader failed")
        finally:
            rcvd = ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else 1006
            self.close_reason = rcvd.reason if rcvd is not None else ""
            self._shut()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        msg_id = msg.get("id")
        future = self._pending.pop(msg_id, None) if msg_id is not None else None
        if future is not None:
            if not future.done():
                future.set_result(msg)
            return
        route = self.routes.get(msg_id) if msg_id is not None else None
        if route is not None:
            try:
                route(msg)
            except Exception:
                log.exception("hub message handler failed")
            return
        if self._on_push is not None:
            self._on_push(msg)
        elif msg.get("type") == "error":
            log.warning("hub error for message %r: %s (%s)", msg_id, msg.get("message"),
                        msg.get("code"))

    def _shut(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._drained.set()
        code = _CLOSE_CODE.get(self.close_code or 0, "disconnected")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(HubError(_CLOSE_STATUS.get(self.close_code or 0, 0),
                                              f"the connection to the hub closed "
                                              f"({self.close_code} {self.close_reason})".strip(),
                                              code))
        self._pending.clear()
        routes, self.routes = self.routes, {}
        for route in routes.values():
            with contextlib.suppress(Exception):
                route(CLOSED)
        self._writer.cancel()

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until the queued messages were handed to the socket."""
        if self.closed.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._drained.wait()

    async def close(self) -> None:
        if not self.closed.is_set():
            await self.flush(1.0)
        self._writer.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        self._shut()


async def _first(ws: ClientConnection) -> dict[str, Any]:
    while True:
        frame = await ws.recv()
        if isinstance(frame, bytes):
            continue
        parsed = _json.loads(frame)
        msg = parsed[0] if isinstance(parsed, list) and parsed else parsed
        if isinstance(msg, dict):
            return msg


_ = websockets  # the library is required by this module
