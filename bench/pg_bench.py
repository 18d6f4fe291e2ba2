"""conveyor on PostgreSQL against its peers and the raw-psycopg floor, in one run.

    .venv/bin/python bench/pg_bench.py [--n 10000] [--deep 1000000] [--peers PATH] [--quick]

Every piece runs in a fresh database on one PostgreSQL server (created for the
piece and dropped after it), on this machine, in this one invocation:

conveyor (no-op async handlers, concurrency 100 per worker process)
  - enqueue-to-start latency: tasks sent one by one, 10 ms apart, to 2 idle
    worker processes;
  - enqueue one by one: ``await app.add(...)``, N1 tasks, no worker running;
  - enqueue in bulk: ``await app.add_many(...)`` of all N tasks in one call, as the
    peers' bulk APIs are called (``--bulk`` sets a smaller call size);
  - drain those N tasks with 2 worker processes (and 1 with ``--drain-procs 1,2``);
  - claim throughput with 1,000 and with ``--deep`` (default 1,000,000) tasks queued:
    ``storage.claim`` of 100 + ``storage.finish`` of those 100, in this process,
    timed over windows of 1,000 tasks (7 of each, alternating between the two
    queues); then 2 worker processes drain the first N tasks of the deep queue.
raw psycopg (the minimal SQL a queue needs per task: insert, SKIP LOCKED claim, finish)
  - 1 row per transaction (N1 rows) and 100 rows per transaction (N rows);
    claim+finish in 1 and in 2 processes.
peers (procrastinate, pgqueuer, oban): not run here. Their latest results from
  the shared peer harness (bench-peers/results/c_*.json, ``--peers``) are read
  and set beside conveyor's figures with ratios.

Drain clock: the worker processes boot, connect and report "ready"; the bench
then writes "go" to their stdin (the clock starts: ``time.time()``), and the
clock stops at the last ``finished_at`` written in the task rows (the bench
polls with cheap EXISTS queries to know when the queue is empty). See
docs/benchmarks.md for what each figure means.

The script also runs its own worker processes: ``pg_bench.py _worker ROLE
CONFIG_JSON`` (not for direct use).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import glob
import importlib.metadata
import json
import logging
import math
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
DEFAULT_PEERS = os.path.join(os.path.dirname(ROOT), "shared", "bench-peers", "results")
PEER_SET = ("c_procrastinate", "c_pgqueuer", "c_oban")

CONCURRENCY = 100  # conveyor tasks in flight per worker process
RAW_BATCH = 100  # rows per transaction in the batched raw baseline
CLAIM_BATCH = 100  # tasks per claim in the claim-throughput piece (a worker's default)
CLAIM_WINDOW = 1_000  # tasks per timed claim window
CLAIM_WINDOWS = 7  # windows per queue depth (alternating shallow and deep)
SHALLOW = 1_000  # the small queue of the claim-throughput piece
LAT_SPACING = 0.010  # seconds between latency tasks
LAT_PROCS = 2  # idle worker processes during the latency piece (as in the peer harness)
# tasks sent (10 ms apart) and run before the latency is measured: the peer harness
# measures latency with workers that have just drained its 10,000 tasks, warm
# (connections open, the server's caches of the tables filled, statements prepared)
LAT_WARMUP = 50
POLL = 0.025  # seconds between completion polls of the bench process (cheap EXISTS queries)
ACTION = "bench:noop"
CONVEYOR_PIECES = ("latency", "single", "drain", "claim")
TABLE = '"conveyor".tasks'


class BenchError(Exception):
    """A piece of the benchmark could not be measured."""


# ---------------------------------------------------------------------------
# small helpers


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    xs = sorted(values)
    k = max(0, math.ceil(p / 100.0 * len(xs)) - 1)
    return xs[k]


def lat_summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "max_ms": max(ms),
            "mean_ms": statistics.mean(ms), "n": len(ms)}


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "src_dirty": bool(git("status", "--porcelain", "--", "src"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def machine_info() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        mem = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem,
        "kernel": platform.release(), "python": platform.python_version(),
        "conveyor": importlib.metadata.version("conveyor"),
        "psycopg": importlib.metadata.version("psycopg"),
        "psycopg_pool": importlib.metadata.version("psycopg-pool"),
        "git": git_info(),
    }


# ---------------------------------------------------------------------------
# the server and its databases


def with_query(url: str, **options: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in options]
    query.extend(options.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def libpq(url: str) -> str:
    """A URL without conveyor's own options, for plain psycopg connections."""
    parts = urlsplit(url)
    ours = {"schema", "migrate", "pool_min", "pool_max", "poll_interval", "listen"}
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ours]
    return urlunsplit(parts._replace(query=urlencode(query)))


def server_url(given: str | None) -> str:
    url = given or os.environ.get("CONVEYOR_BENCH_PG") or os.environ.get("CONVEYOR_TEST_PG")
    if url:
        return url
    proc = subprocess.run([os.path.join(ROOT, "scripts", "pg-setup")], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"no PostgreSQL: scripts/pg-setup failed: {proc.stderr.strip()}")
    return proc.stdout.strip().splitlines()[-1]


def server_info(url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(libpq(url), autocommit=True) as conn:
        out: dict[str, Any] = {}
        for key in ("server_version", "synchronous_commit", "fsync", "shared_buffers",
                    "wal_sync_method", "max_connections"):
            row = conn.execute(f"SHOW {key}").fetchone()
            out[key] = row[0] if row else None
        row = conn.execute("SELECT inet_server_addr()::text").fetchone()
        out["address"] = row[0] if row else None
        return out


@contextlib.contextmanager
def fresh_db(server: str, piece: str, keep: bool = False) -> Iterator[str]:
    """An empty database for one piece; yields its URL; dropped afterwards."""
    import psycopg

    name = f"cvbench_{piece}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq(server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_db(libpq(server), name)
    finally:
        if not keep:
            with psycopg.connect(libpq(server), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str) -> None:
    from conveyor.storage.postgres import migrate as pg_migrate

    asyncio.run(pg_migrate(url))


# ---------------------------------------------------------------------------
# child processes


_LIVE: set[Child] = set()


class Child:
    """A worker process of this script, in its own process group.

    Talks over lines: the child prints ``ready``/``started``/``done ...`` on
    stdout; the bench writes ``go``/``stop`` to its stdin. ``close()`` always
    leaves nothing behind: graceful stop, then SIGTERM, then SIGKILL.
    """

    def __init__(self, role: str, cfg: dict[str, Any], log_path: str) -> None:
        self.role = role
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), "_worker", role, json.dumps(cfg)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _LIVE.add(self)
        threading.Thread(target=self._read, name=f"read-{role}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def tail_note(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-15:]).strip()
        except OSError:
            tail = ""
        return f"; its log ends:\n{tail}" if tail else " (its log is empty)"

    def expect(self, word: str, timeout: float) -> list[str]:
        """Wait for a stdout line starting with ``word``; return its other fields."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"{self.role} worker sent no {word!r} within {timeout:.0f} s"
                                 f"{self.tail_note()}") from None
            if line is None:
                self.lines.put(None)
                rc = self.proc.wait()
                raise BenchError(f"{self.role} worker exited (rc {rc}) before {word!r}"
                                 f"{self.tail_note()}")
            parts = line.split()
            if parts and parts[0] == word:
                return parts[1:]

    def send(self, word: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{word}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, grace: float = 15.0) -> int | None:
        if self.alive():
            self.send("stop")
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        self._killpg(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()
        _LIVE.discard(self)
        return self.proc.returncode

    def _killpg(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def log_issues(self) -> list[str]:
        """Warning, error and traceback lines the child wrote."""
        try:
            with open(self.log_path, errors="replace") as f:
                return [ln.rstrip() for ln in f
                        if any(w in ln for w in ("WARNING", "ERROR", "Traceback", "Error"))][:20]
        except OSError:
            return []


def _kill_all_children() -> None:
    for child in list(_LIVE):
        child._killpg(signal.SIGKILL)
        _LIVE.discard(child)


atexit.register(_kill_all_children)


@contextlib.contextmanager
def children(kids: list[Child]) -> Iterator[list[Child]]:
    try:
        yield kids
    finally:
        for kid in kids:
            kid.close()


def spawn(role: str, cfg: dict[str, Any], tmp: str, tag: str, count: int) -> list[Child]:
    kids: list[Child] = []
    try:
        for j in range(count):
            kids.append(Child(role, cfg, os.path.join(tmp, f"{tag}.{role}{j}.log")))
    except BaseException:
        for kid in kids:
            kid.close(grace=1)
        raise
    return kids


def release(kids: list[Child], boot_timeout: float = 60.0) -> tuple[float, float]:
    """Wait until every child is ready, then send go to all; returns the moment of go
    as ``(time.perf_counter(), time.time())``."""
    for kid in kids:
        kid.expect("ready", boot_timeout)
    t_go, t_go_wall = time.perf_counter(), time.time()
    for kid in kids:
        kid.send("go")
    return t_go, t_go_wall


def wait_until(done: Callable[[], bool], timeout: float, kids: list[Child], what: str) -> float:
    """Poll ``done`` every POLL seconds; return the perf_counter when it first holds."""
    deadline = time.perf_counter() + timeout
    while True:
        if done():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise BenchError(f"{what}: not done after {timeout:.0f} s")
        dead = [k for k in kids if not k.alive()]
        if dead:
            if done():
                return time.perf_counter()
            raise BenchError(f"{what}: {dead[0].role} worker exited "
                             f"(rc {dead[0].proc.returncode}){dead[0].tail_note()}")
        time.sleep(POLL)


# ---------------------------------------------------------------------------
# worker processes (run as ``pg_bench.py _worker ROLE CONFIG``)


def _say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def _stdin_commands(on_go: Callable[[], object], on_stop: Callable[[], object]) -> None:
    def read() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "go":
                on_go()
            elif cmd == "stop":
                break
        on_stop()

    threading.Thread(target=read, name="stdin", daemon=True).start()


async def _conveyor_worker(cfg: dict[str, Any]) -> None:
    from conveyor import Conveyor

    app = Conveyor(cfg["url"], concurrency=cfg["concurrency"])
    if cfg.get("stamp"):
        @app.handler(ACTION)
        async def stamp(ctx: Any) -> float:
            return time.time()  # when the handler started, for the latency
    else:
        @app.handler(ACTION)
        async def noop(ctx: Any) -> None:
            return None

    await app.open()
    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()
    _stdin_commands(lambda: loop.call_soon_threadsafe(go.set),
                    lambda: loop.call_soon_threadsafe(stop.set))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _say("ready")
    waiters = [asyncio.ensure_future(go.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    try:
        if not stop.is_set():
            await app.start()
            _say("started", repr(time.time()))
            await stop.wait()
    finally:
        await app.close()
    _say("closed")


RAW_CLAIM = ("UPDATE jobs SET status = 1 WHERE id IN (SELECT id FROM jobs WHERE status = 0 "
             "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, args")
RAW_FINISH_1 = "UPDATE jobs SET status = 2 WHERE id = %s"
RAW_FINISH_N = "UPDATE jobs SET status = 2 WHERE id = ANY(%s)"


def _raw_worker(cfg: dict[str, Any]) -> None:
    """Claim and finish until the queue is empty: the minimal SQL per task, each
    statement its own transaction (autocommit)."""
    import psycopg

    conn = psycopg.connect(cfg["url"], autocommit=True)
    batch = int(cfg["batch"])
    go, stopped = threading.Event(), threading.Event()

    def on_stop() -> None:
        stopped.set()
        go.set()

    _stdin_commands(go.set, on_stop)
    _say("ready")
    go.wait()
    if stopped.is_set():
        return
    done = 0
    t_first = None
    while not stopped.is_set():
        rows = conn.execute(RAW_CLAIM, (batch,)).fetchall()
        if not rows:
            # SKIP LOCKED passes over rows another worker holds: stop only when none are left
            left = conn.execute("SELECT count(*) FROM jobs WHERE status = 0").fetchone()
            if left is None or left[0] == 0:
                break
            continue
        if t_first is None:
            t_first = time.time()
        for _id, args in rows:
            json.loads(args)  # "run" the no-op task
        if batch == 1:
            conn.execute(RAW_FINISH_1, (rows[0][0],))
        else:
            conn.execute(RAW_FINISH_N, ([r[0] for r in rows],))
        done += len(rows)
    t_end = time.time()
    conn.close()
    _say("done", done, repr(t_first or t_end), repr(t_end))


def worker_main(role: str, cfg: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if role == "conveyor":
        asyncio.run(_conveyor_worker(cfg))
    elif role == "raw":
        _raw_worker(cfg)
    else:
        raise SystemExit(f"unknown worker role {role!r}")


# ---------------------------------------------------------------------------
# conveyor


class Reader:
    """The bench process's own connection for polling and cross-checks."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(libpq(url), autocommit=True)

    def one(self, sql: str, params: Any = None) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def all(self, sql: str, params: Any = None) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    def busy(self) -> bool:
        """Whether any task is queued or running. Two EXISTS probes along the indexes: a
        count(*) every few ms over 10,000 rows would cost the server a good share of a
        core, which the workers need."""
        return bool(self.one(
            f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE status = 'queued') "
            f"OR EXISTS (SELECT 1 FROM {TABLE} WHERE status = 'running')"))

    def left(self) -> int:
        return int(self.one(f"SELECT count(*) FROM {TABLE} WHERE status IN ('queued', 'running')"))

    def close(self) -> None:
        self.conn.close()


async def conveyor_single(url: str, cfg: Config) -> dict[str, Any]:
    """``app.add`` one by one, N1 tasks, no worker running."""
    from conveyor import Conveyor

    app = Conveyor(url)
    try:
        await app.open()
        await app.add(ACTION, {"i": -1})  # warm: the pool's first connection
        t = time.perf_counter()
        for i in range(cfg.n1):
            await app.add(ACTION, {"i": i})
        secs = time.perf_counter() - t
        count = await app.count({"status": "queued"})
    finally:
        await app.close()
    if count != cfg.n1 + 1:
        raise BenchError(f"expected {cfg.n1 + 1} queued tasks, found {count}")
    return {"n": cfg.n1, "seconds": secs, "rate": cfg.n1 / secs}


async def conveyor_fill(url: str, n: int, bulk: int) -> dict[str, Any]:
    """``app.add_many`` of ``bulk`` tasks per call, n tasks, timed."""
    from conveyor import Conveyor

    app = Conveyor(url)
    try:
        await app.open()
        batches = [[(ACTION, {"i": i}) for i in range(s, min(n, s + bulk))]
                   for s in range(0, n, bulk)]
        t = time.perf_counter()
        for batch in batches:
            await app.add_many(batch)
        secs = time.perf_counter() - t
        count = await app.count({"status": "queued"})
    finally:
        await app.close()
    if count != n:
        raise BenchError(f"expected {n} queued tasks, found {count}")
    return {"n": n, "batch": bulk, "seconds": secs, "rate": n / secs}


def conveyor_drain(url: str, procs: int, cfg: Config, tag: str) -> dict[str, Any]:
    """Drain the N tasks queued in ``url`` with ``procs`` worker processes.

    drain = N / (last ``finished_at`` - go), from the rows; the bench polls (cheaply)
    only to know when to look."""
    kids = spawn("conveyor", {"url": url, "concurrency": CONCURRENCY}, cfg.tmp, tag, procs)
    reader = Reader(url)
    out: dict[str, Any] = {"n": cfg.n, "procs": procs, "concurrency": CONCURRENCY}
    try:
        with children(kids):
            t_go, t_go_wall = release(kids)
            t_seen = wait_until(lambda: not reader.busy(), cfg.drain_timeout, kids,
                                f"conveyor drain ({procs} procs)")
            started = [float(k.expect("started", 10)[0]) for k in kids]
            out["start_call_s"] = [s - t_go_wall for s in started]
        out["worker_log_issues"] = [i for k in kids for i in k.log_issues()]
        out["worker_rc"] = [k.proc.returncode for k in kids]
        statuses = dict(reader.all(f"SELECT status, count(*) FROM {TABLE} GROUP BY status"))
        out["statuses"] = statuses
        first, last = reader.all(f"SELECT min(started_at), max(finished_at) FROM {TABLE}")[0]
        out["seconds"] = last - t_go_wall
        out["rate"] = cfg.n / out["seconds"]
        out["polled_seconds"] = t_seen - t_go
        out["polled_rate"] = cfg.n / out["polled_seconds"]
        out["db_first_start_after_go_s"] = first - t_go_wall
        out["db_rate_first_start_to_last_finish"] = cfg.n / (last - first)
        # the longest time in which no task finished, after the first one did
        [[gap]] = reader.all(
            f"SELECT coalesce(max(d), 0) FROM (SELECT finished_at - lag(finished_at) "
            f"OVER (ORDER BY finished_at) AS d FROM {TABLE}) AS g")
        out["longest_stall_s"] = gap
        out["reruns"] = reader.one(
            f"SELECT count(*) FROM {TABLE} WHERE attempts > 1 OR rescues > 0")
        # tasks, not change rows: a batched row carries the change of every task in
        # its ``ids``
        out["succeeded_per_process"] = [int(r[0]) for r in reader.all(
            'SELECT sum(coalesce(cardinality(ids), 1)) FROM "conveyor".changes '
            "WHERE event = 'succeeded' GROUP BY origin ORDER BY 1 DESC")]
        if statuses.get("succeeded") != cfg.n:
            raise BenchError(f"conveyor drain ({procs} procs): statuses {statuses}")
    finally:
        reader.close()
    return out


async def _send_latency_tasks(url: str, cfg: Config) -> dict[str, Any]:
    from conveyor import Conveyor

    app = Conveyor(url)
    try:
        await app.open()
        for k in range(LAT_WARMUP):
            await app.add(ACTION, {"warm": k, "ts": time.time()})
            await asyncio.sleep(LAT_SPACING)
        deadline = time.monotonic() + 60
        while await app.count({"status": "succeeded"}) < LAT_WARMUP:
            if time.monotonic() > deadline:
                raise BenchError("conveyor latency: the warm-up tasks did not all run")
            await asyncio.sleep(0.05)
        await asyncio.sleep(cfg.idle)
        t0 = time.time() + LAT_SPACING
        for j in range(cfg.lat):
            delay = t0 + j * LAT_SPACING - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await app.add(ACTION, {"j": j, "ts": time.time()})
        span = time.time() - t0
    finally:
        await app.close()
    return {"send_span_s": span}


def conveyor_latency(server: str, cfg: Config) -> dict[str, Any]:
    with fresh_db(server, "latency", cfg.keep) as url:
        migrate(url)
        kids = spawn("conveyor", {"url": url, "concurrency": CONCURRENCY, "stamp": True},
                     cfg.tmp, "conveyor-latency", LAT_PROCS)
        out: dict[str, Any] = {"samples": cfg.lat, "warmup": LAT_WARMUP, "procs": LAT_PROCS,
                               "concurrency": CONCURRENCY, "idle_s": cfg.idle,
                               "spacing_ms": LAT_SPACING * 1000}
        with children(kids):
            release(kids)
            for kid in kids:
                kid.expect("started", 30)
            out.update(asyncio.run(_send_latency_tasks(url, cfg)))
            reader = Reader(url)
            try:
                wait_until(lambda: not reader.busy(), 60, kids, "conveyor latency")
                rows = reader.all(f"SELECT payload, created_at, started_at, result, status, "
                                  f"worker IS NULL FROM {TABLE}")
            finally:
                reader.close()
        out["worker_log_issues"] = [i for k in kids for i in k.log_issues()]
    bad = [r[4] for r in rows if r[4] != "succeeded"]
    if len(rows) != cfg.lat + LAT_WARMUP or bad:
        raise BenchError(f"conveyor latency: {len(rows)} tasks, not succeeded: {bad[:5]}")
    warm = sorted((r for r in rows if "warm" in r[0]), key=lambda r: int(r[0]["warm"]))
    # the first tasks of fresh workers, kept for the record
    out["warmup_ms"] = [round((float(r[3]) - float(r[0]["ts"])) * 1000, 3) for r in warm]
    rows = [r for r in rows if "j" in r[0]]
    rows.sort(key=lambda r: int(r[0]["j"]))  # in the order they were sent
    handler = [(float(r[3]) - float(r[0]["ts"])) * 1000 for r in rows]
    claim = [(r[2] - r[1]) * 1000 for r in rows]
    out.update(lat_summary(handler))
    out["db_started_minus_created_ms"] = lat_summary(claim)
    # every sample, in the order sent (10 ms apart): where the tail falls in time
    out["each_ms"] = [round(x, 3) for x in handler]
    out["each_db_started_minus_created_ms"] = [round(x, 3) for x in claim]
    return out


# -- claim throughput against queue depth ---------------------------------------------


def copy_fill(url: str, n: int) -> dict[str, Any]:
    """Queue n tasks fast: COPY rows like the ones ``add`` writes into the tasks table
    (the change-feed trigger still runs, once for the whole COPY), then VACUUM ANALYZE."""
    import psycopg

    from conveyor.model import new_id

    chunk = 20_000
    t = time.perf_counter()
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cur:
            columns = ("id, action, payload, status, priority, run_at, created_at, updated_at, "
                       "version, event, origin")
            with cur.copy(f"COPY {TABLE} ({columns}) FROM STDIN") as copy:
                for s in range(0, n, chunk):
                    now = repr(time.time())
                    lines = [f'{new_id()}\t{ACTION}\t{{"i": {i}}}\tqueued\t0\t{now}\t{now}\t'
                             f"{now}\t1\tadded\tbench-fill\n"
                             for i in range(s, min(n, s + chunk))]
                    copy.write("".join(lines))
        t_copy = time.perf_counter() - t
        conn.execute(f"VACUUM ANALYZE {TABLE}")
        conn.execute('VACUUM ANALYZE "conveyor".changes')
        queued = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE status = 'queued'"
                              ).fetchone()
    secs = time.perf_counter() - t
    if queued is None or queued[0] < n:
        raise BenchError(f"copy fill: expected {n} queued, found {queued}")
    return {"n": n, "copy_s": t_copy, "with_vacuum_s": secs, "rate": n / t_copy}


async def claim_window(storage: Any) -> dict[str, Any]:
    """Claim CLAIM_WINDOW tasks, CLAIM_BATCH at a time, finishing each batch (succeeded)
    before the next claim, as a worker does; timed."""
    from conveyor.model import Status, Transition
    from conveyor.storage import Completion

    ok = Transition(Status.SUCCEEDED)
    done = 0
    claim_s = finish_s = 0.0
    t0 = time.perf_counter()
    while done < CLAIM_WINDOW:
        t = time.perf_counter()
        tasks = await storage.claim("bench-claimer", [ACTION],
                                    min(CLAIM_BATCH, CLAIM_WINDOW - done), 60.0)
        claim_s += time.perf_counter() - t
        if not tasks:
            raise BenchError(f"claim returned nothing after {done} tasks")
        t = time.perf_counter()
        refused = await storage.finish(
            "bench-claimer", [Completion(x.id, x.token or "", ok) for x in tasks])
        finish_s += time.perf_counter() - t
        if refused:
            raise BenchError(f"finish refused {len(refused)} tasks")
        done += len(tasks)
    secs = time.perf_counter() - t0
    return {"n": done, "seconds": secs, "rate": done / secs,
            "claim_ms_per_100": claim_s / done * 100 * 1000,
            "finish_ms_per_100": finish_s / done * 100 * 1000}


async def claim_rounds(shallow_url: str, deep_url: str | None) -> dict[str, list[Any]]:
    """CLAIM_WINDOWS rounds; each refills the shallow queue to SHALLOW tasks (untimed)
    and times one window on it and one on the deep queue, in alternating order, so
    that both see the same conditions."""
    from conveyor.storage.postgres import PostgresStorage

    shallow = PostgresStorage(shallow_url)
    deep = PostgresStorage(deep_url) if deep_url else None
    out: dict[str, list[Any]] = {"shallow": [], "deep": []}
    await shallow.open()
    try:
        if deep is not None:
            await deep.open()
        for i in range(CLAIM_WINDOWS):
            await asyncio.to_thread(copy_fill, shallow_url, SHALLOW)
            order = [("shallow", shallow), ("deep", deep)]
            if i % 2:
                order.reverse()
            for name, storage in order:
                if storage is not None:
                    out[name].append(await claim_window(storage))
    finally:
        await shallow.close()
        if deep is not None:
            await deep.close()
    return out


def claim_plan(url: str) -> str:
    """EXPLAIN of the claim's locking scan at this depth (should be an index scan)."""
    import psycopg

    with psycopg.connect(libpq(url), autocommit=True) as conn:
        rows = conn.execute(
            f"EXPLAIN SELECT id FROM {TABLE} WHERE status = 'queued' AND action = %s "
            "AND run_at <= %s AND (pickup_deadline IS NULL OR pickup_deadline > %s) "
            "ORDER BY priority, run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED",
            (ACTION, time.time(), time.time())).fetchall()
    return "\n".join(r[0] for r in rows)


def claim_depth(server: str, cfg: Config) -> dict[str, Any]:
    """Claim throughput with SHALLOW tasks queued, and with cfg.deep tasks queued."""
    out: dict[str, Any] = {"window": CLAIM_WINDOW, "windows": CLAIM_WINDOWS,
                           "batch": CLAIM_BATCH}
    with contextlib.ExitStack() as stack:
        shallow_url = stack.enter_context(fresh_db(server, "claim_shallow", cfg.keep))
        migrate(shallow_url)
        deep_url = None
        if cfg.deep:
            deep_url = stack.enter_context(fresh_db(server, "claim_deep", cfg.keep))
            migrate(deep_url)
            print(f"    filling {cfg.deep:,} tasks (COPY) ...", file=sys.stderr, flush=True)
            fill = copy_fill(deep_url, cfg.deep)
        wins = asyncio.run(claim_rounds(shallow_url, deep_url))
        out["shallow"] = {"queued": SHALLOW, "windows": wins["shallow"],
                          "rate": statistics.median(w["rate"] for w in wins["shallow"])}
        if deep_url is None:
            return out
        out["deep"] = {"queued": cfg.deep, "fill": fill, "windows": wins["deep"],
                       "plan": claim_plan(deep_url),
                       "rate": statistics.median(w["rate"] for w in wins["deep"])}
        out["ratio_deep_to_shallow"] = out["deep"]["rate"] / out["shallow"]["rate"]
        # the same deep queue, drained by real workers: its first N tasks
        out["deep_drain"] = deep_drain(deep_url, cfg)
    return out


def deep_drain(url: str, cfg: Config) -> dict[str, Any]:
    """2 worker processes on the deep queue: N / (the N-th ``finished_at`` after go - go)."""
    reader = Reader(url)
    kids = spawn("conveyor", {"url": url, "concurrency": CONCURRENCY}, cfg.tmp,
                 "conveyor-deep", 2)
    out: dict[str, Any] = {"n": cfg.n, "procs": 2}
    nth = (f"SELECT finished_at FROM {TABLE} WHERE finished_at >= %s "
           "ORDER BY finished_at OFFSET %s LIMIT 1")
    try:
        with children(kids):
            _, t_go_wall = release(kids)
            wait_until(lambda: reader.one(nth, (t_go_wall, cfg.n - 1)) is not None,
                       cfg.drain_timeout, kids, "conveyor deep drain")
        last = float(reader.one(nth, (t_go_wall, cfg.n - 1)))
        first = float(reader.one(f"SELECT min(started_at) FROM {TABLE} "
                                 "WHERE started_at >= %s", (t_go_wall,)))
        out["seconds"] = last - t_go_wall
        out["rate"] = cfg.n / out["seconds"]
        out["db_first_start_after_go_s"] = first - t_go_wall
        out["db_rate_first_start_to_last_finish"] = cfg.n / (last - first)
        out["worker_log_issues"] = [i for k in kids for i in k.log_issues()]
    finally:
        reader.close()
    return out


def run_conveyor(server: str, cfg: Config, res: dict[str, Any]) -> None:
    out = res.setdefault("conveyor", {})
    if "latency" in cfg.only:
        step(out, "latency", lambda: conveyor_latency(server, cfg))
    if "single" in cfg.only:
        with fresh_db(server, "single", cfg.keep) as url:
            migrate(url)
            step(out, "enqueue_single", lambda: asyncio.run(conveyor_single(url, cfg)))
    if "drain" in cfg.only:
        for procs in cfg.drain_procs:
            with fresh_db(server, f"drain{procs}", cfg.keep) as url:
                migrate(url)
                fill = step(out, f"enqueue_bulk_{procs}",
                            lambda u=url: asyncio.run(conveyor_fill(u, cfg.n, cfg.bulk)))
                if fill is not None:
                    step(out, f"drain_{procs}", lambda u=url, p=procs: conveyor_drain(
                        u, p, cfg, f"conveyor-drain{p}"))
    if "claim" in cfg.only:
        step(out, "claim_depth", lambda: claim_depth(server, cfg))


# ---------------------------------------------------------------------------
# raw psycopg baseline


RAW_INSERT = "INSERT INTO jobs (args) VALUES (%s)"
RAW_INSERT_N = "INSERT INTO jobs (args) SELECT unnest(%s::text[])"


def raw_table(conn: Any) -> None:
    """(Re)create the raw baseline's table: ``jobs`` with a partial index on ready rows."""
    conn.execute("DROP TABLE IF EXISTS jobs")
    conn.execute("CREATE TABLE jobs (id bigserial PRIMARY KEY, args text NOT NULL, "
                 "status smallint NOT NULL DEFAULT 0)")
    conn.execute("CREATE INDEX jobs_ready ON jobs (id) WHERE status = 0")


def raw_insert(url: str, n: int, batch: int) -> float:
    """Create the table and insert n rows, ``batch`` rows per transaction; return the seconds."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        raw_table(conn)
        payloads = [json.dumps({"i": i}) for i in range(n)]
        t = time.perf_counter()
        if batch == 1:
            for p in payloads:
                conn.execute(RAW_INSERT, (p,))
        else:
            for s in range(0, n, batch):
                conn.execute(RAW_INSERT_N, (payloads[s:s + batch],))
        return time.perf_counter() - t


def raw_config(server: str, cfg: Config, batch: int, procs: int) -> dict[str, Any]:
    import psycopg

    n = cfg.n1 if batch == 1 else cfg.n
    with fresh_db(server, f"raw_b{batch}_p{procs}", cfg.keep) as url:
        ins = raw_insert(url, n, batch)
        out: dict[str, Any] = {"n": n, "batch": batch, "procs": procs,
                               "insert_s": ins, "insert_rate": n / ins}
        kids = spawn("raw", {"url": url, "batch": batch}, cfg.tmp, f"raw-b{batch}-p{procs}",
                     procs)
        with children(kids):
            t_go, _ = release(kids)
            reports = [kid.expect("done", cfg.drain_timeout) for kid in kids]
            t_end = time.perf_counter()
        out["process_s"] = t_end - t_go
        out["process_rate"] = n / out["process_s"]
        out["done_per_process"] = [int(r[0]) for r in reports]
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM jobs WHERE status != 2").fetchone()
        left = row[0] if row else -1
        total = sum(int(r[0]) for r in reports)
        if total != n or left:
            raise BenchError(f"raw baseline: {total} done, {left} left")
    return out


RAW_BULK_ROUNDS = 3


def raw_bulk(server: str, cfg: Config) -> dict[str, Any]:
    """The least a bulk enqueue can cost the server: all N rows of the raw table in
    one statement (``INSERT ... SELECT unnest(...)``, the form of pgqueuer's bulk
    path) and in one ``COPY``, each in its own transaction; the median of
    ``RAW_BULK_ROUNDS`` rounds on a fresh table."""
    import psycopg

    payloads = [json.dumps({"i": i}) for i in range(cfg.n)]
    rates: dict[str, list[float]] = {"unnest": [], "copy": []}
    with fresh_db(server, "raw_bulk", cfg.keep) as url, \
            psycopg.connect(url, autocommit=True) as conn:
        for _ in range(RAW_BULK_ROUNDS):
            for how, ins in rates.items():
                raw_table(conn)
                t = time.perf_counter()
                if how == "unnest":
                    conn.execute(RAW_INSERT_N, (payloads,))
                else:
                    with conn.transaction(), conn.cursor().copy(
                            "COPY jobs (args) FROM STDIN") as copy:
                        for p in payloads:
                            copy.write_row((p,))
                ins.append(cfg.n / (time.perf_counter() - t))
                row = conn.execute("SELECT count(*) FROM jobs").fetchone()
                if not row or row[0] != cfg.n:
                    raise BenchError(f"raw bulk ({how}): {row} rows, expected {cfg.n}")
    return {"n": cfg.n, "rounds": RAW_BULK_ROUNDS,
            "unnest_rate": statistics.median(rates["unnest"]), "unnest_all": rates["unnest"],
            "copy_rate": statistics.median(rates["copy"]), "copy_all": rates["copy"]}


def run_raw(server: str, cfg: Config, res: dict[str, Any]) -> None:
    out = res.setdefault("raw", {})
    step(out, "bulk", lambda: raw_bulk(server, cfg))
    for batch in (1, RAW_BATCH):
        for procs in (1, 2):
            step(out, f"b{batch}_p{procs}",
                 lambda b=batch, p=procs: raw_config(server, cfg, b, p))


# ---------------------------------------------------------------------------
# peers (read from the shared harness's results)


def load_peers(path: str | None, names: tuple[str, ...]) -> dict[str, Any]:
    """Medians of each peer's runs in ``path``/c_*.json (the latest harness results)."""
    if not path:
        return {"path": None, "peers": {}}
    out: dict[str, Any] = {"path": os.path.abspath(path), "peers": {}, "ignored": []}
    for file in sorted(glob.glob(os.path.join(path, "c_*.json"))):
        key = os.path.basename(file)[:-5]
        try:
            with open(file) as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            out["ignored"].append(f"{key}: {exc}")
            continue
        if doc.get("backend") != "postgres":
            continue
        if key not in names:
            out["ignored"].append(f"{key}: not in --peer-set")
            continue
        runs = [r for r in doc.get("runs", []) if "error" not in r]
        if not runs:
            out["ignored"].append(f"{key}: no successful run")
            continue
        summary: dict[str, Any] = {
            "library": doc.get("library"), "version": doc.get("version"),
            "workers": doc.get("workers"), "bulk_api": doc.get("bulk_api"),
            "runs": len(runs), "n": doc.get("n"),
            "started": [r.get("started") for r in runs],
            "file_mtime": time.strftime("%Y-%m-%dT%H:%M:%S",
                                        time.localtime(os.path.getmtime(file))),
        }
        for k in ("single_tps", "bulk_tps", "drain_tps", "lat_p50_ms", "lat_p99_ms"):
            values = [float(r[k]) for r in runs if r.get(k) is not None]
            summary[k] = statistics.median(values) if values else None
            summary[k + "_all"] = values
        out["peers"][key] = summary
    return out


def best_peer(peers: dict[str, Any], key: str, lowest: bool = False
              ) -> tuple[str | None, float | None]:
    found = [(name, p[key]) for name, p in peers.get("peers", {}).items()
             if p.get(key) is not None]
    if not found:
        return None, None
    name, value = (min if lowest else max)(found, key=lambda x: x[1])
    return name, value


# ---------------------------------------------------------------------------
# the run


class Config:
    def __init__(self, a: argparse.Namespace, tmp: str) -> None:
        self.quick = a.quick
        self.n = a.n if a.n is not None else (2_000 if a.quick else 10_000)
        self.n1 = a.n1 if a.n1 is not None else (500 if a.quick else 10_000)
        self.n1 = min(self.n1, self.n)
        self.lat = a.lat if a.lat is not None else (50 if a.quick else 200)
        self.bulk = a.bulk if a.bulk is not None else self.n
        self.deep = a.deep if a.deep is not None else (0 if a.quick else 1_000_000)
        self.idle = 1.5 if a.quick else 2.0
        self.drain_procs = [int(x) for x in a.drain_procs.split(",")]
        self.drain_timeout = a.drain_timeout
        self.tmp = tmp
        self.keep = a.keep
        only = set(a.only.split(",")) if a.only else {"conveyor", "raw"}
        if "conveyor" in only:
            only |= set(CONVEYOR_PIECES)
        unknown = only - {"conveyor", "raw", *CONVEYOR_PIECES}
        if unknown:
            raise SystemExit(f"--only: unknown piece(s) {', '.join(sorted(unknown))}")
        self.only = only

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "n1": self.n1, "latency_samples": self.lat, "idle_s": self.idle,
                "deep": self.deep, "quick": self.quick, "concurrency": CONCURRENCY,
                "bulk_batch": self.bulk, "raw_batch": RAW_BATCH, "claim_batch": CLAIM_BATCH,
                "claim_window": CLAIM_WINDOW, "claim_windows": CLAIM_WINDOWS,
                "shallow": SHALLOW, "drain_procs": self.drain_procs,
                "latency_procs": LAT_PROCS, "pieces": sorted(self.only)}


def step(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """Run one measured piece; on failure record the error and go on."""
    t = time.perf_counter()
    print(f"  {key} ...", file=sys.stderr, flush=True)
    try:
        value = fn()
    except BenchError as exc:
        out[key] = {"error": str(exc)}
        print(f"  {key} FAILED: {exc}", file=sys.stderr, flush=True)
        return None
    except Exception as exc:
        import traceback

        out[key] = {"error": repr(exc), "trace": traceback.format_exc()[-3000:]}
        print(f"  {key} FAILED: {exc!r}", file=sys.stderr, flush=True)
        return None
    out[key] = value
    brief = ""
    if isinstance(value, dict):
        for k in ("rate", "process_rate", "p50_ms", "ratio_deep_to_shallow"):
            if k in value:
                brief = f" {k}={value[k]:,.2f}"
                break
    print(f"  {key} done in {time.perf_counter() - t:.1f} s{brief}", file=sys.stderr,
          flush=True)
    return value


def get(res: dict[str, Any], *path: str) -> Any:
    cur: Any = res
    for p in path:
        if not isinstance(cur, dict) or p not in cur or cur[p] is None:
            return None
        cur = cur[p]
    return cur


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}/s"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f} ms"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def comparisons(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each conveyor figure against each of its baselines."""
    def c(*p: str) -> Any:
        return get(res, "conveyor", *p)

    def raw(*p: str) -> Any:
        return get(res, "raw", *p)

    peers = res.get("peers", {})

    def peer(key: str, what: str, lowest: bool = False) -> list[tuple[str, Any]]:
        rows = []
        for name, p in sorted(peers.get("peers", {}).items()):
            rows.append((f"{p.get('library', name)} {what}", p.get(key)))
        return rows

    b = RAW_BATCH
    bulk_batch = get(res, "config", "bulk_batch") or 0
    drain_key = "drain_2" if get(res, "conveyor", "drain_2") else "drain_1"
    drain_procs = drain_key[-1]
    rows = [
        ("enqueue 1-by-1 (add)", c("enqueue_single", "rate"), "rate", [
            ("raw insert, 1 row/tx", raw("b1_p1", "insert_rate")),
            *peer("single_tps", "enqueue 1-by-1"),
        ]),
        (f"enqueue bulk (add_many x{bulk_batch:,})", c(f"enqueue_bulk_{drain_procs}", "rate"),
         "rate", [
            (f"raw insert, {b} rows/tx", raw(f"b{b}_p1", "insert_rate")),
            ("raw insert, all in 1 statement", raw("bulk", "unnest_rate")),
            ("raw COPY, all in 1 transaction", raw("bulk", "copy_rate")),
            *peer("bulk_tps", "bulk enqueue"),
        ]),
        (f"drain, {drain_procs} worker procs", c(drain_key, "rate"), "rate", [
            *peer("drain_tps", "drain, 2 procs"),
            (f"raw claim+finish {b}/tx, {drain_procs} procs",
             raw(f"b{b}_p{drain_procs}", "process_rate")),
            (f"raw claim+finish 1/tx, {drain_procs} procs",
             raw(f"b1_p{drain_procs}", "process_rate")),
        ]),
    ]
    if drain_key == "drain_2" and c("drain_1", "rate") is not None:
        rows.append(("drain, 1 worker proc", c("drain_1", "rate"), "rate", [
            (f"raw claim+finish {b}/tx, 1 proc", raw(f"b{b}_p1", "process_rate")),
            ("raw claim+finish 1/tx, 1 proc", raw("b1_p1", "process_rate")),
        ]))
    rows += [
        ("latency p50 (enqueue->start)", c("latency", "p50_ms"), "ms",
         peer("lat_p50_ms", "latency p50")),
        ("latency p99 (enqueue->start)", c("latency", "p99_ms"), "ms",
         peer("lat_p99_ms", "latency p99")),
        (f"claim+finish, {get(res, 'config', 'deep') or 0:,} queued",
         c("claim_depth", "deep", "rate"), "rate", [
             (f"claim+finish, {SHALLOW:,} queued", c("claim_depth", "shallow", "rate")),
         ]),
    ]
    out = []
    for figure, value, unit, bases in rows:
        if not bases and value is not None:  # latency without peer results: still shown
            bases = [("(no peer results)", None)]
        for base, bval in bases:
            r = ratio(value, bval)
            out.append({"figure": figure, "conveyor": value, "unit": unit, "baseline": base,
                        "baseline_value": bval, "ratio": r})
    return out


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    peers = res.get("peers", {})
    drain_key = "drain_2" if get(res, "conveyor", "drain_2") else "drain_1"
    bulk_key = f"enqueue_bulk_{drain_key[-1]}"
    d_name, d_best = best_peer(peers, "drain_tps")
    b_name, b_best = best_peer(peers, "bulk_tps")
    l_name, l_best = best_peer(peers, "lat_p50_ms", lowest=True)
    checks = [
        (f"drain ahead of the fastest peer ({d_name}); aim 2x",
         ratio(get(res, "conveyor", drain_key, "rate"), d_best), 1.0, ">="),
        (f"bulk enqueue >= 3x the fastest peer's bulk ({b_name})",
         ratio(get(res, "conveyor", bulk_key, "rate"), b_best), 3.0, ">="),
        (f"latency p50 no worse than the best peer ({l_name})",
         ratio(get(res, "conveyor", "latency", "p50_ms"), l_best), 1.0, "<="),
        ("claim throughput at depth within 20% of 1,000 queued",
         get(res, "conveyor", "claim_depth", "ratio_deep_to_shallow"), 0.8, ">="),
    ]
    out: list[dict[str, Any]] = []
    for name, value, goal, op in checks:
        if value is None:
            met = None
        elif op == ">=":
            met = value >= goal
        else:
            met = value <= goal
        out.append({"target": name, "value": value, "goal": goal, "op": op, "met": met})
    drain = ratio(get(res, "conveyor", drain_key, "rate"), d_best)
    out.append({"target": "drain 2x the fastest peer (the aim)", "value": drain, "goal": 2.0,
                "op": ">=", "met": None if drain is None else drain >= 2.0})
    return out


def render(res: dict[str, Any], cfg: Config) -> str:
    m, s = res["machine"], res.get("server", {})
    lines = [
        f"conveyor PostgreSQL benchmark: N={cfg.n:,}, N1={cfg.n1:,}, latency samples={cfg.lat}, "
        f"concurrency={CONCURRENCY}/worker proc, deep queue={cfg.deep:,}"
        + (" (--quick)" if cfg.quick else ""),
        f"machine: {m['nproc']} CPU ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, psycopg {m['psycopg']}, conveyor {m['conveyor']} @ "
        f"{str(m['git'].get('commit', '?'))[:10]}"
        + (" (src modified)" if m["git"].get("src_dirty") else ""),
        f"server: PostgreSQL {s.get('server_version')} at {s.get('address')}, synchronous_commit="
        f"{s.get('synchronous_commit')}, fsync={s.get('fsync')}, shared_buffers="
        f"{s.get('shared_buffers')}",
        f"load average (1 min) at start {res['load_start']:.2f}, at end "
        f"{res.get('load_end', float('nan')):.2f} (other work on the machine skews every figure)",
        "",
        "conveyor figure against its baselines (ratio = conveyor / baseline; for latency lower "
        "is better)",
    ]
    comp = comparisons(res)
    w1 = max(len(r["figure"]) for r in comp)
    w3 = max(len(r["baseline"]) for r in comp)
    head = f"  {'figure':<{w1}}  {'conveyor':>11}  {'baseline':<{w3}}  {'baseline':>11}  ratio"
    lines += [head, "  " + "-" * (len(head) - 2)]
    last = None
    for r in comp:
        f = fmt_ms if r["unit"] == "ms" else fmt_rate
        first = r["figure"] != last
        last = r["figure"]
        lines.append(f"  {(r['figure'] if first else ''):<{w1}}  "
                     f"{(f(r['conveyor']) if first else ''):>11}  {r['baseline']:<{w3}}  "
                     f"{f(r['baseline_value']):>11}  {fmt_ratio(r['ratio'])}")

    lines += ["", "raw psycopg baseline (jobs table, partial index on ready rows, autocommit "
              "statements)"]
    lines.append(f"    {'rows/tx':>7}  {'procs':>5}  {'rows':>6}  {'insert':>11}  "
                 f"{'claim+finish':>13}")
    for batch in (1, RAW_BATCH):
        for procs in (1, 2):
            r = get(res, "raw", f"b{batch}_p{procs}") or {}
            if "error" in r:
                lines.append(f"    {batch:>7}  {procs:>5}  error: "
                             f"{r['error'].splitlines()[0][:70]}")
                continue
            lines.append(f"    {batch:>7}  {procs:>5}  {r.get('n', 0):>6}  "
                         f"{fmt_rate(r.get('insert_rate')):>11}  "
                         f"{fmt_rate(r.get('process_rate')):>13}")

    cd = get(res, "conveyor", "claim_depth") or {}
    if cd and "error" not in cd:
        lines += ["", f"claim throughput (storage.claim of {CLAIM_BATCH} + finish, windows of "
                  f"{CLAIM_WINDOW:,} tasks, median of {CLAIM_WINDOWS})"]
        for key in ("shallow", "deep"):
            d = cd.get(key)
            if not d:
                continue
            rates = ", ".join(f"{w['rate']:,.0f}" for w in d["windows"])
            ms = statistics.median(w["claim_ms_per_100"] for w in d["windows"])
            fms = statistics.median(w["finish_ms_per_100"] for w in d["windows"])
            lines.append(f"    {d['queued']:>9,} queued: {fmt_rate(d['rate']):>9}  (windows: "
                         f"{rates}; claim {ms:.1f} ms + finish {fms:.1f} ms per 100)")
        if "deep" in cd:
            f = cd["deep"]["fill"]
            lines.append(f"    deep fill: COPY {f['n']:,} rows in {f['copy_s']:.1f} s "
                         f"({f['rate']:,.0f}/s), with VACUUM ANALYZE {f['with_vacuum_s']:.1f} s")
            dd = cd.get("deep_drain") or {}
            if "rate" in dd:
                lines.append(f"    2 worker procs, first {dd['n']:,} of the deep queue: "
                             f"{fmt_rate(dd['rate'])} (drain of a {cfg.n:,} queue: "
                             f"{fmt_rate(get(res, 'conveyor', 'drain_2', 'rate'))})")

    peers = res.get("peers", {})
    lines += ["", f"peers (medians of their runs in {peers.get('path') or '-'})"]
    for _name, p in sorted(peers.get("peers", {}).items()):
        lines.append(f"    {p['library']:<14} {p['version']}: 1-by-1 {fmt_rate(p['single_tps'])}"
                     f", bulk {fmt_rate(p['bulk_tps'])}, drain {fmt_rate(p['drain_tps'])}, "
                     f"p50/p99 {fmt_ms(p['lat_p50_ms'])} / {fmt_ms(p['lat_p99_ms'])}; "
                     f"{p['runs']} run(s) from {min(x or '?' for x in p['started'])}")
    for note in peers.get("ignored", []):
        lines.append(f"    (ignored {note})")

    lines += ["", "targets"]
    for t in targets(res):
        v = t["value"]
        shown = "-" if v is None else f"{v:.2f}x"
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        lines.append(f"  {t['target']:<62} {shown:>8}  {verdict}")
    b_name, b_best = best_peer(peers, "bulk_tps")
    if b_best is not None:
        lines.append(f"  for scale: 3x {b_name}'s bulk is {fmt_rate(3 * b_best)}; the raw "
                     f"1-column table takes {fmt_rate(get(res, 'raw', 'bulk', 'unnest_rate'))} "
                     f"in 1 statement, {fmt_rate(get(res, 'raw', 'bulk', 'copy_rate'))} by COPY")

    notes = []
    for sect in ("conveyor", "raw"):
        for k, v in (res.get(sect) or {}).items():
            if isinstance(v, dict) and "error" in v:
                notes.append(f"  ERROR {sect}.{k}: {v['error'].splitlines()[0][:200]}")
    for k in ("drain_1", "drain_2", "latency"):
        issues = get(res, "conveyor", k, "worker_log_issues")
        if issues:
            notes.append(f"  conveyor.{k}: worker logged {len(issues)} warning/error line(s), "
                         f"first: {issues[0][:160]}")
        split = get(res, "conveyor", k, "succeeded_per_process")
        if k == "drain_2" and split is not None and (len(split) < 2
                                                     or min(split) < 0.1 * max(split)):
            notes.append(f"  conveyor.{k}: tasks per worker process were uneven: {split}")
        stall = get(res, "conveyor", k, "longest_stall_s")
        if stall is not None and stall > 0.5:
            notes.append(f"  conveyor.{k}: no task finished for {stall:.2f} s at one point")
        reruns = get(res, "conveyor", k, "reruns")
        if reruns:
            notes.append(f"  conveyor.{k}: {reruns} task(s) ran more than once")
    if notes:
        lines += ["", "notes", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=None,
                    help="PostgreSQL server URL; each piece creates a database there "
                         "(default: $CONVEYOR_BENCH_PG, $CONVEYOR_TEST_PG, or scripts/pg-setup)")
    ap.add_argument("--n", type=int, default=None,
                    help="tasks per drain, bulk enqueue and batched raw run "
                         "(default 10000; 2000 with --quick)")
    ap.add_argument("--bulk", type=int, default=None,
                    help="tasks per add_many call of the bulk enqueue (default: all N in one "
                         "call, as the peers' bulk APIs are called)")
    ap.add_argument("--n1", type=int, default=None,
                    help="tasks enqueued one by one, and rows of the 1-row/tx raw baseline "
                         "(default 10000; 500 with --quick)")
    ap.add_argument("--lat", type=int, default=None,
                    help="latency samples (default 200; 50 with --quick)")
    ap.add_argument("--deep", type=int, default=None,
                    help="the deep queue of the claim-throughput piece (default 1000000, "
                         "about a minute here; 0 with --quick): 0 measures only the "
                         "1,000-task queue")
    ap.add_argument("--drain-procs", default="2",
                    help="worker process counts for the drain, comma-separated (default 2)")
    ap.add_argument("--peers", default=DEFAULT_PEERS if os.path.isdir(DEFAULT_PEERS) else None,
                    help="folder with the peer harness's results (c_*.json); default "
                         f"{DEFAULT_PEERS} when it exists; '' for none")
    ap.add_argument("--peer-set", default=",".join(PEER_SET),
                    help="peer result files to compare with (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="small run for a smoke test")
    ap.add_argument("--only", default=None,
                    help="comma-separated pieces: conveyor (= latency,single,drain,claim), "
                         "latency, single, drain, claim, raw (default: conveyor,raw)")
    ap.add_argument("--drain-timeout", type=float, default=180.0,
                    help="seconds a drain may take before it counts as failed (default 180)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the databases (cvbench_*) and worker logs")
    ap.add_argument("--out", default=None, help="JSON results path "
                                                "(default bench/results/pg-<timestamp>.json)")
    a = ap.parse_args(argv)
    for name in ("n", "bulk", "n1", "lat"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if a.deep is not None and a.deep < 0:
        ap.error("--deep must be 0 or more")
    if a.drain_timeout <= 0:
        ap.error("--drain-timeout must be more than 0")
    if a.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
        ap.error(f"--out {a.out!r}: its folder does not exist")
    if a.peers and not os.path.isdir(a.peers):
        ap.error(f"--peers {a.peers!r}: no such folder ('' for no peers)")
    unknown_peers = {p for p in a.peer_set.split(",") if p} - set(PEER_SET)
    if unknown_peers:
        ap.error(f"--peer-set: unknown peer(s) {', '.join(sorted(unknown_peers))} "
                 f"(known: {', '.join(PEER_SET)})")
    if a.only:
        unknown = set(a.only.split(",")) - {"conveyor", "raw", *CONVEYOR_PIECES}
        if unknown:
            ap.error(f"--only: unknown piece(s) {', '.join(sorted(unknown))}")
    procs = a.drain_procs.split(",")
    if not procs or any(p not in ("1", "2") for p in procs):
        ap.error("--drain-procs takes 1, 2 or 1,2 (the figures compare 2 processes, as the "
                 "peers ran, and 1)")

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(f"interrupted by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    import tempfile

    tmp = tempfile.mkdtemp(prefix="conveyor-pgbench-")
    cfg = Config(a, tmp)
    server = server_url(a.db)
    import psycopg

    try:
        psycopg.connect(server, connect_timeout=10).close()
    except psycopg.Error as exc:  # one line, not a traceback
        raise SystemExit(f"cannot connect to PostgreSQL: {' '.join(str(exc).split())}") \
            from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res: dict[str, Any] = {"bench": "postgres",
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "command": " ".join([os.path.relpath(sys.executable, ROOT),
                                                os.path.relpath(__file__, ROOT),
                                                *sys.argv[1:]]),
                           "config": cfg.to_json(), "machine": machine_info(),
                           "server": server_info(server)}
    res["load_start"] = os.getloadavg()[0]
    t_all = time.perf_counter()
    try:
        res["peers"] = load_peers(a.peers or None, tuple(a.peer_set.split(",")))
        if cfg.only & set(CONVEYOR_PIECES):
            print("conveyor", file=sys.stderr)
            run_conveyor(server, cfg, res)
        if "raw" in cfg.only:
            print("raw psycopg", file=sys.stderr)
            run_raw(server, cfg, res)
    finally:
        _kill_all_children()
        res["load_end"] = os.getloadavg()[0]
        res["seconds_total"] = time.perf_counter() - t_all
        res["comparisons"] = comparisons(res)
        res["targets"] = targets(res)
        os.makedirs(RESULTS_DIR, exist_ok=True)
        out = a.out or os.path.join(RESULTS_DIR, f"pg-{stamp}.json")
        with open(out + ".tmp", "w") as f:
            json.dump(res, f, indent=1, default=str)
        os.replace(out + ".tmp", out)
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(render(res, cfg))
    print(f"\n(total {res['seconds_total']:.0f} s; results in {os.path.relpath(out, ROOT)})")
    failed = any(isinstance(v, dict) and "error" in v
                 for sect in ("conveyor", "raw") for v in (res.get(sect) or {}).values())
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit(main())
