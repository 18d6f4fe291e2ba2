"""``conveyor serve`` writes uvicorn's access log, and a key a client put in a URL
(``?key=...``; the hub reads keys only from headers) does not reach it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from ._ws_helpers import ROOT, eventually, reap
from .conftest import free_port, hub_db_url
from .test_remote_restart import hub_ready

SECRET = "cvk_0123456789ab_" + "S" * 43


def serve(port: int, tmp_path: Path, log: Path) -> subprocess.Popen[str]:
    """``conveyor serve`` with its stdout and stderr (the access log) in ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "serve", "--insecure", "--port", str(port),
             "--db", hub_db_url(tmp_path)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=out,
            text=True)


async def test_keys_in_urls_are_blanked_in_the_access_log(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "hub.log"
    hub = serve(port, tmp_path, log)
    try:
        await eventually(lambda: hub_ready(url, "none"), timeout=30, interval=0.1)
        async with httpx.AsyncClient(base_url=url) as http:
            await http.get(f"/api/v1/stats?key={SECRET}&x=1")
            await http.get(f"/healthz?token={SECRET}")
            await http.get("/api/v1/tasks", params={"api_key": SECRET, "limit": "5"})
            # a key under any other name, or one whose name is percent-encoded
            await http.get(f"/api/v1/stats?k%65y={SECRET}")
            await http.get(f"/api/v1/stats?auth={SECRET}&y=2")
        # WebSocket handshakes are logged by uvicorn's error logger, not its access log
        for query in (f"key={SECRET}", f"access_token={SECRET}"):
            async with connect(f"ws://127.0.0.1:{port}/ws?{query}") as ws:
                assert '"welcome"' in str(await ws.recv())  # accepted (an insecure hub)
        hub.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(hub.wait, 30) == 0
    finally:
        reap(hub)
    text = await asyncio.to_thread(log.read_text)
    assert "GET /api/v1/stats?key=***&x=1 HTTP/1.1" in text, text
    assert "GET /healthz?token=*** HTTP/1.1" in text, text
    assert "GET /api/v1/tasks?api_key=***&limit=5 HTTP/1.1" in text, text
    assert "GET /api/v1/stats?k%65y=cvk_*** HTTP/1.1" in text, text
    assert "GET /api/v1/stats?auth=cvk_***&y=2 HTTP/1.1" in text, text
    assert '"WebSocket /ws?key=***" [accepted]' in text, text
    assert '"WebSocket /ws?access_token=***" [accepted]' in text, text
    assert SECRET not in text and "SSSS" not in text
