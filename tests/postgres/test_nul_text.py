"""The NUL character on PostgreSQL, whose text cannot hold it: an id with one names no
task (not found, as on SQLite: it was a StorageError, a 503 over HTTP); a filter
operand with one is a QueryError (was a StorageError); a task field with one is
refused naming that field (the message named the payload, tags and unique key
whatever the field was, and the HTTP path was the whole body)."""

from __future__ import annotations

import httpx
import pytest

from conveyor import Conveyor, QueryError, Status, TaskNotFound, ValidationError
from conveyor.hub import HubConfig

from ..hub.conftest import running_hub

NUL_ID = "a\x00b"


async def test_an_id_with_nul_names_no_task(schema_url: str) -> None:
    async with Conveyor(schema_url) as app:
        done = await app.add("nul:x")
        await app.abort(done.id)
        assert await app.storage.get(NUL_ID) is None
        assert await app.storage.get_many([NUL_ID, done.id]) == [await app.get(done.id)]
        assert await app.storage.read_logs(NUL_ID) == []
        for call in (app.get(NUL_ID), app.abort(NUL_ID), app.retry(NUL_ID),
                     app.prioritize(NUL_ID, 3)):
            with pytest.raises(TaskNotFound):
                await call
        assert not await app.exists(NUL_ID)
        assert await app.delete([NUL_ID, done.id]) == [done.id]


async def test_a_filter_operand_with_nul_is_a_query_error(schema_url: str) -> None:
    async with Conveyor(schema_url) as app:
        await app.add("nul:x", {"a": "b"})
        for where, path in (
                ({"action": "a\x00"}, "filter.action"),
                ({"payload.a": "b\x00"}, "filter.payload.a"),
                ({"payload.a": {"$in": ["b", "\x00"]}}, "filter.payload.a.$in[1]"),
                ({"$or": [{"id": "1"}, {"id": {"$gt": "\x00"}}]}, "filter.$or[1].id.$gt"),
                ({"tags.t": {"$not": {"$eq": "\x00"}}}, "filter.tags.t.$not.$eq")):
            with pytest.raises(QueryError, match="NUL") as refused:
                await app.find(where)
            assert refused.value.path == path  # the whole path, as the parser's errors
            with pytest.raises(QueryError, match="NUL"):
                await app.count(where)
        assert await app.count({"payload.a": "b"}) == 1  # the same without it


async def test_a_task_field_with_nul_is_refused_by_name(schema_url: str) -> None:
    async with Conveyor(schema_url) as app:
        with pytest.raises(ValidationError, match=r"^parent_id: .*NUL"):
            await app.add("nul:x", parent_id="p\x00")
        with pytest.raises(ValidationError, match=r"^payload: .*NUL"):
            await app.add("nul:x", {"k": "\x00"})
        with pytest.raises(ValidationError, match=r"^task 1: tags: .*NUL"):
            await app.add_many([("nul:x", 1), ("nul:x", 2, {"tags": {"t": "\x00"}})])
        assert await app.count({}) == 0  # nothing written


async def test_over_http_an_id_with_nul_is_404_and_a_field_422_at_its_path(
        schema_url: str) -> None:
    app = Conveyor(schema_url)
    async with running_hub(app, HubConfig(port=0, insecure=True), None) as hub, \
            httpx.AsyncClient(base_url=hub.url, timeout=30) as http:
        got = await http.get("/api/v1/tasks/a%00b")
        assert got.status_code == 404, got.text
        aborted = await http.post("/api/v1/tasks/a%00b/abort", json={})
        assert aborted.status_code == 404, aborted.text
        found = await http.get("/api/v1/tasks", params={"filter": '{"action": "a\\u0000"}'})
        assert found.status_code == 422 and found.json()["error"]["code"] == "invalid_query"
        added = await http.post("/api/v1/tasks", json={"action": "x", "parent_id": "p\x00"})
        assert added.status_code == 422, added.text
        assert added.json()["error"]["path"] == "parent_id"
        batch = await http.post("/api/v1/tasks/batch", json={"tasks": [
            {"action": "x"}, {"action": "x", "payload": {"k": "\x00"}}]})
        assert batch.status_code == 422, batch.text
        assert batch.json()["error"]["path"] == "tasks[1].payload"
        assert await app.count({}) == 0
        ok = await http.post("/api/v1/tasks", json={"action": "x"})
        assert ok.status_code == 201 and Status(ok.json()["status"]) is Status.QUEUED
