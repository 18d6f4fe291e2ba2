"""/metrics: Prometheus text, a registry per hub, values that follow the tasks."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Context, Conveyor
from conveyor.client import HubClient
from conveyor.hub import HubConfig

from .._sqlite_held import sqlite_reads_held
from ..conftest import PG_ENV, pg_schema
from ._rest_helpers import API, client, eventually, make_keys, worker_hub
from .conftest import RunningHub, hub_db_url, running_hub

__all__ = ["worker_hub"]

T = f"{API}/tasks"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: Samples, name: str,
          **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape_until(http: httpx.AsyncClient, name: str, want: float,
                       **labels: str) -> Samples:
    """The metrics, once the sample ``name`` with ``labels`` reads ``want``."""
    async def ready() -> Samples | None:
        found = samples((await http.get("/metrics")).text)
        return found if value(found, name, **labels) == want else None

    return await eventually(ready)


async def test_metrics_follow_tasks_added_started_and_finished(worker_hub: RunningHub,
                                                               tmp_path: Path) -> None:
    keys = make_keys(worker_hub)
    async with client(worker_hub, keys.admin) as http:
        r = await http.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        before = samples(r.text)
        assert value(before, "conveyor_tasks_added_total", action="mail:send") == 0

        # queued tasks (delayed: nobody runs them yet) show in the queue depth
        await http.post(f"{T}/batch", json={"tasks": [
            {"action": "mail:send", "delay": 600}, {"action": "mail:send", "delay": 600},
            {"action": "job:slow", "delay": 600}]})
        now = samples((await http.get("/metrics")).text)
        assert value(now, "conveyor_tasks_added_total", action="mail:send") == 2
        assert value(now, "conveyor_tasks_added_total", action="job:slow") == 1
        assert value(now, "conveyor_queue_depth", action="mail:send") == 2
        assert value(now, "conveyor_tasks", action="mail:send", status="queued") == 2

        # tasks that run: started, finished by status, durations
        ok = (await http.post(T, json={"action": "mail:send", "payload": {"sleep": 0.2}})).json()
        bad = (await http.post(T, json={"action": "job:fail"})).json()
        for task in (ok, bad):
            await http.get(f"{T}/{task['id']}/wait", params={"timeout": 10})

        await scrape_until(http, "conveyor_tasks_finished_total", 1, action="job:fail",
                           status="failed")
        found = await scrape_until(http, "conveyor_tasks_finished_total", 1,
                                   action="mail:send", status="succeeded")
        assert value(found, "conveyor_tasks_added_total", action="mail:send") == 3
        assert value(found, "conveyor_tasks_started_total", action="mail:send") == 1
        assert value(found, "conveyor_tasks_started_total", action="job:fail") == 1
        assert value(found, "conveyor_task_run_seconds_count", action="mail:send") == 1
        took = value(found, "conveyor_task_run_seconds_sum", action="mail:send")
        assert 0.15 < took < 5
        assert value(found, "conveyor_task_run_seconds_bucket", action="mail:send",
                     le="0.1") == 0
        assert value(found, "conveyor_task_run_seconds_bucket", action="mail:send",
                     le="+Inf") == 1
        assert value(found, "conveyor_tasks", action="mail:send", status="succeeded") == 1
        assert value(found, "conveyor_queue_depth", action="mail:send") == 2
        assert value(found, "conveyor_hub_uptime_seconds") > 0

        # tasks added by another process reach the counters through the change feed
        other = Conveyor(hub_db_url(tmp_path))
        try:
            await other.add("mail:send", {"from": "elsewhere"}, delay=600)
        finally:
            await other.close()

        async def seen() -> bool:
            found = samples((await http.get("/metrics")).text)
            return value(found, "conveyor_tasks_added_total", action="mail:send") == 4

        await eventually(seen)


async def test_metrics_count_remote_runs_and_other_processes_runs(hub: RunningHub,
                                                                  tmp_path: Path) -> None:
    worker = HubClient(hub.url, hub.key("svc", subscribe=["*"]))

    @worker.handler("calc:double")
    async def double(ctx: Context[Any]) -> int:
        return int(ctx.payload) * 2

    @worker.handler("calc:bad")
    async def bad(ctx: Context[Any]) -> None:
        raise ValueError("bad input")

    admin = hub.key("admin", admin=True)
    work = asyncio.create_task(worker.work("calc", concurrency=4))
    try:
        await worker.wait_working(10)
        tasks = await hub.app.add_many([("calc:double", i) for i in range(5)])
        failing = await hub.app.add("calc:bad", 1)
        for task in tasks:
            assert await hub.app.wait(task.id, timeout=10) == task.payload * 2
        await hub.app.wait_task(failing.id, timeout=10)
    finally:
        worker.stop()
        await asyncio.wait_for(work, 20)
        await worker.close()

    # another process (its own app on the same file) runs tasks: the hub counts
    # them through the change feed
    other = Conveyor(hub_db_url(tmp_path))

    @other.handler("side:job")
    async def side(ctx: Context[Any]) -> str:
        return "done"

    try:
        async with other:
            done = await other.add_many([("side:job", i) for i in range(3)])
            for task in done:
                await other.wait(task.id, timeout=10)
    finally:
        await other.close()

    async with client(hub, admin) as http:
        found = await scrape_until(http, "conveyor_tasks_finished_total", 3, action="side:job",
                                   status="succeeded")
    assert value(found, "conveyor_tasks_added_total", action="calc:double") == 5
    assert value(found, "conveyor_tasks_started_total", action="calc:double") == 5
    assert value(found, "conveyor_tasks_finished_total", action="calc:double",
                 status="succeeded") == 5
    assert value(found, "conveyor_tasks_finished_total", action="calc:bad",
                 status="failed") == 1
    assert value(found, "conveyor_task_run_seconds_count", action="calc:double") == 5
    assert value(found, "conveyor_tasks_added_total", action="side:job") == 3
    assert value(found, "conveyor_tasks_started_total", action="side:job") == 3
    assert value(found, "conveyor_task_run_seconds_count", action="side:job") == 3


async def test_metrics_show_only_readable_actions(hub: RunningHub) -> None:
    await hub.app.add_many([("mail:send", 1), ("geo:code", 2), ("secret:x", 3)])
    publisher = hub.key("publisher", publish=["mail:*"])
    async with client(hub, publisher) as http:
        text = (await http.get("/metrics")).text
    assert 'action="mail:send"' in text
    assert "geo:code" not in text and "secret:x" not in text
    assert "conveyor_hub_uptime_seconds" in text


async def test_each_hub_has_its_own_registry(hub: RunningHub) -> None:
    await hub.app.add("a:x")
    key = hub.key("admin", admin=True)
    other = Conveyor("memory://")
    async with running_hub(other, HubConfig(port=0, insecure=True), None) as second, \
            client(hub, key) as one, client(second) as two:
        await other.add("b:y")
        first = samples((await one.get("/metrics")).text)
        seen = samples((await two.get("/metrics")).text)
    assert value(first, "conveyor_tasks_added_total", action="a:x") == 1
    assert value(first, "conveyor_tasks_added_total", action="b:y") == 0
    assert value(seen, "conveyor_tasks_added_total", action="a:x") == 0
    assert value(seen, "conveyor_tasks_added_total", action="b:y") == 1


def test_metrics_use_no_global_registry(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    from conveyor.hub import create_hub

    names = set(REGISTRY._names_to_collectors)
    create_hub(Conveyor("memory://"), HubConfig(insecure=True))
    create_hub(Conveyor("memory://"), HubConfig(insecure=True))
    assert set(REGISTRY._names_to_collectors) == names


@contextlib.asynccontextmanager
async def storage_stuck(storage: Any) -> AsyncIterator[None]:
    """The storage does not answer reads: on SQLite every reader thread is busy
    with a long read; on PostgreSQL another session holds the tasks table locked
    (every read and write of it waits)."""
    if storage.url.startswith("sqlite:///"):
        async with sqlite_reads_held(storage):
            yield
        return
    with psycopg.connect(os.environ[PG_ENV]) as conn:
        conn.execute(f'LOCK TABLE "{pg_schema(storage.url)}".tasks IN ACCESS EXCLUSIVE MODE')
        try:
            yield
        finally:
            conn.rollback()


async def test_metrics_answer_without_the_task_counts_when_the_storage_is_stuck(
        tmp_path: Path, monkeypatch: Any) -> None:
    """The storage does not answer (its readers busy, or its table locked):
    a scrape still answers, after ``storage_timeout`` (5 s; 1 s here) rather
    than the write's 30 s, scrapes at the same time too, with the counters and
    ``conveyor_storage_up 0`` but no task-count gauges; once the lock is gone
    the gauges come back, ``conveyor_storage_up 1``."""
    from conveyor.hub._metrics import Metrics

    monkeypatch.setattr(Metrics, "storage_timeout", 1.0)
    app = Conveyor(hub_db_url(tmp_path))
    async with running_hub(app, HubConfig(port=0, insecure=True), None) as hub, \
            httpx.AsyncClient(base_url=hub.url) as http:
        assert (await http.post(T, json={"action": "a"})).status_code == 201
        found = samples((await http.get("/metrics")).text)
        assert value(found, "conveyor_storage_up") == 1
        assert value(found, "conveyor_queue_depth", action="a") == 1
        async with storage_stuck(app.storage):
            adding = asyncio.create_task(http.post(T, json={"action": "a"}, timeout=60))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:  # until a scrape meets the stuck storage
                r = await http.get("/metrics", timeout=10)
                assert r.status_code == 200, r.text
                found = samples(r.text)
                if value(found, "conveyor_storage_up") == 0:
                    break
                assert loop.time() < deadline, "the scrapes never waited for the storage"
            assert value(found, "conveyor_tasks_added_total", action="a") >= 1
            assert value(found, "conveyor_hub_uptime_seconds") > 0
            assert not any(name in ("conveyor_queue_depth", "conveyor_tasks")
                           for name, _ in found)
            # scrapes at the same time share one read, each waiting 1 s at most (one
            # after the other, the fourth would answer after 4 s)
            answers = await asyncio.gather(*(http.get("/metrics", timeout=3) for _ in range(4)))
            assert [value(samples(r.text), "conveyor_storage_up") for r in answers] == [0] * 4
        assert (await adding).status_code == 201
        # the read that waited for the lock was costly: its counts (from before the
        # add) may be served for up to 5 s (see http.md, stats)
        found = await scrape_until(http, "conveyor_queue_depth", 2, action="a")
        assert value(found, "conveyor_storage_up") == 1
