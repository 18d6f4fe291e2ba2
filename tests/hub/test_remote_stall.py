"""A remote worker process frozen (SIGSTOP) past its service lease: the hub gives
its tasks and offers to another worker; resumed, it must not run the offers it
had prefetched or not yet read (they were taken back and run elsewhere), as an
in-process run that starts long after its claim asks the storage first."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conveyor.model import Status

from ._ws_helpers import eventually, make_hub, read_line, reap, spawn


def _ledger(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(i, int(p)) for i, p in (line.split() for line in path.read_text().splitlines())]


async def test_a_worker_resumed_from_a_freeze_runs_no_offer_taken_back(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    async with make_hub(tmp_path, insecure=True, service_lease=1.0) as hub:
        a = spawn("tests.hub._ledger_worker", hub.url, str(ledger), "svc", "probe:a",
                  log=tmp_path / "a.log")
        b = None
        try:
            assert await read_line(a) == "ready\n"
            tasks = await hub.app.add_many([("ledger:work", {"sleep": 1.0})] * 4)
            # frozen while it runs one task and holds the others
            await eventually(lambda: _ledger(ledger))
            os.kill(a.pid, signal.SIGSTOP)
            before = _ledger(ledger)
            b = spawn("tests.hub._ledger_worker", hub.url, str(ledger), "svc", "probe:b",
                      log=tmp_path / "b.log")
            assert await read_line(b) == "ready\n"
            for task in tasks:  # the hub dropped the frozen worker; b ran everything
                done = await hub.app.wait_task(task.id, timeout=30)
                assert (done.status, done.result) == (Status.SUCCEEDED, b.pid)
            os.kill(a.pid, signal.SIGCONT)
            # a probe only a runs, offered once it is back on a new connection: by then
            # it has read everything the old one held
            probe = await hub.app.add("probe:a", {})
            assert await hub.app.wait(probe.id, timeout=30) == a.pid
            after = _ledger(ledger)[len(before):]
            assert [pid for _, pid in after if pid == a.pid] == []
            assert sorted(i for i, _ in _ledger(ledger) if _ == b.pid) == sorted(
                t.id for t in tasks)
        finally:
            if a.poll() is None:
                os.kill(a.pid, signal.SIGCONT)
            reap(a, *([b] if b is not None else []))
