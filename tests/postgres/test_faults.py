"""PostgreSQL faults with real worker processes: the server restarted under load, and
a listener connection killed by the server.

The restart runs against a server of the test's own (tests/postgres/_pginstance.py),
so that other tests using the shared test server are not disturbed. The killed
listener belongs to a worker on a database of the test's own on the shared server.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from conveyor import Context, Conveyor
from conveyor.errors import StorageError
from conveyor.storage.postgres import PostgresStorage, migrate
from conveyor.testing.contract import make_spec

from ..conftest import PG_ENV
from ..control._support import until
from ..integration.procs import Fleet, read_ledger
from ._pginstance import PgInstance

# slow; and alone: servers restarted under load, 100 ms bounds
pytestmark = [pytest.mark.slow, pytest.mark.serial]

LISTENERS = "SELECT pid FROM pg_stat_activity WHERE application_name = 'conveyor-listener'"
RECOVERY = 15.0  # seconds the workers and their listeners get to come back after a restart


def listener_pids(admin: psycopg.Connection[Any], datname: str | None = None) -> list[int]:
    if datname is None:
        rows = admin.execute(LISTENERS).fetchall()
    else:
        rows = admin.execute(LISTENERS + " AND datname = %s", (datname,)).fetchall()
    return sorted(int(r[0]) for r in rows)


def ledger_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def pids_after(path: Path, offset: int) -> set[int]:
    """The worker pids of the ledger lines written after byte ``offset``."""
    if not path.exists():
        return set()
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read().decode()
    return {int(line.split()[2]) for line in data.splitlines() if len(line.split()) == 3}


# -- 1. the server restarts under load -------------------------------------------------


async def test_server_restart_under_load_loses_nothing(tmp_path: Path) -> None:
    """Two worker processes are busy with a backlog of 3,000 tasks and a steady
    trickle (one added every ~10 ms) when the server is restarted (fast
    shutdown: every session is cut, mid-claim and mid-finish). Each
    worker claims again, and each worker's listener is connected again, within
    15 s of the server being back, without help; every task whose ``add``
    returned ends succeeded and is in the ledger."""
    with PgInstance() as pg:
        url = pg.url(schema="faults")
        await migrate(url)
        ledger = tmp_path / "ledger.txt"
        env = {"CONVEYOR_DB": url, "LEDGER": str(ledger), "CONCURRENCY": "20",
               # short leases: a claim whose reply was lost in the restart comes back soon
               "LEASE": "5", "SWEEP": "1"}
        fleet = Fleet(env, tmp_path)
        producer = PostgresStorage(url)  # adds only: no listener of its own
        admin = pg.admin()
        acked: list[str] = []
        failures = 0
        stop = asyncio.Event()

        async def produce() -> None:
            nonlocal failures
            i = 0
            while not stop.is_set():
                spec = make_spec("ledger", {"i": i, "sleep": 0.02})
                i += 1
                try:
                    await producer.add([spec])
                    acked.append(spec.id)
                except StorageError:
                    failures += 1  # not acknowledged: it may or may not exist
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.01)

        producing: asyncio.Task[None] | None = None
        try:
            await producer.open()
            await asyncio.to_thread(fleet.start, 2)
            workers = set(fleet.started)
            await until(lambda: len(listener_pids(admin)) == 2, 15, "both workers' listeners")
            producing = asyncio.create_task(produce())
            backlog = [make_spec("ledger", {"i": -1 - i, "sleep": 0.05}) for i in range(3000)]
            for start in range(0, len(backlog), 500):
                await producer.add(backlog[start:start + 500])
                acked.extend(spec.id for spec in backlog[start:start + 500])
            await until(lambda: pids_after(ledger, 0) == workers
                        and len(read_ledger(ledger)) >= 500, 30,
                        "both workers busy with the backlog before the restart")
            [[queued]] = admin.execute(
                "SELECT count(*) FROM faults.tasks WHERE status = 'queued'").fetchall()
            assert queued > 1000  # still busy when the server goes away
            [[started_before]] = admin.execute("SELECT pg_postmaster_start_time()").fetchall()
            admin.close()

            t_restart = time.monotonic()
            await asyncio.to_thread(pg.restart)
            t_up = time.monotonic()
            offset = ledger_size(ledger)
            print(f"restart took {t_up - t_restart:.2f} s")

            admin = pg.admin()
            [[started_after]] = admin.execute("SELECT pg_postmaster_start_time()").fetchall()
            assert started_after > started_before  # it really restarted

            # every worker claims again, and every listener is back, within RECOVERY s
            await until(lambda: pids_after(ledger, offset) == workers, RECOVERY,
                        "both workers claiming again after the restart")
            t_claims = time.monotonic() - t_up
            await until(lambda: len(listener_pids(admin)) == 2, RECOVERY - t_claims,
                        "both workers' listeners connected again")
            t_listeners = time.monotonic() - t_up
            print(f"after the restart: both workers claimed within {t_claims:.2f} s, "
                  f"both listeners back within {t_listeners:.2f} s")
            acked_at_recovery = len(acked)
            await until(lambda: len(acked) >= acked_at_recovery + 100, 30,
                        "100 more tasks added after recovery")
            stop.set()
            await producing
            assert all(p.poll() is None for p in fleet.procs), "a worker died"

            async def all_done() -> bool:
                rows = await producer.get_many(acked)
                return len(rows) == len(acked) and all(t.status.value == "succeeded"
                                                       for t in rows)

            await until(all_done, 40, "every acknowledged task succeeded")
            # tasks whose add raised may exist too (the commit can outrun its reply):
            # whatever exists ends succeeded
            await until(lambda: admin.execute(
                "SELECT count(*) FROM faults.tasks WHERE status <> 'succeeded'"
            ).fetchone() == (0,), 20, "no task left unfinished")
            [[total]] = admin.execute("SELECT count(*) FROM faults.tasks").fetchall()
        finally:
            stop.set()
            if producing is not None:
                await asyncio.gather(producing, return_exceptions=True)
            admin.close()
            await producer.close()
            fleet.close()
        log_text = fleet.log_text()

    ran = {task_id for task_id, _, _ in read_ledger(ledger)}
    missing = [i for i in acked if i not in ran]
    assert not missing, f"{len(missing)} acknowledged tasks never ran: {missing[:5]}"
    assert failures > 0, "the producer never saw the restart"
    assert len(acked) <= total <= len(acked) + failures
    print(f"{len(acked)} tasks acknowledged ({failures} adds failed during the restart, "
          f"{total - len(acked)} of those committed anyway); all succeeded")
    # the workers logged the outage (failed claims and writes, retried) but nothing of
    # theirs gave up: no stopped listener or lease keeper, no unretrieved task error
    for fatal in ("change listener stopped", "lease keeper stopped", "lease keeper failed",
                  "never retrieved"):
        assert fatal not in log_text, log_text[-3000:]


# -- 2. a listener connection is killed ------------------------------------------------


@contextmanager
def fresh_database(server: str) -> Iterator[tuple[str, str]]:
    """A new database on the shared test server: yields (its URL, its name); dropped after."""
    name = f"conveyor_faults_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}")), name
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def wake_delays(storage: PostgresStorage, admin: psycopg.Connection[Any],
                      count: int, spacing: float = 0.05) -> list[float]:
    """Add ``count`` tasks one at a time to the idle worker; for each, the time from
    its insert (``created_at``) until the worker claimed it (``started_at``)."""
    delays = []
    for _ in range(count):
        spec = make_spec("ledger", {})
        await storage.add([spec])
        row = await until(lambda i=spec.id: admin.execute(
            "SELECT started_at - created_at FROM conveyor.tasks "
            "WHERE id = %s AND started_at IS NOT NULL", (i,)).fetchone(), 10,
            f"task {spec.id} started")
        delays.append(float(row[0]))
        await asyncio.sleep(spacing)
    return delays


async def test_killed_listener_is_replaced(tmp_path: Path) -> None:
    """The server ends an idle worker's listener connection (pg_terminate_backend),
    twice: each time a new listener connects within 5 s, and tasks added from
    this process wake the worker through NOTIFY again (median enqueue-to-claim
    under 100 ms; without notifications it waits for its 1 s idle poll)."""
    server = os.environ[PG_ENV]
    with fresh_database(server) as (url, dbname):
        await migrate(url)
        ledger = tmp_path / "ledger.txt"
        fleet = Fleet({"CONVEYOR_DB": url, "LEDGER": str(ledger), "CONCURRENCY": "10"},
                      tmp_path)
        storage = PostgresStorage(url)  # adds only: no listener of its own
        admin = psycopg.connect(url, autocommit=True)  # on the test's database
        try:
            await storage.open()
            await asyncio.to_thread(fleet.start, 1)
            [pid] = await until(lambda: listener_pids(admin, dbname), 15, "the listener")
            before = await wake_delays(storage, admin, 10)
            assert statistics.median(before) < 0.1, before
            for _ in range(2):
                t_kill = time.monotonic()
                [[killed]] = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchall()
                assert killed
                # a task added right away: delivered once the listener is back
                [first] = await wake_delays(storage, admin, 1)
                [new_pid] = await until(
                    lambda old=pid: [p for p in listener_pids(admin, dbname) if p != old], 5,
                    "a new listener connection")
                t_back = time.monotonic() - t_kill
                after = await wake_delays(storage, admin, 10)
                print(f"listener {pid} killed; new listener {new_pid} within {t_back:.2f} s; "
                      f"first task claimed after {first * 1000:.0f} ms; then median "
                      f"{statistics.median(after) * 1000:.1f} ms (before the kill "
                      f"{statistics.median(before) * 1000:.1f} ms)")
                assert first < 1.5, first
                assert statistics.median(after) < 0.1, after
                assert listener_pids(admin, dbname) == [new_pid]
                pid = new_pid
            assert fleet.procs[0].poll() is None, "the worker died"
            [[left]] = admin.execute(
                "SELECT count(*) FROM conveyor.tasks WHERE status <> 'succeeded'").fetchall()
        finally:
            admin.close()
            await storage.close()
            fleet.close()
    assert left == 0
    assert len(read_ledger(ledger)) == 32  # 10 + 2 x (1 + 10) tasks, each run once
    assert "Traceback" not in fleet.log_text()


_LEFT_OPEN = """
import asyncio, sys, psycopg
from conveyor import Conveyor

url, admin, name = sys.argv[1:4]

async def main():
    app = Conveyor(url)
    await app.open()
    task = await app.add("never:run", None)
    with psycopg.connect(admin, autocommit=True) as c:
        n = c.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                      "WHERE application_name = %s", (name,)).fetchone()[0]
    print("terminated", n, flush=True)
    await app.get(task.id)  # fails once on the dead connection; the app is never closed

asyncio.run(main())
"""


async def test_with_the_server_down_a_call_fails_after_pool_timeout() -> None:
    """The server stops for good under an open app: a call waits for a connection up
    to the URL's ``pool_timeout`` (default 30 s), then fails with ``StorageError``; once
    the server is back, calls succeed again (once the pool's next attempt to connect
    comes: it tries again with a growing backoff) without a restart of the app."""
    with PgInstance() as pg:
        url = pg.url(schema="down", migrate="true", pool_timeout="1.5")
        async with Conveyor(url) as app:
            first = await app.add("down:x")
            await asyncio.to_thread(pg.stop)
            started = time.monotonic()
            for _ in range(3):  # the first may fail at once, on the pooled connection
                with pytest.raises(StorageError):
                    await asyncio.wait_for(app.add("down:x"), 15)  # under the 30 s default
            waited = time.monotonic() - started
            assert waited < 15, waited
            await asyncio.to_thread(pg.start)
            deadline = time.monotonic() + 30  # the pool tries again with a growing backoff
            while True:
                try:
                    again = await asyncio.wait_for(app.add("down:x"), 15)
                    break
                except StorageError:
                    assert time.monotonic() < deadline, "the app did not recover"
            assert {t.id for t in await app.find({})} == {first.id, again.id}


def test_a_program_that_leaves_the_app_open_after_a_lost_connection_ends(
        schema_url: str, server: str, tmp_path: Path) -> None:
    """A script whose pooled connections the server ends, that raises the
    ``StorageError`` and never closes its app: ``asyncio.run()`` returns (exit 1).
    It hung for ever: asyncio.run cancels every task at the end, and psycopg_pool's
    task that was reopening the lost connection caught the cancellation and went on
    waiting for its next job."""
    name = f"conveyor-left-open-{uuid.uuid4().hex[:8]}"  # only this process's connections
    script = tmp_path / "left_open.py"
    script.write_text(_LEFT_OPEN)
    done = subprocess.run([sys.executable, str(script), f"{schema_url}&application_name={name}",
                           server, name], capture_output=True, text=True, timeout=30)
    assert done.stdout.startswith("terminated ") and done.stdout.split()[1] != "0", done
    assert done.returncode == 1, done
    assert "StorageError" in done.stderr and "administrator command" in done.stderr, done.stderr


async def test_a_wait_and_a_log_stream_ride_out_lost_connections(
        schema_url: str, server: str) -> None:
    """The server ends every pooled connection of a process waiting on a task
    (as a restart does): its ``wait()`` and ``logs()`` read again and return the
    result and every log line. Each read on a dead connection raised a
    ``StorageError`` that ended the wait (``conveyor add --wait``, ``tail``)."""
    name = f"conveyor-waiter-{uuid.uuid4().hex[:8]}"  # only the waiter's connections
    waiter = Conveyor(f"{schema_url}&application_name={name}&pool_min=3")
    worker = Conveyor(schema_url, stop_timeout=1.0)
    go = asyncio.Event()

    async def slow(ctx: Context[Any]) -> str:
        ctx.log.info("before")
        await go.wait()
        ctx.log.info("after")
        return "done"

    worker.register("slow", slow)
    async with waiter, worker:
        task = await waiter.add("slow", None)
        result = asyncio.ensure_future(waiter.wait(task.id, timeout=30))

        async def read_logs() -> list[str]:
            return [r.message async for r in waiter.logs(task.id)]

        lines = asyncio.ensure_future(read_logs())
        await until(lambda: bool(worker.worker and worker.worker.running), timeout=10,
                    what="the run to start")
        with psycopg.connect(server, autocommit=True) as admin:
            [[killed]] = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s", (name,)).fetchall()
        assert killed >= 1
        go.set()
        assert await asyncio.wait_for(result, 30) == "done"
        assert await asyncio.wait_for(lines, 30) == ["before", "after"]


_RUNS_LEFT_OPEN = """
import asyncio, sys, psycopg
from conveyor import Conveyor

url, admin, name = sys.argv[1:4]
app = Conveyor(url)

async def one(i):
    await app.add("left:x", i)  # and the run ends with the app open

def connections():
    with psycopg.connect(admin, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (name,)).fetchone()[0]

counts = []
for i in range(8):
    asyncio.run(one(i))
    counts.append(connections())
print(" ".join(map(str, counts)), len(app.storage._pools))
"""


def test_runs_that_leave_the_app_open_leave_no_pooled_connection(
        schema_url: str, server: str, tmp_path: Path) -> None:
    """docs/postgres.md, "An app left open": the end of ``asyncio.run()`` closes the
    app's pool. Its idle connections stayed open (the pool's close raised the
    cancellation of its own workers first): one more server connection per run,
    until the server refused connections."""
    name = f"conveyor-runs-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "runs_left_open.py"
    script.write_text(_RUNS_LEFT_OPEN)
    done = subprocess.run([sys.executable, str(script), f"{schema_url}&application_name={name}",
                           server, name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    *counts, pools = (int(x) for x in done.stdout.split())
    assert max(counts) <= 1, counts  # the listener's one, at most: none per run
    assert pools == 0  # nothing of the ended loops is kept
