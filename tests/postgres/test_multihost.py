"""Many hosts on one PostgreSQL: worker processes in separate network namespaces.

Each namespace is a "host" with its own network stack: a veth pair joins it to
this (the root) namespace, with private addresses 10.77.X.1 (root side) and
10.77.X.2 (namespace side) on a /24 of its own. A PostgreSQL server of the
test's own listens on the root-side addresses (and 127.0.0.1 for the test
itself), so a worker in a namespace reaches it only over its veth link: its
own loopback is another one. Workers are started with ``ip netns exec``; each
namespace's workers append to a ledger file of their own, which records the
"host" (inside a namespace the hostname is the same as outside).

Needs root (network namespaces, veth links). Without ``ip netns`` the test
fails: it does not skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor import Conveyor

from ..integration.procs import REPO, read_ledger
from ._pginstance import PgInstance

pytestmark = pytest.mark.slow

HOSTS = 3  # network namespaces
WORKERS_PER_HOST = 2
TASKS = 600
BATCH = 20  # tasks per add_many call
SPACING = 0.03  # seconds between add_many calls: ~670 tasks/s
SLEEP = 0.05  # each task sleeps this long; with CONCURRENCY 10 one worker does <= 200/s


@dataclass
class Host:
    ns: str
    host_if: str  # root-namespace end of the veth pair
    subnet: int  # 10.77.<subnet>.0/24

    @property
    def server_addr(self) -> str:
        return f"10.77.{self.subnet}.1"

    @property
    def addr(self) -> str:
        return f"10.77.{self.subnet}.2"


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


def _require_netns() -> None:
    """Fail (not skip) with a clear message when namespaces cannot be made here."""
    if os.geteuid() != 0:
        pytest.fail("test_multihost needs root: it creates network namespaces and veth links "
                    "(ip netns add, ip link add); run the PostgreSQL tests as root")
    if shutil.which("ip") is None:
        pytest.fail("test_multihost needs the `ip` command (iproute2) for network namespaces: "
                    "apt-get install iproute2")
    probe = f"cvyprobe{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        pytest.fail(f"`ip netns` is not available on this machine: {exc}")
    _ip("netns", "del", probe)


def _free_subnets(n: int) -> list[int]:
    """n third octets X such that no interface here has an address in 10.77.X.0/24."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                          timeout=10).stdout
    candidates = [x for x in range(100, 250) if f" 10.77.{x}." not in used]
    random.shuffle(candidates)
    return sorted(candidates[:n])


@contextmanager
def hosts(count: int) -> Iterator[list[Host]]:
    """``count`` network namespaces, each joined to this one by a veth pair; all
    removed afterwards (deleting a namespace deletes its end of the pair, and with
    it the pair)."""
    tag = uuid.uuid4().hex[:6]
    made: list[Host] = []
    try:
        for i, subnet in enumerate(_free_subnets(count)):
            host = Host(ns=f"cvy{tag}h{i}", host_if=f"cvh{tag}{i}", subnet=subnet)
            peer = f"cvn{tag}{i}"
            _ip("netns", "add", host.ns)
            made.append(host)
            _ip("link", "add", host.host_if, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", host.ns)
            _ip("addr", "add", f"{host.server_addr}/24", "dev", host.host_if)
            _ip("link", "set", host.host_if, "up")
            _ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", peer)
            _ip("-n", host.ns, "link", "set", peer, "up")
            _ip("-n", host.ns, "link", "set", "lo", "up")
        yield made
    finally:
        for host in made:
            with contextlib.suppress(RuntimeError):
                _ip("link", "del", host.host_if)
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", host.ns)


def start_in_namespace(ns: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[str]:
    """Start a worker process (tests/integration/worker_main.py) inside namespace ``ns``."""
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.integration.worker_main",
             "tests.integration.apps:app"],
            cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=log, text=True)
    return proc


def wait_ready(proc: subprocess.Popen[str], log_path: Path, timeout: float) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        raise AssertionError(f"worker in a namespace did not start within {timeout}s: {line!r}; "
                             f"log: {log_path.read_text()[-2000:]}")


def stop_all(procs: list[subprocess.Popen[str]], sig: int = signal.SIGTERM) -> list[int | None]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    codes: list[int | None] = []
    deadline = time.monotonic() + 20
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        codes.append(proc.returncode)
        if proc.stdout is not None:
            proc.stdout.close()
    return codes


async def test_workers_on_three_hosts_share_the_queue(tmp_path: Path) -> None:
    """6 workers on 3 "hosts" (network namespaces, 2 each) drain 600 tasks added
    from here: every task succeeds exactly once, every host takes a share, and
    the server sees the workers' connections come from the namespaces' addresses."""
    _require_netns()
    with (hosts(HOSTS) as made,
          PgInstance(listen=["127.0.0.1", *(h.server_addr for h in made)],
                     hba_networks=[f"{h.addr}/32" for h in made]) as pg):
        schema = "multihost"
        local_url = pg.url(schema=schema, migrate="true")
        app = Conveyor(local_url)
        procs: list[subprocess.Popen[str]] = []
        owner: dict[int, str] = {}  # pid -> namespace
        logs: list[Path] = []
        try:
            await app.open()  # creates the schema before any worker opens it
            for host in made:
                env = {"CONVEYOR_DB": pg.url(host=host.server_addr, schema=schema),
                       "LEDGER": str(tmp_path / f"ledger-{host.ns}.txt"),
                       "CONCURRENCY": "10", "LEASE": "30"}
                for j in range(WORKERS_PER_HOST):
                    log_path = tmp_path / f"worker-{host.ns}-{j}.log"
                    proc = start_in_namespace(host.ns, env, log_path)
                    procs.append(proc)
                    logs.append(log_path)
                    owner[proc.pid] = host.ns
            for proc, log_path in zip(procs, logs, strict=True):
                await asyncio.to_thread(wait_ready, proc, log_path, 60)
            # `ip netns exec` execs the command: the worker is the process we started
            assert {w.pid for w in await app.workers()} == set(owner)

            # the workers reach the server over their veth links
            with pg.admin() as admin:
                rows = admin.execute(
                    "SELECT host(client_addr), count(*) FROM pg_stat_activity "
                    "WHERE client_addr IS NOT NULL GROUP BY 1").fetchall()
            by_addr = dict(rows)
            for host in made:
                assert by_addr.get(host.addr, 0) >= WORKERS_PER_HOST, (host, by_addr)

            added: list[str] = []
            t0 = time.monotonic()
            for start in range(0, TASKS, BATCH):
                await asyncio.sleep(max(0.0, t0 + (start // BATCH) * SPACING
                                        - time.monotonic()))
                tasks = await app.add_many([("ledger", {"i": i, "sleep": SLEEP})
                                            for i in range(start, start + BATCH)])
                added.extend(t.id for t in tasks)

            deadline = time.monotonic() + 60
            while await app.count({"status": "succeeded"}) < TASKS:
                assert time.monotonic() < deadline, await app.stats()
                assert all(p.poll() is None for p in procs), "a worker died"
                await asyncio.sleep(0.1)
            tasks_by_id = {t.id: t for t in await app.find({}, limit=TASKS + 10)}
        finally:
            codes = stop_all(procs)
            await app.close()
        assert codes == [0] * len(procs), codes

    # none lost, none run twice, and the ledgers agree with the task records
    runs: list[tuple[str, str, int]] = []  # (namespace, task id, pid)
    for host in made:
        for task_id, _attempt, pid in read_ledger(tmp_path / f"ledger-{host.ns}.txt"):
            runs.append((host.ns, task_id, pid))
    ids = [task_id for _, task_id, _ in runs]
    assert len(ids) == TASKS, f"{len(ids)} runs for {TASKS} tasks"
    assert len(set(ids)) == TASKS, [i for i, n in Counter(ids).items() if n > 1][:5]
    assert set(ids) == set(added)
    assert len(tasks_by_id) == TASKS
    for ns, task_id, pid in runs:
        task = tasks_by_id[task_id]
        assert task.status.value == "succeeded" and task.attempts == 1 and task.rescues == 0
        assert owner.get(pid) == ns, (task_id, pid, ns)  # the run happened where its ledger says
        assert task.result == pid
        assert task.worker is None  # cleared when finished
    per_host = Counter(ns for ns, _, _ in runs)
    per_proc = Counter(pid for _, _, pid in runs)
    print(f"tasks per host: {dict(per_host)}; per worker process: {sorted(per_proc.values())}")
    for host in made:
        # 670 tasks/s are added and one host's two workers can run at most 400/s: every
        # host must have worked; an even share would be 200
        assert per_host[host.ns] >= TASKS // 10, per_host
