"""Running the hub with uvicorn: the listening socket is bound first (so that
``port=0`` gives the hub its real port), and the stop is either uvicorn's own
signal handling or an event set by the caller. On the way down the hub closes
its WebSockets itself (1001, going away) before uvicorn would (1012)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import uvicorn

from ._config import HubConfig
from ._guard import guarded_protocol

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ..app import Conveyor
    from ._credentials import CredentialStore
    from ._hub import Hub

__all__ = ["bind", "redact_access_log", "run_hub", "server_config"]

_SECRET_PARAM = re.compile(
    r"([?&](?:key|api_key|apikey|token|access_token|password|secret)=)[^&#\s]*", re.IGNORECASE)

# a conveyor key under any parameter name (?k%65y=..., ?auth=...)
_KEY_SHAPED = re.compile(r"cvk(?:_|%5f)[^&#\s]*", re.IGNORECASE)


class _RedactSecrets(logging.Filter):
    """Blanks the values of secret-looking query parameters (``?key=...``) in uvicorn's
    log lines (the access log of HTTP requests, and the ``uvicorn.error`` lines of
    WebSocket handshakes, ``"WebSocket /ws?key=..." [accepted]``): the hub reads keys
    only from headers, but a client may still put one in a URL, and that URL must
    not be written to the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_secretive(a) for a in args):
            record.args = tuple(_redacted(a) if isinstance(a, str) and _secretive(a) else a
                                for a in args)
        return True


def _secretive(value: object) -> bool:
    return isinstance(value, str) and ("=" in value or "cvk" in value.lower())


def _redacted(text: str) -> str:
    return _KEY_SHAPED.sub("cvk_***", _SECRET_PARAM.sub(r"\1***", text))


class _ClientFaultsPlain(logging.Filter):
    """A client's text frame that is not UTF-8 is closed by the WebSocket server with
    1007, as RFC 6455 says, before the hub reads it; uvicorn logged it as an error with
    a traceback, and a client without a key could fill the log with them. One warning
    line each now."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UnicodeDecodeError):
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def redact_access_log() -> None:
    """Install the filter that keeps keys given in URLs out of uvicorn's logs (its
    access log, and its ``uvicorn.error`` logger, where WebSocket handshakes go),
    and the one that logs a client's frame that is not UTF-8 without a traceback."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactSecrets) for f in logger.filters):
            logger.addFilter(_RedactSecrets())
    errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _ClientFaultsPlain) for f in errors.filters):
        errors.addFilter(_ClientFaultsPlain())


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (``port`` 0: a free one). An
    address that cannot be used is an :class:`OSError` that names it (``cannot listen
    on 127.0.0.1:8765: Address already in use``; the system's words alone named
    neither the host nor the port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise _cannot_listen(exc, host, port) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise _cannot_listen(exc, host, port) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _cannot_listen(exc: OSError, host: str, port: int) -> OSError:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return OSError(exc.errno, f"cannot listen on {shown}:{port}: {exc.strerror or exc}")


def server_config(asgi: Starlette, config: HubConfig, *,
                  log_level: str = "info") -> uvicorn.Config:
    """uvicorn's settings for the hub ``asgi`` built with ``config``: its WebSocket
    frame limit, and HTTP requests whose line and headers are bounded in size and
    time (:mod:`conveyor.hub._guard`)."""
    return uvicorn.Config(asgi, host=config.host, port=config.port,
                          ws_max_size=config.ws_max_size, log_level=log_level,
                          lifespan="on", http=guarded_protocol(config))


async def run_hub(app: Conveyor | str, config: HubConfig, *,
                  credentials: CredentialStore | None = None,
                  stop: asyncio.Event | None = None, force: asyncio.Event | None = None,
                  bound: Callable[[HubConfig], None] | None = None) -> None:
    """Serve the hub until stopped. Without ``stop``, uvicorn handles SIGINT and
    SIGTERM itself (and raises them again once stopped); with it, the hub stops
    gracefully when ``stop`` is set, and at once (open requests not awaited) when
    ``force`` is set too. ``bound`` is called with the settings holding the real
    port once the socket is bound, before the hub starts."""
    from . import create_hub

    sock = bind(config.host, config.port)
    try:
        config = replace(config, port=int(sock.getsockname()[1]))
        if bound is not None:
            bound(config)
        asgi = create_hub(app, config, credentials=credentials)
        settings = server_config(asgi, config)
        redact_access_log()  # after the Config, which sets uvicorn's logging up
        if stop is None:
            await _serve(_HubServer(settings, asgi.state.hub), sock)
            return
        server = _Server(settings, asgi.state.hub)
        watch = asyncio.ensure_future(_stop_on(server, stop, force))
        try:
            await _serve(server, sock)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
    finally:
        sock.close()


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    """Serve until the server stops. Cancelled, the server stops gracefully first (a
    second cancellation stops it at once), then the cancellation goes on: uvicorn's own
    ``serve`` cancelled midway would leave the hub's lifespan, its storage and its
    connections open behind it."""
    running = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(running)
    except asyncio.CancelledError:
        server.should_exit = True
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            server.force_exit = True
            await running
        raise


class _HubServer(uvicorn.Server):
    """uvicorn's server, letting the hub say goodbye to its WebSocket clients (close
    code 1001) before uvicorn closes the connections with its own code (1012)."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if not self.force_exit:
            await self.hub.going_away()
        await super().shutdown(sockets)


class _Server(_HubServer):
    """The hub's server without its own signal handlers (the caller has them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _stop_on(server: uvicorn.Server, stop: asyncio.Event,
                   force: asyncio.Event | None) -> None:
    await stop.wait()
    server.should_exit = True
    if force is not None:
        await force.wait()
        server.force_exit = True
