"""Helpers of the WebSocket tests: a raw protocol client and hub builders."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conveyor import Conveyor
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore
from conveyor.hub._ws import WSState

from .conftest import RunningHub, hub_db_url, running_hub

Message = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: str, log: Path | None = None, stdin: bool = False,
          stdout: bool = True) -> subprocess.Popen[str]:
    """``python -m <args>`` from the repository root (stderr to ``log`` if given)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    err = open(log, "ab") if log is not None else None  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env,
                                stdin=subprocess.PIPE if stdin else None,
                                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                stderr=err, text=True)
    finally:
        if err is not None:
            err.close()


def reap(*procs: subprocess.Popen[str]) -> None:
    """Kill what still runs and close the pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


async def read_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    return await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)


class Raw:
    """A WebSocket client that speaks the protocol message by message."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: deque[Message] = deque()
        self.seen: list[Message] = []
        self._next = 1000

    @classmethod
    async def open(cls, url: str, key: str | None = None, *, path: str = "/ws",
                   welcome: bool = True, **options: Any) -> Raw:
        headers = {"Authorization": f"Bearer {key}"} if key else None
        ws = await connect(url.replace("http://", "ws://") + path, additional_headers=headers,
                           max_size=None, compression=None, **options)
        raw = cls(ws)
        if welcome:
            msg = await raw.recv()
            assert msg["type"] == "welcome", msg
        return raw

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(cls, url: str, key: str | None = None, **options: Any
                     ) -> AsyncIterator[Raw]:
        """:meth:`open` as an ``async with``: the connection is closed at the end."""
        raw = await cls.open(url, key, **options)
        try:
            yield raw
        finally:
            await raw.close()

    def next_id(self) -> int:
        self._next += 1
        return self._next

    async def send(self, message: Message | list[Message]) -> Any:
        if isinstance(message, dict) and "id" not in message:
            message = {**message, "id": self.next_id()}
        elif isinstance(message, list):
            message = [{**m, "id": self.next_id()} if isinstance(m, dict) and "id" not in m
                       else m for m in message]
        await self.ws.send(json.dumps(message))
        return message.get("id") if isinstance(message, dict) else None

    async def send_text(self, text: str | bytes) -> None:
        await self.ws.send(text)

    async def _fill(self, timeout: float) -> None:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        parsed = json.loads(frame)
        for msg in parsed if isinstance(parsed, list) else [parsed]:
            self.inbox.append(msg)
            self.seen.append(msg)

    async def recv(self, timeout: float = 10.0) -> Message:
        while not self.inbox:
            await self._fill(timeout)
        return self.inbox.popleft()

    async def expect(self, type: str | None = None, id: Any = ..., timeout: float = 10.0,
                     where: Callable[[Message], bool] | None = None) -> Message:
        """The next message matching; the ones skipped stay in the inbox."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, msg in enumerate(self.inbox):
                if ((type is None or msg.get("type") == type)
                        and (id is ... or msg.get("id") == id)
                        and (where is None or where(msg))):
                    del self.inbox[i]
                    return msg
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no {type} (id {id}) within {timeout} s; got "
                                   f"{list(self.inbox)[-5:]}")
            await self._fill(left)

    async def request(self, message: Message, reply: str | None = None,
                      timeout: float = 10.0) -> Message:
        msg_id = await self.send(message)
        return await self.expect(reply, msg_id, timeout)

    async def closed(self, timeout: float = 10.0) -> int:
        """Read until the hub closes; return the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError("the hub did not close the connection")
                await self._fill(left)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else 1006

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


@contextlib.asynccontextmanager
async def make_hub(tmp_path: Path, *, insecure: bool = False, app: Conveyor | None = None,
                   **config: Any) -> AsyncIterator[RunningHub]:
    """A hub (on this test's storage, :func:`hub_db_url`) with the given HubConfig settings."""
    app = app or Conveyor(hub_db_url(tmp_path))
    store = None if insecure else CredentialStore(tmp_path / "credentials.json")
    cfg = HubConfig(port=0, insecure=insecure,
                    credentials_path=str(tmp_path / "credentials.json"), **config)
    async with running_hub(app, cfg, store) as hub:
        yield hub


async def eventually(check: Callable[[], Any], timeout: float = 10.0,
                     interval: float = 0.02) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def ws_state(hub: RunningHub) -> WSState:
    """The hub's WebSocket state (remote workers, live queries)."""
    return next(s for s in hub.hub.services if isinstance(s, WSState))
