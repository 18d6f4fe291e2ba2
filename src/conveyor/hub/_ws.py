"""The WebSocket protocol: one endpoint (``/ws``) and the task streams (``/ws/tasks/{id}``).

A connection authenticates with its handshake's ``Authorization: Bearer`` or
``X-Conveyor-Key`` header, or with a first ``hello`` message. After that it
may publish tasks and follow them, work on actions as a remote worker
(:mod:`._remote`), follow live queries (:mod:`._live`) and watch single tasks
(:mod:`._watch`). The reference is ``docs/protocol.md``.

Every connection has a bounded send queue (``max_pending`` messages; a reader
that lets it fill is cut off with 4008), a token bucket on the messages it
sends (``max_rate`` per second, bursts of twice that; 4029 past it), a frame
size limit (``max_frame``; 4009) and a budget of bad messages (1008 when a
client keeps sending garbage). None of this touches other connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from .. import _json
from .._registry import check_action
from .._specs import ADD_OPTIONS
from ..errors import (
    ConveyorError,
    InvalidTransition,
    QueryError,
    TaskNotFound,
    ValidationError,
)
from ..model import MAX_SECONDS, Task
from ..storage import AddResult
from ._credentials import Credential
from ._http import client_address, error_response, key_from
from ._hub import AuthError, Hub
from ._live import LiveManager, LiveSub
from ._publish import KeyHeld, add_as
from ._remote import Remote, Sub
from ._watch import Streams, TaskStream, WaitSpec
from ._ws_proto import (
    CLOSE_AUTH,
    CLOSE_FORBIDDEN,
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL,
    CLOSE_RATE,
    CLOSE_SLOW,
    CLOSE_TOO_BIG,
    PROTOCOL_VERSION,
    ProtocolError,
    encode,
    encode_id,
    opt_bool,
    opt_number,
    opt_str,
    parse_frame,
    req_str,
)

__all__ = ["Connection", "WSState", "ws_routes"]

log = logging.getLogger("conveyor.hub.ws")

HELLO_TIMEOUT = 10.0
"""Seconds a connection without a header key has to send its ``hello``."""
BAD_MESSAGE_BUDGET = 100
"""Bad messages a connection may send within ``BAD_MESSAGE_WINDOW`` seconds (then 1008)."""
BAD_MESSAGE_WINDOW = 10.0
MAX_BATCH = 1000
"""Most messages the hub packs into one frame (a JSON array)."""
MAX_BATCH_CHARS = 1 << 20

_MISSING = object()
Handler = Callable[["Connection", dict[str, Any]], Awaitable[None] | None]


def ws_routes(hub: Hub) -> list[BaseRoute]:
    """The WebSocket routes of a hub (its state is started and stopped with the hub)."""
    state = WSState(hub)
    hub.services.append(state)
    hub.farewells.append(state.going_away)
    return [WebSocketRoute("/ws", state.endpoint),
            WebSocketRoute("/ws/tasks/{task_id}", state.task_endpoint),
            WebSocketRoute("/{path:path}", _no_route)]


async def _no_route(websocket: WebSocket) -> None:
    """A handshake to a path that is no WebSocket route: 404 ``not_found``, as for
    HTTP (Starlette refused it with an empty 403)."""
    response = error_response(404, "not_found", f"no WebSocket route {websocket.url.path}")
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # a server without the denial extension: its refusal (403)
        await websocket.close()


class WSState:
    """What every WebSocket connection of one hub shares."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.app = hub.app
        self.config = hub.config
        self.streams = Streams(self)
        self.remote = Remote(self)
        self.live = LiveManager(self)
        self.connections: set[Connection] = set()
        self.no_connections = asyncio.Event()
        self.no_connections.set()
        self.background: set[asyncio.Task[Any]] = set()
        self.started = False
        self.max_batch_chars = max(MAX_BATCH_CHARS, self.config.max_frame)
        self._url_prefix = hub.task_url("")

    def task_url(self, task_id: str) -> str:
        return self._url_prefix + task_id

    def task_json(self, task: Any) -> dict[str, Any]:
        """A task's wire form, its ``public_url`` filled in (the task stream here)."""
        data: dict[str, Any] = task.to_json()
        if data["public_url"] is None:
            data["public_url"] = self._url_prefix + task.id
        return data

    async def start(self) -> None:
        await self.remote.start()
        self.started = True

    async def going_away(self, timeout: float) -> None:
        """Close every connection with 1001 (new ones are closed so too), and wait up to
        ``timeout`` seconds for the clients to answer the close frames."""
        self.started = False
        self.remote.leaving()
        await asyncio.gather(*(conn.close(CLOSE_GOING_AWAY, "hub shutting down")
                               for conn in list(self.connections)), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.no_connections.wait()

    async def stop(self) -> None:
        self.started = False
        self.remote.leaving()
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.close(CLOSE_GOING_AWAY, "hub shutting down")
        await self.remote.stop()
        self.live.close()

    async def endpoint(self, websocket: WebSocket) -> None:
        await Connection(self, websocket).run()

    async def task_endpoint(self, websocket: WebSocket) -> None:
        task_id = str(websocket.path_params.get("task_id", ""))
        await Connection(self, websocket, task_id=task_id).run()


class Connection:
    """One WebSocket client. Implements :class:`conveyor.hub._hub.HubConnection`."""

    credential: Credential

    def __init__(self, state: WSState, websocket: WebSocket, task_id: str | None = None) -> None:
        self.state = state
        self.hub = state.hub
        self.websocket = websocket
        self.config = state.config
        self.peer = client_address(websocket)
        self.task_id = task_id          # the /ws/tasks/{id} endpoint
        self.attached = False
        self.closed = False
        self._closing: asyncio.Task[None] | None = None
        self._out: deque[str] = deque()
        self._out_chars = 0  # of the messages in _out
        self._wake = asyncio.Event()
        self._roomy = asyncio.Event()  # set when the queue falls to half its bounds
        self._sender: asyncio.Task[None] | None = None
        self.last_seen = time.monotonic()
        rate = max(1.0, float(self.config.max_rate))
        self._rate = rate
        self._burst = 2.0 * rate
        self._tokens = self._burst
        self._refilled = time.monotonic()
        self._bad: deque[float] = deque()
        self.subs: dict[str, Sub] = {}             # encoded request id -> subscription
        self.lives: dict[str, LiveSub] = {}
        self.streams: dict[str, list[TaskStream]] = {}
        self.handlers: dict[str, Handler] = _HANDLERS

    def __repr__(self) -> str:
        who = getattr(self, "credential", None)
        return f"<ws {self.peer} {who.name if who else '?'}>"

    # -- sending ------------------------------------------------------------------

    def fits(self, text: str) -> bool:
        """Whether the send queue has room for ``text`` (else :meth:`send` cuts the
        reader off)."""
        return self.has_room(len(text))

    def has_room(self, chars: int) -> bool:
        """Whether the send queue has room for one message of ``chars`` characters."""
        return (len(self._out) < self.config.max_pending
                and self._out_chars + chars <= self.config.max_pending_bytes)

    def send(self, text: str) -> None:
        """Queue one encoded message. A full queue cuts the reader off (4008)."""
        if self.closed:
            return
        out = self._out
        if not self.fits(text):
            self.cut_off(f"send queue full ({len(out)} messages, {self._out_chars} "
                         "characters)")
            return
        out.append(text)
        self._out_chars += len(text)
        if len(out) == 1:
            self._wake.set()

    def cut_off(self, why: str) -> None:
        """Cut a slow reader off (4008): what waits for it is more than ``max_pending``."""
        if self.closed:
            return
        log.warning("%r: %s: cutting a slow reader off", self, why)
        self.closed = True
        self._drop_queue()
        self._schedule_close(CLOSE_SLOW, "slow reader: too many messages pending")
        # let go of everything now: the close frame waits behind what the socket holds
        self._cleanup_soon()

    def _drop_queue(self) -> None:
        self._out.clear()
        self._out_chars = 0
        self._roomy.set()

    @property
    def crowded(self) -> bool:
        """The send queue is more than half full (by messages or characters)."""
        return (len(self._out) > self.config.max_pending // 2
                or self._out_chars > self.config.max_pending_bytes // 2)

    async def room(self) -> None:
        """Wait until the send queue is at most half full, or the connection closed:
        what a long replay paces itself on, so that sending a task's whole log does
        not cut its own reader off (4008) however fast the reader reads."""
        while self.crowded and not self.closed:
            self._roomy.clear()
            await self._roomy.wait()

    def send_msg(self, message: dict[str, Any]) -> None:
        self.send(encode(message))

    def send_error(self, msg_id: Any, code: str, message: str, **extra: Any) -> None:
        self.send_msg({"type": "error", "id": msg_id, "code": code, "message": message,
                       **extra})

    @property
    def pending(self) -> int:
        return len(self._out)

    async def _send_loop(self) -> None:
        out = self._out
        send = self.websocket.send
        limit = self.state.max_batch_chars
        try:
            while True:
                if not out:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if len(out) == 1:
                    text = out.popleft()
                    self._out_chars -= len(text)
                else:
                    batch: list[str] = []
                    size = 2
                    while out and len(batch) < MAX_BATCH:
                        item = out[0]
                        if batch and size + len(item) + 1 > limit:
                            break
                        batch.append(out.popleft())
                        size += len(item) + 1
                    self._out_chars -= sum(map(len, batch))
                    text = batch[0] if len(batch) == 1 else "[" + ",".join(batch) + "]"
                if not self._roomy.is_set() and not self.crowded:
                    self._roomy.set()
                await send({"type": "websocket.send", "text": text})
        except asyncio.CancelledError:
            raise
        except Exception:
            # the peer went away: the receive loop sees the disconnect
            self.closed = True

    def _cleanup_soon(self) -> None:
        task = asyncio.ensure_future(self._cleanup())
        self.state.background.add(task)
        task.add_done_callback(self.state.background.discard)

    def _schedule_close(self, code: int, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.close(code, reason))

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with a code (also used by the hub for revocations)."""
        self.closed = True
        self._drop_queue()
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason[:120])

    # -- life ---------------------------------------------------------------------

    async def run(self) -> None:
        ws = self.websocket
        try:
            await ws.accept()
        except Exception:
            return
        self._sender = asyncio.create_task(self._send_loop(), name="conveyor-ws-send")
        self.state.connections.add(self)
        self.state.no_connections.clear()
        try:
            if not self.state.started:
                await self.close(CLOSE_GOING_AWAY, "hub not ready")
                return
            if not await self._authenticate_header():
                return
            await self._receive_loop()
        except Exception:
            log.exception("%r: connection failed", self)
            with contextlib.suppress(Exception):
                await self.close(1011, "internal error")
        finally:
            self.closed = True
            self._roomy.set()  # what waits for room (a paced replay or snapshot) ends
            self.state.connections.discard(self)
            await self._cleanup()
            if not self.state.connections:
                self.state.no_connections.set()
            if self._sender is not None:
                self._sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._sender

    async def _cleanup(self) -> None:
        if self.attached:
            self.hub.detach(self)
            self.attached = False
        for live in list(self.lives.values()):
            self.state.live.unsubscribe(live)
        self.lives.clear()
        for streams in list(self.streams.values()):
            for stream in streams:
                stream.close()
        self.streams.clear()
        subs = list(self.subs.values())
        self.subs.clear()
        for sub in subs:
            self.state.remote.unsubscribe(sub, "connection closed")

    async def _authenticate_header(self) -> bool:
        """Authenticate with the handshake's key if it has one (or the hub is insecure)."""
        key = key_from(self.websocket)
        if key is None and self.hub.credentials is not None:
            return True  # wait for hello
        return await self._login(key, None)

    async def _login(self, key: str | None, msg_id: Any) -> bool:
        try:
            cred = self.hub.authenticate(key, self.peer)
            self.credential = cred
            self.hub.attach(self)
        except AuthError as exc:
            self.send_error(msg_id, {401: "unauthorized", 403: "forbidden",
                                     429: "rate_limited"}.get(exc.status, "refused"),
                            exc.message)
            await self._flush_then_close(exc.code, exc.message)
            return False
        self.attached = True
        self.send_welcome(msg_id)
        if self.task_id is not None:
            self._watch_endpoint()
        return True

    def send_welcome(self, msg_id: Any) -> None:
        cred = self.credential
        config = self.config
        self.send_msg({
            "type": "welcome", "id": msg_id, "protocol": PROTOCOL_VERSION,
            "credential": cred.name, "admin": cred.admin, "publish": list(cred.publish),
            "subscribe": list(cred.subscribe), "read": list(cred.read),
            "limits": {"max_frame": config.max_frame, "max_pending": config.max_pending,
                       "max_pending_bytes": config.max_pending_bytes,
                       "max_rate": config.max_rate, "inline_payload": config.inline_payload,
                       "service_lease": config.service_lease,
                       "offer_timeout": config.offer_timeout},
        })

    async def _flush_then_close(self, code: int, reason: str) -> None:
        """Give queued messages (an error) a moment to leave, then close."""
        for _ in range(20):
            if not self._out:
                break
            await asyncio.sleep(0.005)
        await self.close(code, reason)

    def _watch_endpoint(self) -> None:
        assert self.task_id is not None
        try:
            level = _level_from_query(self.websocket.query_params.get("max_level"))
        except ProtocolError as exc:
            self.send_error(None, exc.code, exc.message)
            self._schedule_close(CLOSE_PROTOCOL, exc.message)
            return
        stream = TaskStream(self.state, self, None, "null", self.task_id, replay=True,
                            max_level=level, updates=True, wait=None, endpoint=True)
        self.streams.setdefault("null", []).append(stream)
        stream.start()

    def endpoint_done(self, forbidden: bool = False, missing: bool = False) -> None:
        """The task stream of ``/ws/tasks/{id}`` ended: close the socket."""
        if forbidden:
            self._schedule_close(CLOSE_FORBIDDEN, "forbidden")
        elif missing:
            self._schedule_close(CLOSE_NORMAL, "no such task")
        else:
            self._schedule_close(CLOSE_NORMAL, "task ended")

    # -- receiving ----------------------------------------------------------------

    async def _receive_loop(self) -> None:
        ws = self.websocket
        max_frame = self.config.max_frame
        loop = asyncio.get_running_loop()
        hello_deadline = loop.time() + HELLO_TIMEOUT
        while True:
            if self.attached:
                message = await ws.receive()
            else:
                remaining = hello_deadline - loop.time()
                try:
                    async with asyncio.timeout(max(0.0, remaining)):
                        message = await ws.receive()
                except TimeoutError:
                    self.send_error(None, "unauthorized", "no hello within "
                                    f"{HELLO_TIMEOUT:g} s")
                    await self._flush_then_close(CLOSE_AUTH, "no credential")
                    return
            if message["type"] == "websocket.disconnect":
                return
            if self.closed:
                continue
            self.last_seen = time.monotonic()
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                if len(data) > max_frame:
                    await self.close(CLOSE_TOO_BIG, f"message over {max_frame} bytes")
                    return
                if not self._take(1):
                    return
                await self._bad_message(None, "binary_frame",
                                        "binary frames are not supported: send JSON text")
                continue
            if len(text) > max_frame or (len(text) * 4 > max_frame
                                         and len(text.encode("utf-8", "surrogatepass"))
                                         > max_frame):
                await self.close(CLOSE_TOO_BIG, f"message over {max_frame} bytes")
                return
            try:
                parsed = parse_frame(text)
            except ProtocolError as exc:
                if not self._take(1):
                    return
                await self._bad_message(None, exc.code, exc.message)
                continue
            items = parsed if isinstance(parsed, list) else [parsed]
            if not self._take(max(1, len(items))):
                return
            if not items:
                await self._bad_message(None, "bad_message", "an empty array holds no message")
                continue
            for item in items:
                if self.closed:
                    break
                await self._handle(item)

    def _take(self, n: int) -> bool:
        """Spend ``n`` tokens of the rate limit; close the connection when out of them."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        self._tokens -= n
        if self._tokens >= 0:
            return True
        log.warning("%r: over %g messages/s: closing", self, self._rate)
        self.closed = True
        self._drop_queue()
        self._schedule_close(CLOSE_RATE, f"rate limit of {self._rate:g} messages/s exceeded")
        return False

    async def _bad_message(self, msg_id: Any, code: str, message: str) -> None:
        self.send_error(msg_id, code, message)
        now = time.monotonic()
        bad = self._bad
        bad.append(now)
        while bad and bad[0] < now - BAD_MESSAGE_WINDOW:
            bad.popleft()
        if len(bad) > BAD_MESSAGE_BUDGET:
            self.closed = True
            await self._flush_then_close(CLOSE_PROTOCOL, "too many bad messages")

    async def _handle(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            await self._bad_message(None, "bad_message", "a message must be a JSON object")
            return
        msg_id = msg.get("id", _MISSING)
        kind = msg.get("type")
        if msg_id is _MISSING or not _valid_id(msg_id):
            await self._bad_message(None, "bad_message",
                                    "every message needs an 'id': a string of at most 100 "
                                    "characters or an integer")
            return
        if not isinstance(kind, str):
            await self._bad_message(msg_id, "bad_message", "every message needs a 'type'")
            return
        if not self.attached:
            if kind != "hello":
                await self._bad_message(msg_id, "unauthorized",
                                        "authenticate first: send a 'hello' with your key")
                return
            key = msg.get("key")
            if (not isinstance(key, str) or not key) and self.hub.credentials is not None:
                message = "a 'hello' needs your key: {\"type\": \"hello\", \"id\": 1, \"key\": ...}"
                self.send_error(msg_id, "unauthorized", message)
                await self._flush_then_close(CLOSE_AUTH, message)
                self.closed = True
                return
            if await self._login(key, msg_id):
                return
            self.closed = True
            return
        handler = self.handlers.get(kind)
        if handler is None:
            await self._bad_message(msg_id, "unknown_type", f"unknown message type {kind[:50]!r}")
            return
        try:
            result = handler(self, msg)
            if result is not None:
                await result
        except ProtocolError as exc:
            if exc.code in ("bad_message", "unknown_type"):
                await self._bad_message(msg_id, exc.code, exc.message)
            else:
                self.send_error(msg_id, exc.code, exc.message, **exc.extra)
        except QueryError as exc:
            self.send_error(msg_id, "bad_filter", str(exc), path=exc.path)
        except TaskNotFound as exc:
            self.send_error(msg_id, "not_found", str(exc), task_id=exc.task_id)
        except InvalidTransition as exc:
            self.send_error(msg_id, "invalid_transition", str(exc))
        except ValidationError as exc:
            self.send_error(msg_id, "invalid", str(exc))
        except ConveyorError as exc:
            self.send_error(msg_id, "refused", str(exc))
        except Exception:
            log.exception("%r: message %s failed", self, kind)
            self.send_error(msg_id, "internal", "the hub could not handle this message")

    # -- shared checks ------------------------------------------------------------

    def require_new_id(self, key: str) -> None:
        """Refuse a request that would open something under the id (``key``, encoded) of a
        stream, live query or subscription that is still open."""
        if key in self.streams or key in self.lives or key in self.subs:
            raise ProtocolError("duplicate_id", "a stream, live query or subscription with "
                                                "this id is open already")

    def require_read(self, task: Task) -> None:
        """Refuse a task the credential may not read; the error does not name its action
        (which the client need not know, and may not learn)."""
        if not self.credential.can_read(task.action):
            raise ProtocolError("forbidden", f"credential {self.credential.name!r} may not read "
                                             f"task {task.id}")


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(1 << 53) <= value <= (1 << 53)
    return isinstance(value, str) and len(value) <= 100


def _level_from_query(value: Any) -> Any:
    from ..model import LogLevel

    if value is None:
        return LogLevel.DEBUG
    try:
        return LogLevel.parse(value)
    except ValidationError as exc:
        raise ProtocolError("bad_message", str(exc)) from None


# -- message handlers ---------------------------------------------------------------


def _ping(conn: Connection, msg: dict[str, Any]) -> None:
    conn.send_msg({"type": "pong", "id": msg["id"], "ts": time.time()})


def _hello_again(conn: Connection, msg: dict[str, Any]) -> None:
    if conn.hub.credentials is None:
        # an insecure hub takes every client (as an admin) and welcomed it at once; a
        # client that says hello anyway (as browsers must elsewhere) is welcomed again,
        # its key not read
        conn.send_welcome(msg["id"])
        return
    raise ProtocolError("bad_message", "already authenticated")


_PUBLISH_KEYS = frozenset({"type", "id", "action", "payload", "options", "delivery", "tasks",
                           "wait", "timeout", "default", "updates"})
_ITEM_KEYS = frozenset({"action", "payload", "options", "delivery"})


def _task_item(conn: Connection, raw: Any, where: str, own: frozenset[str]) -> dict[str, Any]:
    """One task of a publish (``own``: the keys of the object it sits in)."""
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", f"{where} must be an object")
    # an option of add beside "options" (as the REST body has them) would be ignored
    # as an unknown field: say where it belongs instead
    misplaced = sorted(k for k in raw if k in ADD_OPTIONS and k not in own)
    if misplaced:
        names = ", ".join(repr(k) for k in misplaced)
        raise ProtocolError("bad_message",
                            f"{where}: put {names} inside 'options' (the options of add)")
    action = raw.get("action")
    if not isinstance(action, str):  # an empty name is invalid below, as in subscribe
        raise ProtocolError("bad_message", f"{where}.action must be a string (the action's name)")
    options = raw.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ProtocolError("bad_message", f"{where}.options must be an object")
    options = dict(options)
    delivery = raw.get("delivery", options.pop("delivery", None))
    if delivery is not None:
        if delivery not in ("one", "all"):
            raise ProtocolError("bad_message", f"{where}.delivery must be 'one' or 'all'")
        tags = options.get("tags")
        if tags is None:
            tags = {}
        if not isinstance(tags, dict):
            raise ProtocolError("invalid", f"{where}.options.tags must be an object")
        options["tags"] = {**tags, "delivery": delivery}
    try:
        check_action(action)  # a bad name is invalid, not forbidden
    except ValidationError as exc:
        raise ProtocolError("invalid", f"{where}.action: {exc}") from None
    if not conn.credential.can_publish(action):
        raise ProtocolError("forbidden", f"credential {conn.credential.name!r} may not publish "
                                         f"action {action[:200]!r}")
    return {"action": action, "payload": raw.get("payload"), **options}


_REPLY_PER_TASK = 1_000
"""Characters a task takes in a ``published`` reply besides its payload (its
fields, tags and options: about 700), for the check that the reply fits."""


async def _publish(conn: Connection, msg: dict[str, Any]) -> None:
    state = conn.state
    msg_id = msg["id"]
    raw_tasks = msg.get("tasks")
    if raw_tasks is not None:
        if not isinstance(raw_tasks, list) or not raw_tasks:
            raise ProtocolError("bad_message", "'tasks' must be a non-empty list")
        if len(raw_tasks) > 10_000:
            raise ProtocolError("bad_message", "at most 10000 tasks per publish")
        beside = sorted(_ITEM_KEYS & msg.keys())
        if beside:  # they would be ignored
            raise ProtocolError("bad_message", f"'tasks' comes instead of "
                                               f"{', '.join(repr(k) for k in beside)}: each "
                                               "task of the list has its own")
        items = [_task_item(conn, t, f"tasks[{i}]", _ITEM_KEYS) for i, t in enumerate(raw_tasks)]
        several = True
    else:
        items = [_task_item(conn, msg, "publish", _PUBLISH_KEYS)]
        several = False
    wait = opt_bool(msg, "wait", False)
    timeout = opt_number(msg, "timeout", None, maximum=MAX_SECONDS)
    updates = opt_bool(msg, "updates", True)
    wait_spec = None
    if wait or timeout is not None or "default" in msg:
        wait_spec = WaitSpec(timeout, "default" in msg, msg.get("default"))
    key = encode_id(msg_id)
    if updates or wait_spec is not None:
        conn.require_new_id(key)  # before anything is added
    # the reply holds every task: one that would not fit the send queue is refused
    # before anything is added (queued, it cut the reader off with the tasks stored
    # and no reply, so that a retry added them twice)
    reply_size = sum(len(_json.dumps(item.get("payload"))) + _REPLY_PER_TASK
                     for item in items)
    if not conn.has_room(reply_size):
        raise ProtocolError("too_large", f"the reply to this publish (about {reply_size:,} "
                                         "characters, every task) would not fit in the send "
                                         "queue (max_pending_bytes, less what waits to be "
                                         "sent): publish fewer tasks at once; nothing was added")
    # read before the add: nothing may run between the add and its streams (below), or
    # the first updates of a task a service picks up at once would be missed
    unserved = await state.hub.unserved(item["action"] for item in items)
    streams: list[TaskStream] = []

    def listen(results: list[AddResult]) -> None:
        # the streams take the tasks' events from before the add lets them out: a
        # task a service runs at once may start, and end, before the add returns
        if updates or wait_spec is not None:
            for result in results:
                stream = TaskStream(state, conn, msg_id, key, result.task.id, replay=False,
                                    updates=updates, wait=wait_spec, initial=result.task,
                                    recheck=not result.created)
                stream.listen()
                streams.append(stream)

    try:
        try:
            added = await add_as(state.app, conn.credential, items, listen)
        except BaseException:
            for stream in streams:
                stream.close()
            raise
    except ValidationError as exc:
        raise ProtocolError("invalid", str(exc)) from None
    except KeyHeld as exc:
        raise ProtocolError("unique_key_held", str(exc)) from None
    tasks = [task for task, _ in added]
    reply: dict[str, Any] = {"type": "published", "id": msg_id}
    if several:
        reply["tasks"] = [state.task_json(t) for t in tasks]
        reply["created"] = [created for _, created in added]
    else:
        reply["task"] = state.task_json(tasks[0])
        reply["created"] = added[0][1]
    waiting = {t.action for t in tasks if not t.terminal}
    reply["unserved"] = [action for action in unserved if action in waiting]
    conn.send_msg(reply)
    state.remote.wake()
    if not (updates or wait_spec is not None):
        return
    conn.streams.setdefault(key, []).extend(streams)
    for stream in streams:
        stream.start()


async def _wait(conn: Connection, msg: dict[str, Any]) -> None:
    task_id = req_str(msg, "task_id", limit=100)
    timeout = opt_number(msg, "timeout", None, maximum=MAX_SECONDS)
    key = encode_id(msg["id"])
    stream = TaskStream(conn.state, conn, msg["id"], key, task_id, replay=False, updates=False,
                        wait=WaitSpec(timeout, "default" in msg, msg.get("default")),
                        with_task=opt_bool(msg, "task", False))
    conn.streams.setdefault(key, []).append(stream)
    stream.start()


async def _watch(conn: Connection, msg: dict[str, Any]) -> None:
    task_id = req_str(msg, "task_id", limit=100)
    level = _level_from_query(msg.get("max_level"))
    logs = opt_bool(msg, "logs", True)
    key = encode_id(msg["id"])
    conn.require_new_id(key)
    stream = TaskStream(conn.state, conn, msg["id"], key, task_id, replay=logs, updates=True,
                        wait=None, max_level=level, logs=logs)
    conn.streams.setdefault(key, []).append(stream)
    stream.start()


def _unwatch(conn: Connection, msg: dict[str, Any]) -> None:
    target = msg.get("stream")
    if not _valid_id(target):
        raise ProtocolError("bad_message", "'stream' must be the id of a watch or a publish "
                                           "(a string or an integer)")
    key = encode_id(target)
    streams = conn.streams.pop(key, None)
    if streams is None:
        raise ProtocolError("not_found", f"no open stream with id {target!r}")
    for stream in streams:
        stream.close()
    conn.send_msg({"type": "ok", "id": msg["id"]})


async def _get(conn: Connection, msg: dict[str, Any]) -> None:
    from ..model import LogLevel

    task_id = req_str(msg, "task_id", limit=100)
    logs = opt_bool(msg, "logs", False)
    task = await conn.state.app.get(task_id)
    conn.require_read(task)
    data = conn.state.task_json(task)
    if logs:
        level = _level_from_query(msg.get("max_level")) if msg.get("max_level") else \
            LogLevel.DEBUG
        records = await conn.state.app.storage.read_logs(task_id, 0, level)
        data["logs"] = [r.to_json() for r in records]
    text = encode({"type": "task", "id": msg["id"], "task": data})
    if not conn.fits(text):  # queued, it would cut its own reader off (4008)
        raise ProtocolError(
            "too_large", f"the task with its log is {len(text):,} characters, more than the "
            "send queue holds (max_pending_bytes, less what waits to be sent): follow its "
            "log with watch (replayed at the reader's pace) or read it in pages over REST "
            "(GET /api/v1/tasks/{id}/logs)")
    conn.send(text)


async def _abort(conn: Connection, msg: dict[str, Any]) -> None:
    task_id = req_str(msg, "task_id", limit=100)
    # "" and a reason over MAX_ABORT_REASON are refused by app.abort (`invalid`, as over
    # REST); past the frame's bound on any string, the message is malformed
    reason = opt_str(msg, "reason")
    reason = "aborted" if reason is None else reason
    if not conn.credential.admin:
        raise ProtocolError("forbidden", f"credential {conn.credential.name!r} may not abort "
                                         "tasks: aborting needs the admin right")
    task = await conn.state.app.abort(task_id, reason)
    conn.send_msg({"type": "task", "id": msg["id"], "task": conn.state.task_json(task)})


async def _live(conn: Connection, msg: dict[str, Any]) -> None:
    key = encode_id(msg["id"])
    conn.require_new_id(key)
    if len(conn.lives) >= 100:
        raise ProtocolError("too_many", "at most 100 live queries per connection")
    if "skip" in msg:  # a window starts at the first task: refused, not ignored
        raise ProtocolError("bad_message", "a live query takes no skip (its window is the "
                                           "first `limit` tasks of its sort): narrow the "
                                           "filter instead, or page with a find")
    live = await conn.state.live.subscribe(conn, msg["id"], key, msg.get("filter"),
                                           msg.get("sort"), msg.get("limit"), msg.get("fields"))
    if live is not None:
        conn.lives[key] = live


def _unlive(conn: Connection, msg: dict[str, Any]) -> None:
    target = msg.get("live")
    key = encode_id(target)
    live = conn.lives.pop(key, None)
    if live is None:
        raise ProtocolError("not_found", f"no live query with id {target!r}")
    conn.state.live.unsubscribe(live)
    conn.send_msg({"type": "ok", "id": msg["id"]})


def _remote(name: str) -> Handler:
    def handle(conn: Connection, msg: dict[str, Any]) -> Awaitable[None] | None:
        return conn.state.remote.handle(conn, name, msg)

    return handle


_HANDLERS: dict[str, Handler] = {
    "hello": _hello_again,
    "ping": _ping,
    "publish": _publish,
    "wait": _wait,
    "get": _get,
    "abort": _abort,
    "watch": _watch,
    "unwatch": _unwatch,
    "live": _live,
    "unlive": _unlive,
    **{name: _remote(name) for name in (
        "subscribe", "unsubscribe", "pickup", "refuse", "fetch", "update", "log", "emit",
        "return", "drop", "fail", "retry", "reschedule", "heartbeat")},
}
