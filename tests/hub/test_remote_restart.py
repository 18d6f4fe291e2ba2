"""A hub killed (SIGKILL) under load and started again: remote workers reconnect,
nothing is lost."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx

from conveyor import Conveyor
from conveyor.hub._credentials import CredentialStore

from ._ws_helpers import eventually, read_line, reap, spawn
from .conftest import free_port, hub_db_url


def start_hub(port: int, db: str, credentials: Path, log: Path) -> subprocess.Popen[str]:
    return spawn("conveyor.cli", "serve", "--port", str(port), "--credentials",
                 str(credentials), "--db", db, "--service-lease", "1.5", log=log, stdout=False)


async def hub_ready(url: str, key: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=url, timeout=1.0) as http:
            reply = await http.get("/readyz", headers={"Authorization": f"Bearer {key}"})
            return reply.status_code == 200
    except httpx.HTTPError:
        return False


async def test_a_hub_killed_under_load_loses_nothing(tmp_path: Path) -> None:
    db = hub_db_url(tmp_path, "tasks.db")
    credentials = tmp_path / "credentials.json"
    _, key = CredentialStore(credentials).add("svc", publish=["job:*"], subscribe=["job:*"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "hub.log"
    app = Conveyor(db)
    await app.open()  # create the schema before anyone else
    hub = start_hub(port, db, credentials, log)
    workers: list[subprocess.Popen[str]] = []
    try:
        await eventually(lambda: hub_ready(url, key), timeout=30, interval=0.1)
        for i in range(2):
            workers.append(spawn("tests.hub._remote_worker", url, key, f"svc{i}", "8",
                                 log=tmp_path / f"worker{i}.log"))
        for proc in workers:
            assert (await read_line(proc)).strip() == "ready"
        n = 400
        tasks = await app.add_many([("job:sleep", {"n": i, "sleep": 0.05}) for i in range(n)])
        await eventually(lambda: _succeeded_at_least(app, 60), timeout=60)
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
        killed_at = time.monotonic()
        held = await app.count({"status": "running"})
        hub = start_hub(port, db, credentials, log)
        await eventually(lambda: _succeeded_at_least(app, n), timeout=90, interval=0.2)
        elapsed = time.monotonic() - killed_at
        finished = await app.find({"action": "job:sleep"})
        assert len(finished) == n
        assert all(t.status.value == "succeeded" for t in finished)
        assert sorted(t.result for t in finished) == list(range(n))
        rescued = [t for t in finished if t.rescues]
        print(f"\nhub killed with {held} task(s) running; all {n} done {elapsed:.1f} s later; "
              f"{len(rescued)} came back through lease expiry")
        assert len(rescued) <= held
        # both workers are connected to the new hub
        listed = await eventually(lambda: _remote_workers(app, 2), timeout=20)
        assert {w.info["service"] for w in listed} >= {"svc0", "svc1"}
        assert tasks
    finally:
        reap(hub, *workers)
        await app.close()


async def _succeeded_at_least(app: Conveyor, n: int) -> bool:
    return await app.count({"status": "succeeded"}) >= n


async def _remote_workers(app: Conveyor, n: int) -> list:  # type: ignore[type-arg]
    found = [w for w in await app.workers() if w.info.get("remote")
             and w.last_seen > time.time() - 5]
    live = {w.info["service"] for w in found}
    return found if len(live) >= n else []
