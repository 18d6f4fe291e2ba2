"""What the hub refuses before a request reaches a route.

- :class:`GuardedHttpTools`: uvicorn's HTTP/1.1 protocol (httptools) reads a
  request's head (request line and headers) without a bound of size or time: a
  client that never ends a header grows the server's memory, one that sends a
  line now and then holds a connection (and a file handle) for good. Here a head
  must be complete within ``HubConfig.max_head`` bytes (else ``431``) and
  ``HubConfig.head_timeout`` seconds of its first byte, or of the connection's
  opening for the first request (else ``408``); the connection is then closed.
- :class:`SameOrigin`: a hub without credentials (``--insecure``) takes every
  client as an admin, so any web page the user opens could drive it from their
  browser (a cross-site request, or a host name of the attacker's that resolves
  to 127.0.0.1: DNS rebinding). Such a hub refuses (``403``, WebSocket handshakes
  included) a request whose ``Origin`` is not the hub itself, and, listening on a
  loopback address, one whose ``Host`` is a name other than ``localhost`` or the
  host of its ``public_url``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ._config import HubConfig, is_loopback
from ._http import error_response

__all__ = ["GuardedHttpTools", "SameOrigin", "guarded_protocol"]

_END = b"\r\n\r\n"
LINGER = 2.0
"""Seconds a refused connection stays open, dropping what it gets, before it closes."""

BODY_STALL = 60.0
"""Seconds a request's body may stop coming before the hub answers ``408`` and closes
the connection (nginx's ``client_body_timeout``)."""


def _refusal(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


def guarded_protocol(config: HubConfig) -> type[HttpToolsProtocol]:
    """The HTTP protocol class of a hub with ``config``'s bounds."""
    return type("GuardedHttpTools", (GuardedHttpTools,),
                {"max_head": config.max_head, "head_timeout": config.head_timeout})


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on each request's head, on what a
    chunked body carries besides its data (chunk sizes, trailers), and on a body
    left unread by the answer."""

    max_head = 64 * 1024
    head_timeout = 10.0
    body_stall = BODY_STALL

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True     # reading a request's head (not a body, not idle)
        self._in_body = False    # reading a request's body
        self._heads = 0          # requests read whole
        self._dropping = False   # refused: what comes is dropped until the close
        self._head = 0           # the head's bytes read so far
        self._tail = b""         # its last 3 bytes (an end split across two reads)
        self._framing = 0        # bytes of the body read since its last data
        self._idle_after = False  # an answered request's body ended: idle once read
        self._close_after = False  # answered, not kept alive: closed once its body is read
        self._stall_timer: asyncio.TimerHandle | None = None  # a body that stopped coming
        # the time a head may take, or the unread rest of an answered request's body
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.head_timeout, self._late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_stall_timer()
        super().connection_lost(exc)

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._dropping:
            return
        counting, heads = self._in_head, self._heads
        if counting:
            room = self.max_head - self._head
            seen = self._tail + data
            if len(data) > room and _END not in seen[:len(self._tail) + room]:
                self._refuse(431, "Request Header Fields Too Large", "too_large",
                             f"the request's line and headers are over {self.max_head} bytes")
                return
            if self._head_timer is None and not self._responding():
                self._head_timer = self.loop.call_later(self.head_timeout, self._late)
        if self._in_body:
            self._framing += len(data)
        super().data_received(data)
        if counting and self._in_head and self._heads == heads:  # the same head goes on
            self._head += len(data)
            self._tail = seen[-3:]
        if self._in_body and self._framing > self.max_head:
            self._refuse(431, "Request Header Fields Too Large", "too_large",
                         f"a chunk size or the trailers are over {self.max_head} bytes")
        if self._idle_after:
            self._idle_after = False
            self._keep_alive_again()
        if self._in_body and not self._dropping:
            self._body_came()

    def _keep_alive_again(self) -> None:
        """The rest of an answered request's body came: the connection is idle, and
        closed after uvicorn's keep-alive, as after any answer. (The body's bytes
        stopped that timer, and no answer was left to start it again: a client that
        went quiet then held the connection for good.)"""
        cycle = self.cycle
        if (self.transport.is_closing() or self.pipeline or self.timeout_keep_alive_task
                is not None or (cycle is not None and not cycle.response_complete)):
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body, self._framing = True, 0
        self._stop_head_timer()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not an upgrade
            cycle.transport = _CycleTransport(self, cycle)  # type: ignore[assignment]
        self._body_came()

    def _answered_closing(self, cycle: RequestResponseCycle) -> None:
        """``cycle``'s answer, not kept alive, is out: close. When it was sent before
        the request's body was read whole (a refused key: 401, a body over the limit:
        413), the rest is first read and dropped, as on a kept-alive connection (within
        head_timeout of the answer, see :meth:`on_response_complete`): closed with
        unread data, the connection was reset under a client still sending (nginx,
        which sends ``Connection: close`` upstream, answered 502), which then lost the
        answer."""
        if (cycle is self.cycle and cycle.response_complete and self._in_body
                and not self.transport.is_closing()):
            self._close_after = True
            if self.transport.can_write_eof():
                self.transport.write_eof()  # the answer is whole: no more is coming
            return
        self.transport.close()

    def _body_came(self) -> None:
        """A request's body is awaited: it must go on coming (a client with a key that
        stopped sending one held its connection and its request for good). An
        answered request's rest is timed by the head timer instead."""
        self._stop_stall_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self._stall_timer = self.loop.call_later(self.body_stall, self._stalled)

    def _stop_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        if self._in_body and not (self.cycle is not None and self.cycle.response_started):
            self._refuse(408, "Request Timeout", "timeout",
                         f"the request's body stopped coming for {self.body_stall:g} s")

    def on_body(self, body: bytes) -> None:
        self._framing = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._idle_after = self.cycle is not None and self.cycle.response_complete
        self._stop_stall_timer()
        super().on_message_complete()
        self._in_head, self._head, self._tail = True, 0, b""
        self._in_body = False
        self._heads += 1
        self._stop_head_timer()  # a body that had to come in time came
        if self._close_after:  # the rest of an answered request's body, read whole
            self._dropping = True
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self._dropping:  # data after the request that closes the connection
            self.transport.close()
            return
        super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._in_body and self.cycle is not None and self.cycle.response_complete:
            # answered before its body was read whole (a refused key): the rest is read
            # and dropped, but must come within head_timeout (a client trickling it
            # would hold the connection for good)
            self._stop_head_timer()
            self._head_timer = self.loop.call_later(self.head_timeout, self._late)
        elif self._in_head and self._head and self._head_timer is None:
            # the next request's head began while this response was going out
            self._head_timer = self.loop.call_later(self.head_timeout, self._late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _late(self) -> None:
        self._head_timer = None
        if self._responding():  # timed again from the response's end
            return
        if self._in_head:
            self._refuse(408, "Request Timeout", "timeout",
                         f"the request's line and headers did not come within "
                         f"{self.head_timeout:g} s")
        elif self._in_body:  # the unread rest of an answered request's body
            self._refuse(0, "", "", "")

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        """Answer ``status`` (none when 0) and close. A response going out ends first
        (the connection is not kept alive after it); else what the client still sends
        is read and dropped for a moment (closed with unread data, the connection
        would be reset before the client read the answer)."""
        self._in_head = self._in_body = False
        self._stop_head_timer()
        self._stop_stall_timer()
        if self.transport.is_closing():
            return
        self._dropping = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                cycle.keep_alive = False  # closed once the response is out
                return
            # the app, still reading the request, sees the client gone; its answer
            # is not sent, this one is
            cycle.disconnected = True
            cycle.message_event.set()
        if status:
            self.transport.write(_refusal(status, reason, code, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)


class _CycleTransport:
    """The transport a request's cycle writes its answer to: the connection's, but for
    the close after an answer that is not kept alive (see
    :meth:`GuardedHttpTools._answered_closing`)."""

    def __init__(self, protocol: GuardedHttpTools, cycle: RequestResponseCycle) -> None:
        self._protocol = protocol
        self._cycle = cycle
        self._transport = protocol.transport

    def close(self) -> None:
        self._protocol._answered_closing(self._cycle)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class SameOrigin:
    """ASGI middleware of a hub without credentials: refuses cross-origin requests and,
    on a loopback address, host names that are not its own (see the module's text)."""

    def __init__(self, app: ASGIApp, config: HubConfig) -> None:
        self.app = app
        self.loopback = is_loopback(config.host)
        names = {"localhost"}
        self.public_origin: tuple[str, str, int] | None = None
        if config.public_url:
            public = urlsplit(config.public_url)
            # behind a proxy that rewrites Host, its pages' origin is the public URL's
            self.public_origin = _origin(public.scheme, public.netloc)
            names.add(self.public_origin[1])
        self.names = frozenset(names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            why = self._refused(dict(scope["headers"]))
            if why is not None:
                await _deny(scope, receive, send, why)
                return
        await self.app(scope, receive, send)

    def _refused(self, headers: dict[bytes, bytes]) -> str | None:
        try:
            return self._check(headers)
        except ValueError as exc:  # a Host or Origin urlsplit cannot read ("[::1")
            return f"malformed Host or Origin header: {exc}"

    def _check(self, headers: dict[bytes, bytes]) -> str | None:
        given = headers.get(b"host")
        host = (given or b"").decode("latin-1").strip().lower()
        if given is not None and not _HOST.fullmatch(host):
            # empty, or what no browser sends ("evil.com:80@127.0.0.1" read as a user
            # before an address): refused rather than read one way or another
            raise ValueError(f"{host!r} is not a host and port")
        if self.loopback and host:
            name = _origin("http", host)[1]
            if not (name in self.names or name.endswith(".localhost") or _is_ip(name)):
                return (f"host {host!r} refused: a hub without credentials on a loopback "
                        f"address answers only to its address, localhost and the host of "
                        f"its public_url (a name of someone else's resolving to it is DNS "
                        f"rebinding)")
        origin = headers.get(b"origin")
        if origin is not None:
            parts = urlsplit(origin.decode("latin-1").strip())
            seen = _origin(parts.scheme, parts.netloc)
            if seen != self.public_origin and (
                    parts.scheme.lower() not in ("http", "https")
                    or seen != _origin(parts.scheme, host)):
                return (f"cross-origin request refused: a hub without credentials "
                        f"answers only pages it serves itself (origin "
                        f"{origin.decode('latin-1')!r}, host {host!r})")
        return None


_HOST = re.compile(r"(?:\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(?::[0-9]{1,5})?", re.ASCII)
"""A ``Host`` header as browsers send it: a name or address, and a port."""


def _origin(scheme: str, netloc: str) -> tuple[str, str, int]:
    """(scheme, host name, port) of ``scheme://netloc``, compared as browsers do: no
    user, the name in lower case without a final dot, the scheme's default port when
    none is given. ``ValueError`` when it cannot be read."""
    scheme = scheme.lower()
    parts = urlsplit(f"{scheme}://{netloc}")
    port = parts.port or {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").rstrip("."), port


async def _deny(scope: Scope, receive: Receive, send: Send, why: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})
        return
    await error_response(403, "forbidden", why)(scope, receive, send)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
