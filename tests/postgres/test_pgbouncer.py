"""Conveyor behind a real PgBouncer in transaction mode (docs/postgres.md, "Many
workers on many hosts"): with ``listen=false&prepare=false`` everything works
through a pool of three server connections that every client shares.

A PgBouncer of the module's own (Debian's package: 1.18 here, before 1.21, so no
prepared statements) listens on a free port of 127.0.0.1, in front of the test
server, with ``pool_mode = transaction`` and ``default_pool_size = 3``. Its
admin console shows that the server connections really are shared: many
clients, never more than three servers. Three worker processes
(tests/integration/apps.py) on one schema of the module's own drain the tasks
of every test; each run appends a line to a ledger file, so tasks lost or run
twice are counted.

Without the ``pgbouncer`` program the tests are skipped, except in CI
(``CONVEYOR_NO_SKIPS=1``, set by scripts/test, which installs it) where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import pytest

from conveyor import ConfigurationError, Conveyor, Status, TaskAborted
from conveyor.storage.postgres import SCHEMA_VERSION, migrate, parse_postgres_url

from ..conftest import PG_ENV, drop_pg_schema, pg_schema
from ..control._support import status_is, until
from ..integration.procs import REPO, kill_worker, max_overlap, start_worker_logged, stop_worker
from ._pginstance import free_port

pytestmark = pytest.mark.slow

POOL_SIZE = 3  # server connections PgBouncer keeps for all its clients
WORKERS = 3  # worker processes
TASKS = 3000  # drained by them
# what docs/postgres.md says transaction mode needs (PgBouncer before 1.21)
OPTIONS = {"listen": "false", "prepare": "false", "poll_interval": "0.1"}
ALIAS = "conveyor_alias"  # a second PgBouncer name for the same database


def _pgbouncer_program() -> str:
    """The pgbouncer program; skipped without it, except in CI where that fails."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None)
    if found is None:
        why = ("pgbouncer is not installed (apt-get install -y pgbouncer; scripts/test "
               "installs it): tests/postgres/test_pgbouncer.py needs it")
        if os.environ.get("CONVEYOR_NO_SKIPS") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return found


class PgBouncer:
    """A PgBouncer of the test's own in front of the ``CONVEYOR_TEST_PG`` server, in
    transaction mode with ``POOL_SIZE`` server connections; its files in a temporary
    folder. As root it runs as ``nobody`` (PgBouncer refuses to run as root)."""

    def __init__(self, program: str, server: str) -> None:
        self.program = program
        self.server = psycopg.conninfo.conninfo_to_dict(server)
        self.user = str(self.server.get("user") or pwd.getpwuid(os.geteuid()).pw_name)
        self.password = str(self.server.get("password") or "")
        self.dbname = str(self.server.get("dbname") or self.user)
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-pgbouncer-"))
        self.log = self.dir / "pgbouncer.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._ids: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("nobody")
            self._ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o700)

    def _write_config(self) -> Path:
        target = " ".join(f"{k}={self.server[k]}" for k in ("host", "port") if self.server.get(k))
        auth = "scram-sha-256" if self.password else "trust"
        ini = self.dir / "pgbouncer.ini"
        users = self.dir / "users.txt"
        users.write_text(f'"{self.user}" "{self.password}"\n')
        ini.write_text(
            "[databases]\n"
            f"{self.dbname} = {target} dbname={self.dbname}\n"
            f"{ALIAS} = {target} dbname={self.dbname}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            f"auth_type = {auth}\n"
            f"auth_file = {users}\n"
            f"admin_users = {self.user}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {POOL_SIZE}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
            f"max_db_connections = {POOL_SIZE}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.log}\n")
        for path in (ini, users):
            if self._ids:
                os.chown(path, self._ids["user"], self._ids["group"])
            os.chmod(path, 0o600)
        return ini

    def url(self, dbname: str | None = None, **options: str) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        query = f"?{urlencode(options)}" if options else ""
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname or self.dbname}{query}"

    def start(self) -> None:
        for _ in range(3):  # another process may take the free port first
            self.port = free_port()
            ini = self._write_config()
            self.proc = subprocess.Popen([self.program, str(ini)], cwd=self.dir,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         **self._ids)
            deadline = time.monotonic() + 15
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    with psycopg.connect(self.url(), connect_timeout=2) as conn:
                        conn.execute("SELECT 1")
                    return
                except psycopg.OperationalError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"pgbouncer did not start: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # immediate shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console (simple protocol: a ClientCursor)."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def connections(self) -> tuple[int, int]:
        """(clients, server connections) of the conveyor database's pool now."""
        clients = [c for c in self.show("CLIENTS") if c["database"] == self.dbname]
        servers = [s for s in self.show("SERVERS") if s["database"] == self.dbname]
        return len(clients), len(servers)


@dataclass
class Site:
    """The module's PgBouncer, its schema behind it and the worker processes on it."""

    bouncer: PgBouncer
    url: str  # through PgBouncer, with OPTIONS
    ledger: Path
    procs: list[subprocess.Popen[str]]
    logs: Path

    def runs(self, ids: set[str]) -> Counter[str]:
        """How many times each of ``ids`` ran (``ledger``-style lines)."""
        counts: Counter[str] = Counter()
        for line in self.ledger.read_text().splitlines() if self.ledger.exists() else ():
            fields = line.split()
            if len(fields) == 3 and fields[0] in ids:
                counts[fields[0]] += 1
        return counts

    def intervals(self, ids: set[str]) -> list[tuple[str, str, float, float, int]]:
        """``(task_id, group, start, end, pid)`` of the runs of ``ids`` (``record_interval``)."""
        out = []
        for line in self.ledger.read_text().splitlines() if self.ledger.exists() else ():
            fields = line.split()
            if len(fields) == 5 and fields[0] in ids:
                out.append((fields[0], fields[1], float(fields[2]), float(fields[3]),
                            int(fields[4])))
        return out

    def assert_workers_alive(self) -> None:
        dead = [p.pid for p in self.procs if p.poll() is not None]
        assert not dead, f"worker(s) {dead} died: {self.worker_log()}"

    def worker_log(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.logs.glob("worker-*.log")))[-4000:]


def bounced_url(bouncer: PgBouncer, **options: str) -> str:
    """A URL through ``bouncer`` naming a fresh schema, with ``OPTIONS``."""
    return bouncer.url(schema=f"t_{uuid.uuid4().hex[:16]}", **{**OPTIONS, **options})


@pytest.fixture(scope="module")
def bouncer() -> Iterator[PgBouncer]:
    program = _pgbouncer_program()
    pgb = PgBouncer(program, os.environ[PG_ENV])
    try:
        pgb.start()
        yield pgb
    finally:
        pgb.close()


@pytest.fixture(scope="module")
def site(bouncer: PgBouncer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A migrated schema (through PgBouncer) and WORKERS worker processes on it,
    stopped gracefully at the end."""
    url = bounced_url(bouncer)
    logs = tmp_path_factory.mktemp("pgbouncer-workers")
    ledger = logs / "ledger.txt"
    env = {"CONVEYOR_DB": url, "LEDGER": str(ledger), "CONCURRENCY": "20",
           "STOP_TIMEOUT": "2"}
    procs: list[subprocess.Popen[str]] = []
    try:
        assert asyncio.run(migrate(url)) == SCHEMA_VERSION
        with ThreadPoolExecutor(WORKERS) as pool:  # start them side by side
            futures = [pool.submit(start_worker_logged, env, logs / f"worker-{i}.log")
                       for i in range(WORKERS)]
            for future in futures:
                with contextlib.suppress(Exception):
                    procs.append(future.result())
            for future in futures:
                future.result()  # raise the first failure (after keeping the others)
        site = Site(bouncer, url, ledger, procs, logs)
        yield site
        # a graceful stop (SIGTERM) behind PgBouncer too
        codes = [stop_worker(proc, timeout=20) for proc in procs]
        assert codes == [0] * WORKERS, (codes, site.worker_log())
    finally:
        for proc in procs:
            kill_worker(proc)
        drop_pg_schema(url)


@pytest.fixture
async def app(site: Site) -> Any:
    """This process's app on the site (it runs no handler: the workers do)."""
    app = Conveyor(site.url)
    yield app
    await app.close()


# -- migrate -------------------------------------------------------------------------


async def test_migrate_from_several_clients_at_once(bouncer: PgBouncer) -> None:
    """More migrations at once than PgBouncer has server connections: the
    transaction-level advisory lock orders them; the schema is whole and usable."""
    url = bounced_url(bouncer)
    try:
        versions = await asyncio.gather(*(migrate(url) for _ in range(POOL_SIZE + 2)))
        assert versions == [SCHEMA_VERSION] * (POOL_SIZE + 2)
        app = Conveyor(url)  # no migrate option: the schema must be there
        try:
            task = await app.add("pgb:parked", {"n": 1})
            assert (await app.get(task.id)).status is Status.QUEUED
        finally:
            await app.close()
    finally:
        drop_pg_schema(url)


# -- many worker processes --------------------------------------------------------------


async def test_worker_processes_drain_thousands_none_lost_none_twice(
        site: Site, app: Conveyor) -> None:
    run = uuid.uuid4().hex[:8]
    clients = servers = 0

    async def sample() -> None:
        nonlocal clients, servers
        while True:
            c, s = await asyncio.to_thread(site.bouncer.connections)
            clients, servers = max(clients, c), max(servers, s)
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    t0 = time.monotonic()
    try:
        ids: list[str] = []
        # one by one, from several coroutines at once (the add path with options) ...
        singles = await asyncio.gather(*(app.add("ledger", {"run": run, "i": i}, priority=1)
                                         for i in range(100)))
        ids += [t.id for t in singles]
        # ... in bulk (the streamed path), while the workers already drain ...
        for start in range(100, TASKS - 400, 500):
            batch = [("ledger", {"run": run, "i": i})
                     for i in range(start, min(start + 500, TASKS - 400))]
            ids += [t.id for t in await app.add_many(batch)]
        # ... and in bulk with options
        tail = await app.add_many([("ledger", {"run": run, "i": i}, {"tags": {"b": "tail"}})
                                   for i in range(TASKS - 400, TASKS)])
        ids += [t.id for t in tail]
        assert len(set(ids)) == TASKS

        async def drained() -> bool:
            return await app.count({"payload.run": run, "status": "succeeded"}) == TASKS

        await until(drained, 60, f"{TASKS} tasks to succeed", interval=0.1)
        took = time.monotonic() - t0
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    site.assert_workers_alive()
    runs = await until(lambda: (r := site.runs(set(ids))) and sum(r.values()) >= TASKS and r,
                       5, "the ledger")
    assert set(runs) == set(ids)  # none lost
    assert max(runs.values()) == 1  # none twice
    pids = Counter(int(line.split()[2]) for line in site.ledger.read_text().splitlines()
                   if line.split()[0] in runs)
    print(f"\npgbouncer: {TASKS} tasks in {took:.1f}s by {len(pids)} workers {dict(pids)}; "
          f"at most {clients} clients on {servers} server connections")
    assert len(pids) == WORKERS  # every worker process took part
    assert servers <= POOL_SIZE < clients  # the server connections really were shared


async def test_concurrency_condition_and_limit_across_processes(
        site: Site, app: Conveyor) -> None:
    """A condition "one running task per book", and a handler's limit of 2, hold
    across the worker processes: the claims' advisory locks are transaction-level."""
    books, per_book, limited = 5, 40, 60
    run = uuid.uuid4().hex[:6]
    names = [f"{run}-{b}" for b in range(books)]
    tasks = await app.add_many([
        ("book", {"book": name, "sleep": 0.005},
         {"concurrency": {"scope": "running", "query": {"payload.book": name}, "limit": 1}})
        for _ in range(per_book) for name in names])
    tasks += await app.add_many([("limited", {"i": i, "sleep": 0.02}) for i in range(limited)])
    ids = {t.id for t in tasks}

    async def done() -> bool:
        return await app.count({"id": {"$in": sorted(ids)}, "status": "succeeded"}) == len(ids)

    await until(done, 30, "the book and limited tasks to succeed", interval=0.1)
    runs = await until(lambda: (r := site.intervals(ids)) and len(r) >= len(ids) and r, 5,
                       "the ledger")
    assert sorted(r[0] for r in runs) == sorted(ids)  # each ran once
    by_group: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, group, start, end, _ in runs:
        by_group[group].append((start, end))
    overlaps = [(group, a, b) for group, iv in by_group.items() if group != "limited"
                for a, b in pairwise(sorted(iv)) if b[0] < a[1]]
    assert not overlaps, overlaps[:5]
    assert len(by_group) == books + 1
    assert max_overlap(by_group["limited"]) == 2  # the limit, and used
    books_at_once = max_overlap(iv for g, ivs in by_group.items() if g != "limited"
                                for iv in ivs)
    assert books_at_once > 1  # the books did run side by side
    assert len({r[4] for r in runs}) > 1  # on several processes
    site.assert_workers_alive()


_ADDER = """
import asyncio, json, random, sys
from conveyor import Conveyor

async def main(url, run, keys):
    app = Conveyor(url)
    await app.open()
    items = [("pgb:parked", {"run": run, "k": k}, {"unique_key": f"{run}-{k}"})
             for k in range(keys)]
    random.shuffle(items)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    got = await app.add_many_checked(items[: keys // 2])
    got += await asyncio.gather(*(app.add_checked(a, p, **o) for a, p, o in items[keys // 2:]))
    await app.close()
    print(json.dumps({t.payload["k"]: [t.id, created] for t, created in got}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_unique_keys_across_adding_processes(site: Site, app: Conveyor) -> None:
    """Several processes add the same unique keys at once (in bulk and one by one,
    in different orders): one task per key, every process told the same task, and
    exactly one of them told it was new."""
    run, keys, adders = uuid.uuid4().hex[:8], 40, 3
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ADDER, site.url, run, str(keys), cwd=REPO,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(adders)]
    try:
        for proc in procs:  # every one open (on PgBouncer) before any adds
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line == b"ready\n", line
        outputs = await asyncio.wait_for(
            asyncio.gather(*(p.communicate(b"go\n") for p in procs)), 30)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
        results.append(json.loads(out))
    for k in map(str, range(keys)):
        answers = [r[k] for r in results]
        assert len({task_id for task_id, _ in answers}) == 1, (k, answers)
        assert sum(created for _, created in answers) == 1, (k, answers)
    assert await app.count({"payload.run": run}) == keys


# -- control and events from another process ---------------------------------------------


async def test_abort_of_a_task_running_in_a_worker_process(site: Site, app: Conveyor) -> None:
    task = await app.add("ledger", {"sleep": 60})
    await until(status_is(app, task.id, Status.RUNNING), 10, "the task to run")
    t0 = time.monotonic()
    await app.abort(task.id, "enough")
    with pytest.raises(TaskAborted):
        await app.wait(task.id, timeout=10)
    took = time.monotonic() - t0
    ended = await app.get(task.id)
    assert ended.status is Status.ABORTED
    # the request came through the change feed (polled), not the heartbeat (lease / 3)
    assert took < 5, took
    assert site.runs({task.id}) == {task.id: 1}
    site.assert_workers_alive()


async def test_events_and_wait_see_a_task_of_another_process_finish(
        site: Site, app: Conveyor) -> None:
    task = await app.add("chatty", {"steps": 3, "pause": 0.05}, delay=0.3)
    seen: list[str] = []
    steps: list[float] = []

    async def follow() -> None:
        async for event in app.events(task_id=task.id):
            seen.append(event.type)
            if event.type == "task.progress":
                steps.append(event.data["progress"].current)
            if event.type == "task.succeeded":
                return

    follower = asyncio.create_task(follow())
    lines = [r.message async for r in app.logs(task.id)]
    assert await app.wait(task.id, timeout=10) == "chatted"
    await asyncio.wait_for(follower, 10)
    assert lines == ["line 0", "line 1", "line 2"]
    assert "task.started" in seen and seen[-1] == "task.succeeded"
    # the stored snapshots (one each progress_interval: on a busy machine two updates
    # may fall in one), in order, up to the last
    assert steps and steps == sorted(steps) and steps[-1] == 3, (steps, seen)


# -- enqueue inside the caller's transaction --------------------------------------------------


async def test_add_in_the_callers_transaction_commit_and_rollback(
        site: Site, app: Conveyor) -> None:
    """The caller's own connections through PgBouncer (no prepared statements there
    either: ``prepare_threshold=None``): a task exists, and runs, iff the
    transaction commits."""
    conninfo, _, _ = parse_postgres_url(site.url)
    run = uuid.uuid4().hex[:8]
    async with await psycopg.AsyncConnection.connect(conninfo, prepare_threshold=None) as conn:
        async with conn.transaction():
            await conn.execute("SELECT 1")
            kept = await app.add_in(conn, "ledger", {"run": run, "n": 1})
            [kept_too] = await app.add_many_in(conn, [("ledger", {"run": run, "n": 2})])
        async with conn.transaction(force_rollback=True):
            gone = await app.add_in(conn, "ledger", {"run": run, "n": 3})
            seen = await conn.execute(
                f'SELECT count(*) FROM "{pg_schema(site.url)}".tasks WHERE id = %s', (gone.id,))
            assert await seen.fetchone() == (1,)  # in the transaction, before the end
    with psycopg.Connection.connect(conninfo, prepare_threshold=None) as sync_conn:
        with sync_conn.transaction():
            kept_sync = await app.add_in(sync_conn, "ledger", {"run": run, "n": 4})
        with sync_conn.transaction(force_rollback=True):
            gone_sync = await app.add_in(sync_conn, "ledger", {"run": run, "n": 5})
    for task in (kept, kept_too, kept_sync):
        assert isinstance(await app.wait(task.id, timeout=10), int)  # a worker's pid
    for task in (gone, gone_sync):
        assert not await app.exists(task.id)
    assert await app.count({"payload.run": run}) == 3
    assert site.runs({kept.id, kept_too.id, kept_sync.id, gone.id, gone_sync.id}) == {
        kept.id: 1, kept_too.id: 1, kept_sync.id: 1}


async def test_add_in_compares_the_database_reached_not_the_name_asked_for(
        bouncer: PgBouncer) -> None:
    """Behind PgBouncer the database in a URL can be an alias: an app through the
    alias and the caller's direct connection reach the same database, so add_in()
    takes it (it compares ``current_database()``); a connection to another database
    is still refused, with nothing written."""
    url = bouncer.url(ALIAS, schema=f"t_{uuid.uuid4().hex[:16]}", migrate="true", **OPTIONS)
    direct, _, _ = parse_postgres_url(os.environ[PG_ENV])
    app = Conveyor(url)
    try:
        await app.open()
        async with await psycopg.AsyncConnection.connect(direct) as conn, conn.transaction():
            task = await app.add_in(conn, "pgb:parked", {"n": 1})
        assert (await app.get(task.id)).status is Status.QUEUED
        other = psycopg.conninfo.make_conninfo(direct, dbname="postgres")
        async with await psycopg.AsyncConnection.connect(other) as conn:
            with pytest.raises(ConfigurationError, match="not 'postgres'"):
                async with conn.transaction():
                    await app.add_in(conn, "pgb:parked", {"n": 2})
        assert await app.count({"action": "pgb:parked"}) == 1
    finally:
        await app.close()
        drop_pg_schema(url)
