"""What the hub refuses before a request reaches a route (from a security audit):
request heads without a bound of size or time (memory and file handles of the
hub, taken without a key), and, on a hub without credentials, requests from
other origins and host names (a web page driving the hub from the browser of the
person who runs it, DNS rebinding)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conveyor import Conveyor
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore

from .conftest import RunningHub, hub_db_url, running_hub


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[RunningHub]:
    config = HubConfig(port=0, insecure=True, head_timeout=0.5, max_head=4096)
    async with running_hub(Conveyor(hub_db_url(tmp_path)), config, None) as hub:
        yield hub


def _port(hub: RunningHub) -> int:
    return int(hub.url.rsplit(":", 1)[1])


def _exchange(port: int, parts: list[bytes], pause: float = 0.0,
              timeout: float = 10.0) -> bytes:
    """Send ``parts`` (``pause`` seconds apart) and read until the hub closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            for i, part in enumerate(parts):
                if i and pause:
                    sock.settimeout(pause)
                    try:  # the hub may answer and close before every part is sent
                        got = sock.recv(65536)
                    except TimeoutError:
                        got = b""
                    if got:
                        return got + _read_all(sock, timeout)
                    sock.settimeout(timeout)
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_all(sock, timeout)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk


async def test_a_head_over_max_head_is_refused_with_431(guarded: RunningHub) -> None:
    port = _port(guarded)
    endless = [b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: "] + [b"a" * 65536] * 64
    reply = await asyncio.to_thread(_exchange, port, endless)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]
    assert b'"too_large"' in reply
    # a head just under the bound, and a body far larger than it in the same read
    head = b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    body = b'{"action": "a", "payload": "' + b"x" * 200_000 + b'"}'
    pad = b"X-Pad: " + b"p" * (4096 - len(head) - 120) + b"\r\n"
    request = (head + pad + b"Content-Type: application/json\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n")
    assert len(request) <= 4096
    reply = await asyncio.to_thread(_exchange, port, [request + body])
    assert reply.startswith(b"HTTP/1.1 201 "), reply[:100]


async def test_a_head_that_does_not_come_in_time_is_refused_with_408(
        guarded: RunningHub) -> None:
    port = _port(guarded)
    loop = asyncio.get_running_loop()
    # silent, and a header line now and then (each sooner than head_timeout)
    for parts, pause in (([], 0.0), ([b"GET /healthz HTTP/1.1\r\n"] + [b"X-A: a\r\n"] * 40,
                                     0.2)):
        started = loop.time()
        reply = await asyncio.to_thread(_exchange, port, parts, pause)
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
        assert loop.time() - started < 8.0  # not the 40 x 0.2 s the trickle takes
    # an idle connection between two requests is kept-alive as before: its next head
    # may come later than head_timeout after the last answer
    async with httpx.AsyncClient() as client:
        assert (await client.get(guarded.url + "/healthz")).status_code == 200
        await asyncio.sleep(0.8)  # idle on purpose, longer than head_timeout
        assert (await client.get(guarded.url + "/healthz")).status_code == 200


async def test_an_insecure_hub_refuses_other_origins_and_host_names(
        guarded: RunningHub) -> None:
    task = await guarded.app.add("mail:send", {"to": "ann"})
    url = guarded.url
    port = _port(guarded)
    async with httpx.AsyncClient() as client:
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Origin": f"http://127.0.0.1:{port + 1}"},
                        {"Host": f"evil.example:{port}"},
                        {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}):
            for method, path in (("GET", "/api/v1/tasks"),
                                 ("POST", f"/api/v1/tasks/{task.id}/abort")):
                got = await client.request(method, url + path, headers=headers)
                assert got.status_code == 403, (headers, path)
                assert got.json()["error"]["code"] == "forbidden"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"ws://127.0.0.1:{port}/ws", additional_headers={
                        k: v for k, v in headers.items() if k != "Origin"},
                        origin=headers.get("Origin")):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 403
        assert (await guarded.app.get(task.id)).status.value == "queued"
        # its own pages, clients without an Origin, localhost and addresses are served
        for headers in ({}, {"Origin": url}, {"Host": f"localhost:{port}"},
                        {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
                        {"Host": f"[::1]:{port}"}):
            got = await client.get(url + "/api/v1/tasks", headers=headers)
            assert got.status_code == 200, headers
        async with connect(f"ws://127.0.0.1:{port}/ws", origin=url) as ws:  # type: ignore[arg-type]
            assert '"welcome"' in str(await ws.recv())


async def test_a_hub_with_credentials_takes_keys_from_any_origin(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    _, key = store.add("admin", admin=True)
    config = HubConfig(port=0, credentials_path=str(store.path))
    async with (running_hub(Conveyor(hub_db_url(tmp_path)), config, store) as hub,
                httpx.AsyncClient() as client):
        got = await client.get(hub.url + "/api/v1/tasks", headers={
            "Origin": "http://evil.example", "Authorization": f"Bearer {key}"})
        assert got.status_code == 200
        got = await client.get(hub.url + "/api/v1/tasks",
                               headers={"Origin": "http://evil.example"})
        assert got.status_code == 401


async def test_a_body_left_unread_by_the_answer_is_not_read_on(tmp_path: Path) -> None:
    """A request refused before its body was read (no key: 401) kept its connection
    while the client trickled the rest of a 100 MB body, a byte now and then."""
    store = CredentialStore(tmp_path / "credentials.json")
    config = HubConfig(port=0, credentials_path=str(store.path), head_timeout=1.0)
    async with running_hub(Conveyor(hub_db_url(tmp_path)), config, store) as hub:
        head = (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                b"application/json\r\nContent-Length: 100000000\r\n\r\n{")
        reply, closed = await asyncio.to_thread(_trickle_after_answer, _port(hub), head)
        assert reply.startswith(b"HTTP/1.1 401 "), reply[:100]
        assert closed, "the hub kept reading the body of a request it had answered"


def _trickle_after_answer(port: int, head: bytes) -> tuple[bytes, bool]:
    """Send ``head``, read the answer, then go on sending a byte every 0.2 s for up to
    15 s (more than uvicorn's keep-alive, which each byte restarts): whether the hub
    closed the connection meanwhile."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        reply = sock.recv(65536)
        sock.settimeout(0.2)
        for _ in range(75):
            try:
                sock.sendall(b" ")
                if sock.recv(65536) == b"":
                    return reply, True
            except TimeoutError:
                continue
            except OSError:  # reset: closed as well
                return reply, True
        return reply, False


async def test_chunk_trailers_are_bounded_like_headers(guarded: RunningHub) -> None:
    head = (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = b'{"action": "a:b", "payload": 1}'
    parts = [head + hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\nX-T: "]
    parts += [b"a" * 65536] * 64
    reply = await asyncio.to_thread(_exchange, _port(guarded), parts)
    assert reply.startswith(b"HTTP/1.1 431 ") or reply == b"", reply[:100]
    assert await guarded.app.count({"action": "a:b"}) == 0


async def test_a_stray_line_end_during_a_long_answer_does_not_cut_it(
        guarded: RunningHub) -> None:
    """A CRLF after a request (which servers should ignore) started the head timer;
    firing during a long-poll wait, it closed the connection and lost the answer."""
    task = await guarded.app.add("w:x", 1)
    request = (f"GET /api/v1/tasks/{task.id}/wait?timeout=1.5 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Connection: close\r\n\r\n").encode()
    reply = await asyncio.to_thread(_exchange, _port(guarded), [request, b"\r\n"], 0.1)
    assert reply.startswith(b"HTTP/1.1 202 "), reply[:100]


async def test_malformed_host_or_origin_is_refused_not_a_server_error(
        tmp_path: Path) -> None:
    config = HubConfig(port=0, insecure=True, public_url="https://hub.example.com")
    async with (running_hub(Conveyor(hub_db_url(tmp_path)), config, None) as hub,
                httpx.AsyncClient() as client):
        for headers in ({"Host": "[::1"}, {"Origin": "http://[::1"}):
            got = await client.get(hub.url + "/api/v1/tasks", headers=headers)
            assert got.status_code == 403, headers
        # behind a proxy that rewrites Host: pages of the public URL are its own
        got = await client.get(hub.url + "/api/v1/tasks", headers={
            "Host": "127.0.0.1:8765", "Origin": "https://hub.example.com"})
        assert got.status_code == 200
        # origins compared as browsers write them: default ports, case, a final dot
        for host, origin in (("hub.example.com:443", "https://hub.example.com"),
                             ("127.0.0.1:80", "http://127.0.0.1"),
                             ("LOCALHOST.:8765", "http://localhost:8765")):
            got = await client.get(hub.url + "/api/v1/tasks",
                                   headers={"Host": host, "Origin": origin})
            assert got.status_code == 200, (host, origin)
    config = HubConfig(port=0, insecure=True, public_url="https://hub.example.com:443/c/")
    async with (running_hub(Conveyor(hub_db_url(tmp_path, "b.db")), config, None) as hub,
                httpx.AsyncClient() as client):
        got = await client.get(hub.url + "/api/v1/tasks", headers={
            "Host": "127.0.0.1:8765", "Origin": "https://hub.example.com"})
        assert got.status_code == 200


async def test_a_chunked_upload_of_tiny_chunks_is_taken(guarded: RunningHub) -> None:
    """Chunk sizes count against max_head only between two pieces of data: a client
    streaming its JSON a few bytes at a time was cut off past 64 KB of body."""
    payload = [{"i": i} for i in range(5000)]

    def pieces() -> Iterator[bytes]:
        for piece in json.JSONEncoder().iterencode({"action": "c:x", "payload": payload}):
            yield piece.encode()

    async with httpx.AsyncClient() as client:
        got = await asyncio.to_thread(lambda: httpx.post(
            guarded.url + "/api/v1/tasks", content=pieces(),
            headers={"Content-Type": "application/json"}, timeout=30))
        assert got.status_code == 201, got.text
        assert (await client.get(guarded.url + "/healthz")).status_code == 200


async def test_a_connection_answered_early_is_kept_for_the_next_request(
        guarded: RunningHub) -> None:
    """A request answered before its body was read (a 404 here) and whose body then
    came at once: the connection was half-closed after the answer, and a client that
    reused it lost its next request."""
    body = b'{"action": "k:x", "payload": 1}'
    first = (b"POST /api/v1/nope HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
             b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    second = (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
              b"Content-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)

    def exchange() -> bytes:
        with socket.create_connection(("127.0.0.1", _port(guarded)), timeout=10) as sock:
            sock.sendall(first)
            answer = sock.recv(65536)  # the 404, before the body was sent
            sock.sendall(body + second)
            return answer + _read_all(sock, 10)

    reply = await asyncio.to_thread(exchange)
    assert reply.startswith(b"HTTP/1.1 404 "), reply[:100]
    assert b"HTTP/1.1 201 " in reply, reply[-300:]
    assert await guarded.app.count({"action": "k:x"}) == 1


async def test_a_connection_answered_early_then_idle_is_closed(tmp_path: Path) -> None:
    """A request refused before its body was read (no key: 401), whose body then came
    whole, left the connection open for good once the client went quiet: the body's
    bytes stopped uvicorn's keep-alive timer, and nothing started it again."""
    store = CredentialStore(tmp_path / "credentials.json")
    config = HubConfig(port=0, credentials_path=str(store.path))
    async with running_hub(Conveyor(hub_db_url(tmp_path)), config, store) as hub:
        body = b'{"action": "k:x", "payload": "' + b"x" * 1_000_000 + b'"}'
        head = (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                b"application/json\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\n\r\n")

        def idle_after_answer() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", _port(hub)), timeout=10) as sock:
                sock.sendall(head)
                reply = sock.recv(65536)  # the 401, before the body was sent
                sock.sendall(body)
                began = time.monotonic()
                try:
                    _read_all(sock, 15)  # until the hub closes
                except TimeoutError:
                    return reply, float("inf")
                return reply, time.monotonic() - began

        reply, closed_after = await asyncio.to_thread(idle_after_answer)
        assert reply.startswith(b"HTTP/1.1 401 "), reply[:100]
        assert closed_after < 10, "the idle connection was not closed (keep-alive: 5 s)"
        assert await hub.app.count() == 0


async def test_a_body_that_stops_coming_is_refused_with_408(tmp_path: Path,
                                                            monkeypatch: Any) -> None:
    """A client with a key that sent part of a body and then nothing held its
    connection, and its request, for good (no bound but the keyless ones). A body
    that keeps coming, however slowly, is taken."""
    from conveyor.hub._guard import GuardedHttpTools

    monkeypatch.setattr(GuardedHttpTools, "body_stall", 0.6)
    store = CredentialStore(tmp_path / "credentials.json")
    config = HubConfig(port=0, credentials_path=str(store.path))
    async with running_hub(Conveyor(hub_db_url(tmp_path)), config, store) as hub:
        key = hub.key("pub", admin=True)
        body = b'{"action": "k:slow", "payload": "' + b"x" * 40 + b'"}'
        head = (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                + key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n")

        def stalled() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", _port(hub)), timeout=10) as sock:
                sock.sendall(head + body[:10])
                began = time.monotonic()
                return _read_all(sock, 10), time.monotonic() - began

        reply, after = await asyncio.to_thread(stalled)
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
        assert b"stopped coming" in reply and after < 5, (reply, after)
        # in four pieces 0.4 s apart (1.2 s in all, twice the bound): it keeps coming

        def paced() -> bytes:
            with socket.create_connection(("127.0.0.1", _port(hub)), timeout=10) as sock:
                sock.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                for start in range(0, len(body), 16):
                    time.sleep(0.4)  # the pace of a slow client
                    sock.sendall(body[start:start + 16])
                return _read_all(sock, 10)

        reply = await asyncio.to_thread(paced)
        assert reply.startswith(b"HTTP/1.1 201 "), reply[:100]
    assert await hub.app.count({"action": "k:slow"}) == 1


def _send_whole_then_read(port: int, request: bytes) -> tuple[str, bytes]:
    """Send ``request`` whole, then read until the hub closes: ("", the answer), or
    what went wrong ("send: ...", "recv: ...") and the answer read before it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except OSError as exc:
            return f"send: {exc!r}", b""
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except OSError as exc:
            return f"recv: {exc!r}", out
        return "", out


@pytest.mark.parametrize("connection", ["keep-alive", "close"])
async def test_an_early_answer_reaches_the_client_whatever_its_connection_header(
        tmp_path: Path, connection: str) -> None:
    """A request answered before its body was read (a bad key: 401, a body over the
    limit: 413) on a connection with ``Connection: close`` (what nginx sends upstream
    by default): the hub closed the socket with the body unread, the kernel reset it
    under the sender, and the client (nginx: 502) never read the answer. It is read
    and dropped as on a kept-alive connection, then the connection is closed."""
    store = CredentialStore(tmp_path / "credentials.json")
    config = HubConfig(port=0, credentials_path=str(store.path))
    async with running_hub(Conveyor(hub_db_url(tmp_path)), config, store) as hub:
        good = hub.key("pub", admin=True)
        trials = [("cvk_000000000000_bad", 4 << 20, 401, "unauthorized"),
                  (good, 17 << 20, 413, "too_large")]
        for key, size, status, code in trials:
            body = b'{"action": "k:x", "payload": "' + b"z" * size + b'"}'
            request = (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                       b"Bearer " + key.encode() + b"\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: "
                       + connection.encode() + b"\r\n\r\n" + body)
            if connection == "keep-alive":  # then a request that closes, to end it
                request += (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                            b"Bearer " + good.encode() + b"\r\nConnection: close\r\n\r\n")
            failed, reply = await asyncio.to_thread(_send_whole_then_read, _port(hub),
                                                    request)
            assert not failed, (status, failed, reply[:200])
            assert reply.startswith(f"HTTP/1.1 {status} ".encode()), (status, reply[:1000])
            head, _, rest = reply.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            assert json.loads(rest[:length])["error"]["code"] == code, reply[:300]
            if connection == "keep-alive":
                assert b"HTTP/1.1 200 " in rest[length:], reply[-300:]
        assert await hub.app.count() == 0


async def test_an_early_answer_that_closes_waits_for_the_rest_a_bounded_time(
        tmp_path: Path) -> None:
    """The rest of a body answered early on a ``Connection: close`` request is read and
    dropped only while it comes within head_timeout of the answer, as on a kept-alive
    connection: a client trickling a 100 MB body does not hold the connection."""
    store = CredentialStore(tmp_path / "credentials.json")
    config = HubConfig(port=0, credentials_path=str(store.path), head_timeout=1.0)
    async with running_hub(Conveyor(hub_db_url(tmp_path)), config, store) as hub:
        head = (b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{")

        def trickle() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", _port(hub)), timeout=10) as sock:
                sock.sendall(head)
                reply = _read_all(sock, 10)  # the answer, then the end of what comes
                began = time.monotonic()
                while time.monotonic() - began < 15:
                    try:
                        sock.sendall(b" ")
                    except OSError:  # closed: a reset or a broken pipe
                        return reply, time.monotonic() - began
                    time.sleep(0.2)
                return reply, float("inf")

        reply, closed_after = await asyncio.to_thread(trickle)
        assert reply.startswith(b"HTTP/1.1 401 ") and reply.endswith(b"}}"), reply[-200:]
        assert closed_after < 6, "the hub went on reading the body of an answered request"
