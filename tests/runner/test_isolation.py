"""Apps side by side (from the isolation audit): apps with URLs of their own on one
database see each other's changes as events, and a schedule whose name another app
on the database also uses is told about."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from conveyor import Context, Conveyor

from ..control._support import until


async def test_apps_with_urls_of_their_own_share_a_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = Conveyor(url), Conveyor(url)

    @second.handler("b")
    async def b(ctx: Context[Any]) -> str:
        return "from b"

    async with first, second:
        ended = first.events("task.succeeded")
        task = await first.add("b")
        assert await first.wait(task.id, timeout=30) == "from b"
        event = await asyncio.wait_for(ended.__anext__(), 30)  # the other app's run
        assert event.task_id == task.id


async def test_a_schedule_name_used_by_another_app_is_told(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    billing, mail = Conveyor(url, stop_timeout=1), Conveyor(url, stop_timeout=1)

    @billing.handler("billing:charge")
    async def charge(ctx: Context[Any]) -> None: ...

    @mail.handler("mail:digest")
    async def digest(ctx: Context[Any]) -> None: ...

    billing.schedule("billing:charge", 3600, name="hourly")
    mail.schedule("mail:digest", 3600, name="hourly")
    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    async with billing:
        await until(lambda: billing.count({"tags.schedule": "hourly"}), 10, "billing's occurrence")
        async with mail:
            line = await until(lambda: [r.getMessage() for r in caplog.records
                                        if "same name" in r.getMessage()], 10, "the warning")
    assert len(line) == 1 and "schedule hourly" in line[0] and "'billing:charge'" in line[0]
    assert await billing.count({"tags.schedule": "hourly"}) == 1  # mail's was not added


async def test_two_apps_on_one_storage_object_share_data_not_events() -> None:
    worker = Conveyor("memory://")
    producer = Conveyor(worker.storage)  # as a test on memory:// gives a producer its store

    @worker.handler("job")
    async def job(ctx: Context[Any]) -> str:
        return "done"

    seen: list[str] = []
    async with worker, producer:
        producer.on("task.*", lambda event: seen.append(event.type))
        task = await producer.add("job")
        assert await producer.wait(task.id, timeout=5) == "done"  # by its poll
        assert (await worker.get(task.id)) is not None
    # the producer's own change only: the worker's share the storage's origin
    assert seen == ["task.added"]
