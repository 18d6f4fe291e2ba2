"""REST fixes from the audit: every 422 of a body or query parameter has a ``path``,
a body needs a JSON Content-Type (a missing one is 415 too), and empty ``sort`` /
``filter`` parameters are refused. Nothing is written on any of them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ._rest_helpers import API, client, error_of
from .conftest import RunningHub

T = f"{API}/tasks"

# (method, path, request kwargs, status, code, path in the error)
PATHS: list[tuple[str, str, dict[str, Any], int, str, str]] = [
    ("POST", T, {"json": {"action": "a", "tags": {"a.b": 1}}}, 422, "invalid", "tags"),
    ("POST", T, {"json": {"action": "a", "delay": 1, "run_at": 5}}, 422, "invalid", "delay"),
    ("POST", T, {"json": {"action": "a", "unique_fields": ["x"], "payload": {}}}, 422,
     "invalid", "unique_fields"),
    ("POST", T, {"json": {"action": "a", "concurrency": [{"query": {"nope": 1}}]}}, 422,
     "invalid", "concurrency[0].query"),
    ("POST", T, {"json": ["a"]}, 422, "invalid", "body"),
    ("POST", T, {}, 422, "invalid", "body"),
    ("POST", f"{T}/batch", {"json": {"tasks": [{"action": "a", "tags": {"a.b": 1}}]}}, 422,
     "invalid", "tasks[0].tags"),
    ("POST", f"{T}/batch", {"json": {"tasks": [{"action": "a"},
                                               {"action": "a", "delay": 1, "run_at": 5}]}},
     422, "invalid", "tasks[1].delay"),
    ("POST", f"{T}/delete", {"json": {}}, 422, "invalid", "body"),
    ("GET", T, {"params": {"limit": "1001"}}, 422, "invalid", "limit"),
    ("GET", T, {"params": {"limit": "ten"}}, 422, "invalid", "limit"),
    ("GET", T, {"params": {"filtr": "{}"}}, 422, "invalid", "filtr"),
    ("GET", T, {"params": [("skip", "1"), ("skip", "2")]}, 422, "invalid", "skip"),
    ("GET", f"{T}/01a00000-0000-7000-8000-000000000000/wait", {"params": {"timeout": "61"}},
     422, "invalid", "timeout"),
    ("GET", f"{T}/01a00000-0000-7000-8000-000000000000", {"params": {"logs": "maybe"}},
     422, "invalid", "logs"),
    ("GET", f"{T}/{'x' * 101}", {}, 422, "invalid", "task_id"),
    ("POST", f"{T}/{'x' * 101}/abort", {}, 422, "invalid", "task_id"),
    # empty sort and filter parameters
    ("GET", T, {"params": {"sort": ""}}, 422, "invalid_query", "sort"),
    ("GET", T, {"params": {"sort": " "}}, 422, "invalid_query", "sort"),
    ("GET", T, {"params": {"sort": ","}}, 422, "invalid_query", "sort"),
    ("GET", T, {"params": {"sort": "-priority,,created_at"}}, 422, "invalid_query", "sort"),
    ("GET", T, {"params": {"filter": ""}}, 422, "invalid_query", "filter"),
    ("GET", f"{T}/count", {"params": {"filter": " "}}, 422, "invalid_query", "filter"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "where"), PATHS,
                         ids=[f"{i}-{c[1].rsplit('/', 1)[-1][:8]}-{c[5]}"
                              for i, c in enumerate(PATHS)])
async def test_422_errors_name_the_path(hub: RunningHub, method: str, path: str,
                                        kwargs: dict[str, Any], status: int, code: str,
                                        where: str) -> None:
    key = hub.key("ops", admin=True)
    kept = await hub.app.add("a", {"keep": True})
    await hub.app.abort(kept.id)
    before = [t.to_json() for t in await hub.app.find()]
    async with client(hub, key) as http:
        response = await http.request(method, path, **kwargs)
    error_of(response, status, code)
    assert response.json()["error"].get("path") == where, response.text
    assert [t.to_json() for t in await hub.app.find()] == before


async def test_empty_sort_and_filter_are_refused_not_ignored(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    first = await hub.app.add("a")
    second = await hub.app.add("a")
    async with client(hub, key) as http:
        newest = await http.get(T, params={"sort": "-created_at"})
        assert [t["id"] for t in newest.json()["tasks"]] == [second.id, first.id]
        error_of(await http.get(T, params={"sort": ""}), 422, "invalid_query",
                 "sort: every field must be named")
        error_of(await http.get(T, params={"filter": ""}), 422, "invalid_query",
                 "filter: the filter is empty")
        matched = await http.get(T, params={"filter": "{}", "sort": "created_at"})
        assert [t["id"] for t in matched.json()["tasks"]] == [first.id, second.id]


@pytest.mark.parametrize("headers", [{}, {"content-type": ""}, {"content-type": "text/plain"},
                                     {"content-type": "application/x-www-form-urlencoded"}],
                         ids=["missing", "empty", "text", "form"])
async def test_a_body_without_a_json_content_type_is_415(hub: RunningHub,
                                                         headers: dict[str, str]) -> None:
    key = hub.key("ops", admin=True)
    async with client(hub, key) as http:
        for path in (T, f"{T}/batch", f"{T}/search"):
            body = {"tasks": [{"action": "a"}]} if path.endswith("batch") else {"action": "a"}
            if path.endswith("search"):
                body = {"limit": 1}
            response = await http.post(path, content=json.dumps(body).encode(),
                                       headers=headers)
            error_of(response, 415, "unsupported_media_type",
                     "Content-Type: application/json")
            assert "Content-Type" in response.json()["error"]["message"]
    assert await hub.app.count() == 0


@pytest.mark.parametrize("kind", ["application/json", "application/json; charset=utf-8",
                                  "application/vnd.api+json"])
async def test_json_content_types_are_accepted(hub: RunningHub, kind: str) -> None:
    key = hub.key("ops", admin=True)
    async with client(hub, key) as http:
        response = await http.post(T, content=b'{"action": "a"}',
                                   headers={"content-type": kind})
        assert response.status_code == 201, response.text
        # a body-less POST needs no Content-Type
        task_id = response.json()["id"]
        aborted = await http.post(f"{T}/{task_id}/abort")
        assert aborted.status_code == 200, aborted.text
    assert await hub.app.count() == 1
