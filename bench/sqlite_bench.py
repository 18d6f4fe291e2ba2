"""conveyor on SQLite against huey's SQLite queue and the raw-sqlite3 floor, in one run.

    .venv/bin/python bench/sqlite_bench.py [--n 20000] [--sync FULL|NORMAL] [--quick]

Every piece runs on a fresh database file in a temporary folder, at the same
``synchronous`` setting, on this machine, in this one invocation:

one-by-one enqueue, N1 each, conveyor / raw sqlite3 / huey interleaved in rounds
  (each is one durable commit, so all three should see the same disk);
conveyor (no-op async handlers; a worker's concurrency, 600 by default, bounds the
  size of its claims: batching is what the drain figure measures)
  - enqueue in batches: ``await app.add_many(...)`` of 1,000 tasks, N tasks;
  - drain N queued tasks with 1 and with 2 worker processes;
  - enqueue-to-start latency: tasks sent one by one, 10 ms apart, to an idle
    worker in another process.
raw sqlite3 (the minimal SQL a queue needs per task: insert, claim, finish)
  - 1 row per transaction (N1 rows) and 100 rows per transaction (N rows);
    claim+finish in 1 and in 2 processes.
huey (SqliteHuey, WAL, its consumer with process workers)
  - drain N with 2 and with 1 worker process; latency with an idle consumer.

Drain clock: the worker processes boot, connect and report "ready"; the bench
then writes "go" to their stdin (clock starts, ``time.perf_counter``), and the
clock stops when the bench process first observes all N tasks done (it polls
every 10 ms). See bench/README.md for what each figure means.

The script also runs its own worker processes: ``sqlite_bench.py _worker ROLE
CONFIG_JSON`` (not for direct use).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import queue
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "600"))
"""conveyor tasks in flight per worker process (each claim takes up to this many)."""
BULK = 1_000  # tasks per add_many call
RAW_BATCH = 100  # rows per transaction in the batched raw baseline
ROUNDS = 40  # rounds of the interleaved one-by-one enqueue block (N1/40 each)
LAT_SPACING = 0.010  # seconds between latency tasks
POLL = 0.010  # seconds between completion polls of the bench process
ACTION = "bench:noop"


class BenchError(Exception):
    """A piece of the benchmark could not be measured."""


# ---------------------------------------------------------------------------
# small helpers


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    xs = sorted(values)
    k = max(0, math.ceil(p / 100.0 * len(xs)) - 1)
    return xs[k]


def fresh_db(tmp: str, name: str) -> str:
    path = os.path.join(tmp, f"{name}.db")
    for ext in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + ext)
    return path


def conveyor_url(path: str, sync: str) -> str:
    return f"sqlite:///{os.path.abspath(path)}?synchronous={sync.lower()}"


def fs_type(path: str) -> str:
    """The file system type of the mount holding ``path`` (tmpfs would make fsync free)."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "src_dirty": bool(git("status", "--porcelain", "--", "src"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def machine_info(tmp: str) -> dict[str, Any]:
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
        "sqlite": sqlite3.sqlite_version, "tmp_dir": tmp, "tmp_fs": fs_type(tmp),
        "conveyor": importlib.metadata.version("conveyor"),
        "huey": importlib.metadata.version("huey"),
        "git": git_info(),
    }


# ---------------------------------------------------------------------------
# child processes


_LIVE: set[Child] = set()


class Child:
    """A worker process of this script, in its own process group.

    Talks over lines: the child prints ``ready``/``started``/``done ...`` on
    stdout; the bench writes ``go``/``stop`` to its stdin. ``close()`` always
    leaves nothing behind: graceful stop, then SIGTERM, then SIGKILL to the
    whole process group (huey's workers are grandchildren).
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

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def tail_note(self) -> str:
        tail = self.log_tail().strip()
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

    def close(self, grace: float = 15.0, interrupt: bool = False) -> int | None:
        """Stop the child (``stop`` on stdin, or SIGINT with ``interrupt``) and reap its group."""
        if self.alive():
            if interrupt:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGINT)
            else:
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
        self._killpg(signal.SIGKILL)  # grandchildren too, even if the leader is gone
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
def children(*made: Child, interrupt: bool = False) -> Iterator[list[Child]]:
    kids = list(made)
    try:
        yield kids
    finally:
        for kid in kids:
            kid.close(interrupt=interrupt)


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
    """Wait until every child is ready, then send go to all.

    Returns the moment of go as ``(time.perf_counter(), time.time())``.
    """
    for kid in kids:
        kid.expect("ready", boot_timeout)
    t_go, t_go_wall = time.perf_counter(), time.time()
    for kid in kids:
        kid.send("go")
    return t_go, t_go_wall


def wait_until(done: Callable[[], bool], timeout: float, kids: list[Child],
               what: str) -> float:
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


class Progress:
    """Remembers the longest time the done-count did not move (stalls) after go."""

    def __init__(self) -> None:
        self.last_n: int | None = None
        self.last_t = 0.0
        self.longest = 0.0

    def see(self, n: int) -> None:
        now = time.perf_counter()
        if self.last_n is None:
            self.last_n, self.last_t = n, now
        elif n != self.last_n:
            self.longest = max(self.longest, now - self.last_t)
            self.last_n, self.last_t = n, now


# ---------------------------------------------------------------------------
# worker processes (run as ``sqlite_bench.py _worker ROLE CONFIG``)


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

    app = Conveyor(cfg["url"], concurrency=cfg["concurrency"], batch_size=cfg["concurrency"])
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


def _raw_connect(path: str, sync: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchone()
    conn.execute(f"PRAGMA synchronous={sync}")
    return conn


def _raw_worker(cfg: dict[str, Any]) -> None:
    """Claim and finish until the queue is empty: the minimal SQL per task."""
    conn = _raw_connect(cfg["db"], cfg["sync"])
    batch = cfg["batch"]
    claim = ("UPDATE jobs SET status = 1 WHERE id IN (SELECT id FROM jobs WHERE status = 0 "
             f"ORDER BY priority, id LIMIT {batch:d}) RETURNING id, payload")
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
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(claim).fetchall()
        conn.execute("COMMIT")
        if not rows:
            break
        if t_first is None:
            t_first = time.time()
        for _id, payload in rows:
            json.loads(payload)  # "run" the no-op task
        if batch == 1:
            conn.execute("UPDATE jobs SET status = 2 WHERE id = ?", (rows[0][0],))
        else:
            ids = [r[0] for r in rows]
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"UPDATE jobs SET status = 2 WHERE id IN ({','.join('?' * len(ids))})",
                         ids)
            conn.execute("COMMIT")
        done += len(rows)
    t_end = time.time()
    conn.close()
    _say("done", done, repr(t_first or t_end), repr(t_end))


# huey: the queue object and the task are built from the config in each process,
# so the bench process (producer) and the consumer register the same task name.

class _Record:
    """The huey task's record file: one ``O_APPEND`` write per line, per process."""

    path = ""
    fd = -1
    pid = -1
    sync_said = False

    @classmethod
    def write(cls, text: str) -> None:
        pid = os.getpid()
        if cls.pid != pid:  # huey forks its worker processes
            cls.fd = os.open(cls.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            cls.pid = pid
            cls.sync_said = False
        os.write(cls.fd, text.encode())


def make_huey(db: str, sync: str, record: str = "") -> tuple[Any, Any]:
    """SqliteHuey on ``db`` and its no-op task.

    huey's SqliteStorage can only leave ``synchronous`` alone (SQLite's default,
    FULL here), or set it to FULL/OFF (``fsync=True/False``). For FULL we use
    its default; for NORMAL a subclass sets the pragma on every connection.
    """
    from huey import SqliteHuey
    from huey.storage import SqliteStorage

    class NormalSyncStorage(SqliteStorage):
        def _create_connection(self) -> sqlite3.Connection:
            conn = super()._create_connection()
            conn.execute("pragma synchronous=1")
            return conn

    if sync == "FULL":
        h = SqliteHuey(name="bench", filename=db)
    else:
        h = SqliteHuey(name="bench", filename=db, storage_class=NormalSyncStorage)
    _Record.path = record

    @h.task(name="noop")
    def noop(i: int, ts: float = 0.0) -> None:
        t0 = time.time()
        if not _Record.sync_said or _Record.pid != os.getpid():
            # what the worker's own connection really uses
            (s,), = h.storage.sql("pragma synchronous", results=True)
            (j,), = h.storage.sql("pragma journal_mode", results=True)
            _Record.write(f"S {os.getpid()} {s} {j}\n")
            _Record.sync_said = True
        _Record.write(f"T {i} {ts!r} {t0!r} {time.time()!r}\n")
        return None

    return h, noop


def _huey_consumer(cfg: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("huey").setLevel(logging.WARNING)  # like huey_consumer -q
    h, _ = make_huey(cfg["db"], cfg["sync"], cfg["record"])
    # the defaults of `huey_consumer -k process -w W`
    consumer = h.create_consumer(workers=cfg["workers"], worker_type="process")
    _say("ready")
    line = sys.stdin.readline()
    if line.strip() != "go":
        return
    consumer.run()  # until SIGINT (graceful) or SIGTERM


def worker_main(role: str, cfg: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if role == "conveyor":
        asyncio.run(_conveyor_worker(cfg))
    elif role == "raw":
        _raw_worker(cfg)
    elif role == "huey":
        _huey_consumer(cfg)
    else:
        raise SystemExit(f"unknown worker role {role!r}")


# ---------------------------------------------------------------------------
# conveyor


def _open_reader(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    return conn


def _conveyor_left(conn: sqlite3.Connection) -> int:
    """Tasks not yet ended (cheap: both counts use partial indexes)."""
    return int(conn.execute(
        "SELECT (SELECT count(*) FROM conveyor_tasks WHERE status = 'queued') + "
        "(SELECT count(*) FROM conveyor_tasks WHERE status = 'running')").fetchone()[0])


async def conveyor_fill(db: str, cfg: Config) -> dict[str, Any]:
    """add_many of BULK tasks per call, N tasks, timed."""
    from conveyor import Conveyor

    app = Conveyor(conveyor_url(db, cfg.sync))
    try:
        await app.open()
        batches = [[(ACTION, {"i": i}) for i in range(s, min(cfg.n, s + BULK))]
                   for s in range(0, cfg.n, BULK)]
        t = time.perf_counter()
        for batch in batches:
            await app.add_many(batch)
        secs = time.perf_counter() - t
        count = await app.count({"status": "queued"})
    finally:
        await app.close()
    if count != cfg.n:
        raise BenchError(f"expected {cfg.n} queued tasks, found {count}")
    return {"n": cfg.n, "batch": BULK, "seconds": secs, "rate": cfg.n / secs}


def conveyor_drain(db: str, procs: int, cfg: Config) -> dict[str, Any]:
    url = conveyor_url(db, cfg.sync)
    kids = spawn("conveyor", {"url": url, "concurrency": CONCURRENCY}, cfg.tmp,
                 f"conveyor-drain{procs}", procs)
    reader = _open_reader(db)
    out: dict[str, Any] = {"n": cfg.n, "procs": procs, "concurrency": CONCURRENCY}
    try:
        with children(*kids):
            progress = Progress()

            def done() -> bool:
                left = _conveyor_left(reader)
                progress.see(left)
                return left == 0

            t_go, t_go_wall = release(kids)
            t_end = wait_until(done, cfg.drain_timeout, kids, f"conveyor drain ({procs} procs)")
            out["seconds"] = t_end - t_go
            out["rate"] = cfg.n / out["seconds"]
            out["longest_stall_s"] = progress.longest
            started = [float(k.expect("started", 10)[0]) for k in kids]
            out["start_call_s"] = [s - t_go_wall for s in started]
        out["worker_log_issues"] = [i for k in kids for i in k.log_issues()]
        out["worker_rc"] = [k.proc.returncode for k in kids]
        # cross-checks from the database itself
        rows = dict(reader.execute(
            "SELECT status, count(*) FROM conveyor_tasks GROUP BY status").fetchall())
        out["statuses"] = rows
        first, last = reader.execute(
            "SELECT min(started_at), max(finished_at) FROM conveyor_tasks").fetchone()
        out["db_first_start_after_go_s"] = first - t_go_wall
        out["db_last_finish_after_go_s"] = last - t_go_wall
        out["db_rate_first_start_to_last_finish"] = cfg.n / (last - first)
        out["reruns"] = reader.execute(
            "SELECT count(*) FROM conveyor_tasks WHERE attempts > 1 OR rescues > 0").fetchone()[0]
        # tasks, not change rows: a row with a batch carries the change of every
        # task in it (a JSON array of [task_id, version] pairs)
        per_proc = reader.execute(
            "SELECT sum(CASE WHEN batch IS NULL THEN 1 ELSE json_array_length(batch) END) "
            "FROM conveyor_changes WHERE event = 'succeeded' "
            "GROUP BY origin ORDER BY 1 DESC").fetchall()
        out["succeeded_per_process"] = [r[0] for r in per_proc]
        if rows.get("succeeded") != cfg.n:
            raise BenchError(f"conveyor drain ({procs} procs): statuses {rows}")
    finally:
        reader.close()
    return out


async def _send_latency_tasks(url: str, cfg: Config) -> dict[str, Any]:
    from conveyor import Conveyor

    app = Conveyor(url)
    try:
        await app.open()
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


def conveyor_latency(cfg: Config) -> dict[str, Any]:
    db = fresh_db(cfg.tmp, "conveyor-latency")
    url = conveyor_url(db, cfg.sync)
    kids = spawn("conveyor", {"url": url, "concurrency": CONCURRENCY, "stamp": True}, cfg.tmp,
                 "conveyor-latency", 1)
    out: dict[str, Any] = {"samples": cfg.lat, "procs": 1, "concurrency": CONCURRENCY,
                           "idle_s": cfg.idle, "spacing_ms": LAT_SPACING * 1000}
    with children(*kids):
        release(kids)
        kids[0].expect("started", 30)
        out.update(asyncio.run(_send_latency_tasks(url, cfg)))
        reader = _open_reader(db)
        try:
            wait_until(lambda: _conveyor_left(reader) == 0, 60, kids, "conveyor latency")
            rows = reader.execute(
                "SELECT payload, created_at, started_at, result, status FROM conveyor_tasks"
            ).fetchall()
        finally:
            reader.close()
    out["worker_log_issues"] = kids[0].log_issues()
    bad = [r[4] for r in rows if r[4] != "succeeded"]
    if len(rows) != cfg.lat or bad:
        raise BenchError(f"conveyor latency: {len(rows)} tasks, not succeeded: {bad[:5]}")
    handler = [(float(json.loads(r[3])) - json.loads(r[0])["ts"]) * 1000 for r in rows]
    claim = [(r[2] - r[1]) * 1000 for r in rows]
    out.update(lat_summary(handler))
    out["db_started_minus_created_ms"] = lat_summary(claim)
    return out


def lat_summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "max_ms": max(ms),
            "mean_ms": statistics.mean(ms), "n": len(ms)}


def run_conveyor(cfg: Config, res: dict[str, Any]) -> None:
    out = res.setdefault("conveyor", {})
    for procs in (1, 2):
        db = fresh_db(cfg.tmp, f"conveyor-drain{procs}")
        fill = step(out, f"enqueue_bulk_{procs}", lambda db=db: asyncio.run(conveyor_fill(db, cfg)))
        if fill is not None:
            step(out, f"drain_{procs}", lambda db=db, procs=procs: conveyor_drain(db, procs, cfg))
    step(out, "latency", lambda: conveyor_latency(cfg))


# ---------------------------------------------------------------------------
# raw sqlite3 baseline


RAW_INSERT = "INSERT INTO jobs (payload) VALUES (?)"


def raw_create(db: str, sync: str) -> sqlite3.Connection:
    conn = _raw_connect(db, sync)
    conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, priority REAL NOT NULL DEFAULT 0,"
                 " payload TEXT NOT NULL, status INTEGER NOT NULL DEFAULT 0)")
    conn.execute("CREATE INDEX jobs_ready ON jobs (priority, id) WHERE status = 0")
    return conn


def raw_insert(db: str, n: int, batch: int, sync: str) -> float:
    """Create the table and insert n rows, ``batch`` rows per transaction; return the seconds."""
    conn = raw_create(db, sync)
    try:
        payloads = [json.dumps({"i": i}) for i in range(n)]
        t = time.perf_counter()
        if batch == 1:
            for p in payloads:
                conn.execute(RAW_INSERT, (p,))
        else:
            for s in range(0, n, batch):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(RAW_INSERT, [(p,) for p in payloads[s:s + batch]])
                conn.execute("COMMIT")
        return time.perf_counter() - t
    finally:
        conn.close()


def raw_config(cfg: Config, batch: int, procs: int) -> dict[str, Any]:
    # one row per transaction means one fsync per step at FULL: N1 rows keep it short
    n = cfg.n1 if batch == 1 else cfg.n
    db = fresh_db(cfg.tmp, f"raw-b{batch}-p{procs}")
    ins = raw_insert(db, n, batch, cfg.sync)
    out: dict[str, Any] = {"n": n, "batch": batch, "procs": procs,
                           "insert_s": ins, "insert_rate": n / ins}
    kids = spawn("raw", {"db": db, "sync": cfg.sync, "batch": batch}, cfg.tmp,
                 f"raw-b{batch}-p{procs}", procs)
    with children(*kids):
        t_go, t_go_wall = release(kids)
        reports = []
        for kid in kids:
            reports.append(kid.expect("done", cfg.drain_timeout))
        t_end = time.perf_counter()
    total = sum(int(r[0]) for r in reports)
    out["process_s"] = t_end - t_go
    out["process_rate"] = n / out["process_s"]
    out["worker_last_end_after_go_s"] = max(float(r[2]) for r in reports) - t_go_wall
    out["done_per_process"] = [int(r[0]) for r in reports]
    conn = sqlite3.connect(db)
    left = conn.execute("SELECT count(*) FROM jobs WHERE status != 2").fetchone()[0]
    conn.close()
    if total != n or left:
        raise BenchError(f"raw baseline: {total} done, {left} left")
    return out


def run_raw(cfg: Config, res: dict[str, Any]) -> None:
    out = res.setdefault("raw", {})
    for batch in (1, RAW_BATCH):
        for procs in (1, 2):
            step(out, f"b{batch}_p{procs}", lambda b=batch, p=procs: raw_config(cfg, b, p))


# ---------------------------------------------------------------------------
# huey


class Records:
    """Tails the record file the huey task writes (one O_APPEND line per task)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.tasks: dict[int, tuple[float, float, float]] = {}
        self.dups = 0
        self.sync: dict[int, tuple[int, str]] = {}

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            p = line.split()
            if p and p[0] == b"T":
                i = int(p[1])
                if i in self.tasks:
                    self.dups += 1
                self.tasks[i] = (float(p[2]), float(p[3]), float(p[4]))
            elif p and p[0] == b"S":
                self.sync[int(p[1])] = (int(p[2]), p[3].decode())
        return len(self.tasks)


SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def huey_fill(db: str, cfg: Config) -> dict[str, Any]:
    """Queue N tasks for a drain: the rows huey's enqueue writes, in one transaction.

    (Setup only: huey has no bulk enqueue, and N one-by-one fsyncs would take
    minutes on a slow disk; its one-by-one rate is measured in the enqueue block.)
    """
    h, noop = make_huey(db, cfg.sync)
    try:
        rows = [(h.storage.name, h.serialize_task(noop.s(i)), 0) for i in range(cfg.n)]
        t = time.perf_counter()
        with h.storage.db(commit=True) as curs:
            curs.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)
        secs = time.perf_counter() - t
        depth = h.pending_count()
    finally:
        h.storage.close()
    if depth != cfg.n:
        raise BenchError(f"huey: expected {cfg.n} queued tasks, found {depth}")
    return {"n": cfg.n, "seconds": secs}


def huey_drain(cfg: Config, workers: int) -> dict[str, Any]:
    tag = f"huey-drain{workers}"
    db = fresh_db(cfg.tmp, tag)
    record = os.path.join(cfg.tmp, f"{tag}.rec")
    fill = huey_fill(db, cfg)
    kids = spawn("huey", {"db": db, "sync": cfg.sync, "record": record, "workers": workers},
                 cfg.tmp, tag, 1)
    rec = Records(record)
    out: dict[str, Any] = {"n": cfg.n, "procs": workers, "fill_s": fill["seconds"]}
    with children(*kids, interrupt=True):
        progress = Progress()

        def done() -> bool:
            got = rec.poll()
            progress.see(got)
            return got >= cfg.n

        t_go, t_go_wall = release(kids)
        t_end = wait_until(done, cfg.drain_timeout, kids, f"huey drain ({workers} procs)")
    out["seconds"] = t_end - t_go
    out["rate"] = cfg.n / out["seconds"]
    out["longest_stall_s"] = progress.longest
    out["record_first_start_after_go_s"] = min(v[1] for v in rec.tasks.values()) - t_go_wall
    out["record_last_end_after_go_s"] = max(v[2] for v in rec.tasks.values()) - t_go_wall
    out["duplicates"] = rec.dups
    out["task_pids"] = len(rec.sync)
    out["worker_synchronous"] = sorted({SYNC_NAMES.get(s, s) for s, _ in rec.sync.values()})
    out["worker_journal_mode"] = sorted({j for _, j in rec.sync.values()})
    out["worker_log_issues"] = kids[0].log_issues()
    return out


def huey_latency(cfg: Config) -> dict[str, Any]:
    db = fresh_db(cfg.tmp, "huey-latency")
    record = os.path.join(cfg.tmp, "huey-latency.rec")
    h, noop = make_huey(db, cfg.sync)
    kids = spawn("huey", {"db": db, "sync": cfg.sync, "record": record, "workers": 2},
                 cfg.tmp, "huey-latency", 1)
    rec = Records(record)
    out: dict[str, Any] = {"samples": cfg.lat, "procs": 2, "idle_s": cfg.idle,
                           "spacing_ms": LAT_SPACING * 1000}
    try:
        with children(*kids, interrupt=True):
            release(kids)
            time.sleep(cfg.idle)
            t0 = time.time() + LAT_SPACING
            for j in range(cfg.lat):
                delay = t0 + j * LAT_SPACING - time.time()
                if delay > 0:
                    time.sleep(delay)
                noop(j, time.time())
            out["send_span_s"] = time.time() - t0
            wait_until(lambda: rec.poll() >= cfg.lat, 60, kids, "huey latency")
    finally:
        h.storage.close()
    ms = [(t0_ - ts) * 1000 for ts, t0_, _ in rec.tasks.values()]
    out.update(lat_summary(ms))
    out["worker_synchronous"] = sorted({SYNC_NAMES.get(s, s) for s, _ in rec.sync.values()})
    return out


def run_huey(cfg: Config, res: dict[str, Any]) -> None:
    out = res.setdefault("huey", {})
    step(out, "drain_2", lambda: huey_drain(cfg, 2))
    step(out, "drain_1", lambda: huey_drain(cfg, 1))
    step(out, "latency", lambda: huey_latency(cfg))


# ---------------------------------------------------------------------------
# one-by-one enqueue of all three, interleaved


async def enqueue_interleaved(cfg: Config) -> dict[str, dict[str, Any]]:
    """N1 one-by-one enqueues each for conveyor, raw sqlite3 and huey, in rounds.

    Each of these enqueues is one durable commit, so its rate follows the
    disk's fsync speed, which drifts with other work on the machine. Running
    the three in alternating rounds gives each the same conditions.
    """
    from conveyor import Conveyor

    who = [w for w in ("conveyor", "raw", "huey") if w in cfg.only]
    secs = dict.fromkeys(who, 0.0)
    counts: dict[str, int] = {}
    app = raw = h = None
    hsync = None
    try:
        if "conveyor" in who:
            app = Conveyor(conveyor_url(fresh_db(cfg.tmp, "conveyor-single"), cfg.sync))
            await app.open()
        if "raw" in who:
            raw = raw_create(fresh_db(cfg.tmp, "raw-single"), cfg.sync)
        if "huey" in who:
            h, noop = make_huey(fresh_db(cfg.tmp, "huey-single"), cfg.sync)
            (hsync,), = h.storage.sql("pragma synchronous", results=True)
        bounds = [cfg.n1 * r // ROUNDS for r in range(ROUNDS + 1)]
        for r in range(ROUNDS):
            k = r % len(who)
            for w in who[k:] + who[:k]:
                t = time.perf_counter()
                if w == "conveyor":
                    assert app is not None
                    for i in range(bounds[r], bounds[r + 1]):
                        await app.add(ACTION, {"i": i})
                elif w == "raw":
                    assert raw is not None
                    for i in range(bounds[r], bounds[r + 1]):
                        raw.execute(RAW_INSERT, (json.dumps({"i": i}),))
                else:
                    for i in range(bounds[r], bounds[r + 1]):
                        noop(i)
                secs[w] += time.perf_counter() - t
        if app is not None:
            counts["conveyor"] = await app.count({"status": "queued"})
        if raw is not None:
            counts["raw"] = raw.execute("SELECT count(*) FROM jobs").fetchone()[0]
        if h is not None:
            counts["huey"] = h.pending_count()
    finally:
        if app is not None:
            await app.close()
        if raw is not None:
            raw.close()
        if h is not None:
            h.storage.close()
    wrong = {w: c for w, c in counts.items() if c != cfg.n1}
    if wrong:
        raise BenchError(f"expected {cfg.n1} queued tasks each, found {wrong}")
    out = {w: {"n": cfg.n1, "seconds": secs[w], "rate": cfg.n1 / secs[w], "rounds": ROUNDS}
           for w in who}
    if "huey" in out:
        out["huey"]["producer_synchronous"] = SYNC_NAMES.get(hsync, hsync)
    return out


def run_enqueue_single(cfg: Config, res: dict[str, Any]) -> None:
    keys = {"conveyor": "enqueue_single", "raw": "insert_single", "huey": "enqueue_single"}
    block: dict[str, Any] = {}
    value = step(block, "enqueue_single", lambda: asyncio.run(enqueue_interleaved(cfg)))
    for who in keys:
        if who in cfg.only:
            res.setdefault(who, {})[keys[who]] = (value or {}).get(who, block["enqueue_single"])


# ---------------------------------------------------------------------------
# the run


class Config:
    def __init__(self, a: argparse.Namespace, tmp: str) -> None:
        self.quick = a.quick
        self.n = a.n if a.n is not None else (3_000 if a.quick else 20_000)
        self.n1 = a.n1 if a.n1 is not None else (500 if a.quick else 2_000)
        self.n1 = min(self.n1, self.n)
        self.lat = a.lat if a.lat is not None else (50 if a.quick else 200)
        self.idle = 1.5 if a.quick else 2.0
        self.sync = a.sync.upper()
        self.drain_timeout = a.drain_timeout
        self.tmp = tmp
        self.only = set(a.only.split(",")) if a.only else {"conveyor", "raw", "huey"}

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "n1": self.n1, "latency_samples": self.lat, "idle_s": self.idle,
                "synchronous": self.sync, "quick": self.quick, "concurrency": CONCURRENCY,
                "bulk_batch": BULK, "raw_batch": RAW_BATCH, "pieces": sorted(self.only)}


def step(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """Run one measured piece; on failure record the error and go on."""
    t = time.perf_counter()
    print(f"  {key} ...", end="", flush=True, file=sys.stderr)
    try:
        value = fn()
    except BenchError as exc:
        out[key] = {"error": str(exc)}
        print(f" FAILED: {exc}", file=sys.stderr, flush=True)
        return None
    except Exception as exc:
        import traceback

        out[key] = {"error": repr(exc), "trace": traceback.format_exc()[-3000:]}
        print(f" FAILED: {exc!r}", file=sys.stderr, flush=True)
        return None
    out[key] = value
    brief = ""
    if isinstance(value, dict):
        for k in ("rate", "process_rate", "p50_ms"):
            if k in value:
                brief = f" {k}={value[k]:,.1f}"
                break
    print(f" {time.perf_counter() - t:.1f} s{brief}", file=sys.stderr, flush=True)
    return value


def get(res: dict[str, Any], *path: str) -> Any:
    cur: Any = res
    for p in path:
        if not isinstance(cur, dict) or p not in cur or cur[p] is None:
            return None
        cur = cur[p]
    return cur


# -- report -------------------------------------------------------------------


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}/s"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f} ms"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def comparisons(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each conveyor figure against each of its baselines."""
    def c(*p: str) -> Any:
        return get(res, "conveyor", *p)

    def raw(*p: str) -> Any:
        return get(res, "raw", *p)

    def hu(*p: str) -> Any:
        return get(res, "huey", *p)

    b = RAW_BATCH
    rows = [
        ("enqueue 1-by-1 (add)", c("enqueue_single", "rate"), "rate", [
            ("raw insert, 1 row/tx", raw("insert_single", "rate")),
            ("huey enqueue 1-by-1", hu("enqueue_single", "rate")),
        ]),
        (f"enqueue bulk (add_many x{BULK})", c("enqueue_bulk_1", "rate"), "rate", [
            (f"raw insert, {b} rows/tx", raw(f"b{b}_p1", "insert_rate")),
        ]),
        ("drain, 1 worker proc", c("drain_1", "rate"), "rate", [
            ("huey drain, 1 worker proc", hu("drain_1", "rate")),
            ("huey drain, 2 worker procs", hu("drain_2", "rate")),
            (f"raw claim+finish {b}/tx, 1 proc", raw(f"b{b}_p1", "process_rate")),
            ("raw claim+finish 1/tx, 1 proc", raw("b1_p1", "process_rate")),
        ]),
        ("drain, 2 worker procs", c("drain_2", "rate"), "rate", [
            ("huey drain, 2 worker procs", hu("drain_2", "rate")),
            (f"raw claim+finish {b}/tx, 2 procs", raw(f"b{b}_p2", "process_rate")),
            (f"raw claim+finish {b}/tx, 1 proc", raw(f"b{b}_p1", "process_rate")),
            ("raw claim+finish 1/tx, 2 procs", raw("b1_p2", "process_rate")),
        ]),
        ("latency p50 (enqueue->start)", c("latency", "p50_ms"), "ms", [
            ("huey latency p50", hu("latency", "p50_ms")),
        ]),
        ("latency p99 (enqueue->start)", c("latency", "p99_ms"), "ms", [
            ("huey latency p99", hu("latency", "p99_ms")),
        ]),
    ]
    out = []
    for figure, value, unit, bases in rows:
        for base, bval in bases:
            out.append({"figure": figure, "conveyor": value, "unit": unit, "baseline": base,
                        "baseline_value": bval, "ratio": ratio(value, bval)})
    return out


def targets(res: dict[str, Any], sync: str) -> list[dict[str, Any]]:
    def c(*p: str) -> Any:
        return get(res, "conveyor", *p)

    b = RAW_BATCH
    checks = [
        ("drain 1 proc >= 5x huey 1 proc", ratio(c("drain_1", "rate"),
                                                 get(res, "huey", "drain_1", "rate")), 5.0, ">="),
        ("drain 2 procs >= 5x huey 2 procs", ratio(c("drain_2", "rate"),
                                                   get(res, "huey", "drain_2", "rate")), 5.0, ">="),
        (f"drain 1 proc >= 25% raw {b}/tx 1 proc",
         ratio(c("drain_1", "rate"), get(res, "raw", f"b{b}_p1", "process_rate")), 0.25, ">="),
        (f"drain 2 procs >= 25% raw {b}/tx 2 procs",
         ratio(c("drain_2", "rate"), get(res, "raw", f"b{b}_p2", "process_rate")), 0.25, ">="),
        ("latency p50 < 10 ms", c("latency", "p50_ms"), 10.0, "<"),
    ]
    out = []
    for name, value, goal, op in checks:
        met = None if value is None else (value >= goal if op == ">=" else value < goal)
        out.append({"target": name, "value": value, "goal": goal, "met": met,
                    "applies": sync == "FULL"})
    return out


def render(res: dict[str, Any], cfg: Config) -> str:
    m = res["machine"]
    lines = [
        f"conveyor SQLite benchmark: synchronous={cfg.sync}, N={cfg.n:,}, N1={cfg.n1:,}, "
        f"latency samples={cfg.lat}, concurrency={CONCURRENCY}/worker proc"
        + (" (--quick)" if cfg.quick else ""),
        f"machine: {m['nproc']} CPU ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, SQLite {m['sqlite']}, huey {m['huey']}, "
        f"conveyor {m['conveyor']} @ {str(m['git'].get('commit', '?'))[:10]}"
        + (" (src modified)" if m["git"].get("src_dirty") else "")
        + f"; db files on {m['tmp_fs']}",
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
    lines += ["", "baselines measured in this run"]
    b = RAW_BATCH
    lines.append(f"  raw sqlite3 (WAL, synchronous={cfg.sync}, partial index on ready rows)")
    lines.append(f"    {'rows/tx':>7}  {'procs':>5}  {'rows':>6}  {'insert':>11}  "
                 f"{'claim+finish':>13}")
    for batch in (1, b):
        for procs in (1, 2):
            r = get(res, "raw", f"b{batch}_p{procs}") or {}
            if "error" in r:
                lines.append(f"    {batch:>7}  {procs:>5}  error: "
                             f"{r['error'].splitlines()[0][:70]}")
                continue
            lines.append(f"    {batch:>7}  {procs:>5}  {r.get('n', 0):>6}  "
                         f"{fmt_rate(r.get('insert_rate')):>11}  "
                         f"{fmt_rate(r.get('process_rate')):>13}")
    lines.append(f"    1 row/tx insert in the interleaved enqueue block: "
                 f"{fmt_rate(get(res, 'raw', 'insert_single', 'rate'))}")
    hu = res.get("huey", {})
    hs = sorted({s for k in ("drain_1", "drain_2", "latency")
                 for s in (get(hu, k, "worker_synchronous") or [])})
    lines.append(f"  huey SqliteHuey (WAL; synchronous seen by its workers: "
                 f"{', '.join(hs) or '?'}; producer: "
                 f"{get(hu, 'enqueue_single', 'producer_synchronous') or '?'})")
    lines.append(f"    enqueue 1-by-1 {fmt_rate(get(hu, 'enqueue_single', 'rate'))}  "
                 f"drain 2 procs {fmt_rate(get(hu, 'drain_2', 'rate'))}  "
                 f"drain 1 proc {fmt_rate(get(hu, 'drain_1', 'rate'))}  "
                 f"latency p50/p99 {fmt_ms(get(hu, 'latency', 'p50_ms'))} / "
                 f"{fmt_ms(get(hu, 'latency', 'p99_ms'))}")
    lines += ["", "targets (from the issue; they are defined for synchronous=FULL)"]
    for t in targets(res, cfg.sync):
        v = t["value"]
        shown = "-" if v is None else (f"{v:.1f} ms" if "latency" in t["target"] else f"{v:.2f}x")
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        if not t["applies"]:
            verdict += " (not FULL: informative only)"
        lines.append(f"  {t['target']:<40} {shown:>10}  {verdict}")
    errors = [(sect, k, v["error"]) for sect in ("conveyor", "raw", "huey")
              for k, v in (res.get(sect) or {}).items() if isinstance(v, dict) and "error" in v]
    notes = []
    for sect, k, err in errors:
        notes.append(f"  ERROR {sect}.{k}: {err.splitlines()[0][:200]}")
    for k in ("drain_1", "drain_2", "latency"):
        issues = get(res, "conveyor", k, "worker_log_issues")
        if issues:
            notes.append(f"  conveyor.{k}: worker logged {len(issues)} warning/error line(s), "
                         f"first: {issues[0][:160]}")
        split = get(res, "conveyor", k, "succeeded_per_process")
        uneven = split is not None and (len(split) < 2 or min(split) < 0.1 * max(split))
        if k == "drain_2" and uneven:
            notes.append(f"  conveyor.{k}: tasks per worker process were uneven: {split}")
        stall = get(res, "conveyor", k, "longest_stall_s")
        if stall is not None and stall > 0.5:
            notes.append(f"  conveyor.{k}: no task finished for {stall:.2f} s at one point")
    if notes:
        lines += ["", "notes", *notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None,
                    help="tasks per drain and bulk enqueue (default 20000; 3000 with --quick)")
    ap.add_argument("--n1", type=int, default=None,
                    help="tasks enqueued one by one by each of conveyor, raw sqlite3 and "
                         "huey, and rows of the 1-row/tx raw baseline "
                         "(default 2000; 500 with --quick)")
    ap.add_argument("--lat", type=int, default=None,
                    help="latency samples (default 200; 50 with --quick)")
    ap.add_argument("--sync", default="FULL", choices=["FULL", "NORMAL", "full", "normal"],
                    help="SQLite synchronous setting for every piece (default FULL)")
    ap.add_argument("--quick", action="store_true", help="small run for CI smoke use (< 90 s)")
    ap.add_argument("--only", default=None,
                    help="comma-separated subset of conveyor,raw,huey (default: all)")
    ap.add_argument("--drain-timeout", type=float, default=120.0,
                    help="seconds a drain may take before it counts as failed (default 120)")
    ap.add_argument("--tmp", default=None, help="folder for the database files (default: system "
                                                "temp; must be a real disk, not tmpfs)")
    ap.add_argument("--keep", action="store_true", help="keep the database files and logs")
    ap.add_argument("--out", default=None, help="JSON results path "
                                                "(default bench/results/sqlite-<timestamp>.json)")
    a = ap.parse_args(argv)
    for name in ("n", "n1", "lat"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if a.drain_timeout <= 0:
        ap.error("--drain-timeout must be more than 0")
    pieces = {"conveyor", "raw", "huey"}
    if a.only is not None:
        asked = set(a.only.split(","))
        if not asked or not asked <= pieces:
            ap.error(f"--only takes some of {', '.join(sorted(pieces))}, not {a.only!r}")
    if a.tmp is not None and not os.path.isdir(a.tmp):
        ap.error(f"--tmp {a.tmp!r} is not a folder")
    if a.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
        ap.error(f"--out {a.out!r}: its folder does not exist")

    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(f"interrupted by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = tempfile.mkdtemp(prefix="conveyor-bench-", dir=a.tmp)
    cfg = Config(a, tmp)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res: dict[str, Any] = {"bench": "sqlite", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "command": " ".join([os.path.relpath(sys.executable, ROOT),
                                                os.path.relpath(__file__, ROOT),
                                                *sys.argv[1:]]),
                           "config": cfg.to_json(), "machine": machine_info(tmp)}
    if res["machine"]["tmp_fs"] in ("tmpfs", "ramfs"):
        print(f"warning: {tmp} is on {res['machine']['tmp_fs']}: fsync costs nothing there; "
              "use --tmp on a real disk", file=sys.stderr)
    res["load_start"] = os.getloadavg()[0]
    t_all = time.perf_counter()
    try:
        print("enqueue 1-by-1: conveyor, raw sqlite3, huey interleaved", file=sys.stderr)
        run_enqueue_single(cfg, res)
        if "conveyor" in cfg.only:
            print("conveyor", file=sys.stderr)
            run_conveyor(cfg, res)
        if "raw" in cfg.only:
            print("raw sqlite3", file=sys.stderr)
            run_raw(cfg, res)
        if "huey" in cfg.only:
            print("huey", file=sys.stderr)
            run_huey(cfg, res)
    finally:
        _kill_all_children()
        res["load_end"] = os.getloadavg()[0]
        res["seconds_total"] = time.perf_counter() - t_all
        res["comparisons"] = comparisons(res)
        res["targets"] = targets(res, cfg.sync)
        os.makedirs(RESULTS_DIR, exist_ok=True)
        out = a.out or os.path.join(RESULTS_DIR, f"sqlite-{stamp}.json")
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
                 for sect in ("conveyor", "raw", "huey") for v in (res.get(sect) or {}).values())
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit(main())
