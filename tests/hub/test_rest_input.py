"""REST: every kind of bad input gets a clear 4xx and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ._rest_helpers import API, client, error_of
from .conftest import RunningHub

ID = "01a00000-0000-7000-8000-000000000000"
T = f"{API}/tasks"
JSON: dict[str, Any] = {"headers": {"content-type": "application/json"}}

# (method, path, request kwargs, status, code, needles)
CASES: list[tuple[str, str, dict[str, Any], int, str, tuple[str, ...]]] = [
    # bodies that cannot be read
    ("POST", T, {"content": b'{"action": ', "headers": {"content-type": "application/json"}},
     400, "invalid_json", ("not valid JSON",)),
    ("POST", T, {"content": b'{"action": "a", "priority": NaN}', **JSON}, 400, "invalid_json",
     ("NaN",)),
    ("POST", T, {"content": b"\xff\xfe{}", **JSON}, 400, "invalid_json", ("UTF-8",)),
    ("POST", T, {"content": b'{"action": "a", "payload": "\\ud800"}', **JSON}, 400, "invalid_json",
     ("Unicode",)),
    ("POST", T, {"content": json.dumps({"action": "a", "payload": [[[[[[[[[[[[[[[[[[[[[[[[[
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
        ]]]]]]]]]]]]]]]]]]]]]]]]]}).encode(), **JSON}, 400, "invalid_json", ("nested",)),
    ("POST", T, {"content": b'{"action": "a"}', "headers": {"content-type": "text/plain"}},
     415, "unsupported_media_type", ("JSON",)),
    ("POST", T, {"content": b"x" * (16 * 1024 * 1024 + 1)}, 413, "too_large", ("limit",)),
    # readable but invalid bodies
    ("POST", T, {}, 422, "invalid", ("body is required",)),
    ("POST", T, {"json": ["a"]}, 422, "invalid", ("must be a JSON object, not array",)),
    ("POST", T, {"json": {"payload": 1}}, 422, "invalid", ("action: required",)),
    ("POST", T, {"json": {"action": "a", "colour": "red"}}, 422, "invalid",
     ("colour: unknown field",)),
    ("POST", T, {"json": {"action": "bad name!"}}, 422, "invalid", ("action",)),
    ("POST", T, {"json": {"action": 7}}, 422, "invalid", ("action",)),
    ("POST", T, {"json": {"action": "a", "priority": "high"}}, 422, "invalid",
     ("priority", "number")),
    ("POST", T, {"json": {"action": "a", "priority": True}}, 422, "invalid", ("priority",)),
    ("POST", T, {"json": {"action": "a", "priority": 10**320}}, 422, "invalid",
     ("priority: must be a finite number, not an integer of about 320 digits",)),
    ("POST", T, {"json": {"action": "a", "delay": -1}}, 422, "invalid", ("delay",)),
    ("POST", T, {"json": {"action": "a", "delay": 1, "run_at": 2}}, 422, "invalid",
     ("delay or run_at",)),
    ("POST", T, {"json": {"action": "a", "max_attempts": 0}}, 422, "invalid",
     ("max_attempts",)),
    ("POST", T, {"json": {"action": "a", "max_attempts": 2**70}}, 422, "invalid",
     ("max_attempts",)),
    ("POST", T, {"json": {"action": "a", "max_attempts": 1.5}}, 422, "invalid",
     ("max_attempts",)),
    ("POST", T, {"json": {"action": "a", "tags": {"a.b": 1}}}, 422, "invalid", ("tag name",)),
    ("POST", T, {"json": {"action": "a", "unique_scope": ["running"]}}, 422, "invalid",
     ("unique_scope",)),
    ("POST", T, {"json": {"action": "a", "unique_fields": ["x"], "payload": {}}}, 422,
     "invalid", ("unique_fields",)),
    ("POST", T, {"json": {"action": "a", "unique_fields": ["x"], "payload": {"x": "y" * 600}}},
     422, "invalid", ("unique_fields: the key they make is",)),
    ("POST", T, {"json": {"action": "a", "backoff": {"factor": 0.5}}}, 422, "invalid",
     ("backoff.factor",)),
    ("POST", T, {"json": {"action": "a", "concurrency": [{"query": {"nope": 1}}]}}, 422,
     "invalid", ("concurrency[0].query",)),
    ("POST", T, {"json": {"action": "a", "payload": "x" * (1 << 20)}}, 422, "invalid",
     ("payload is", "over the limit")),
    ("POST", f"{T}/batch", {"json": {"tasks": []}}, 422, "invalid", ("tasks",)),
    ("POST", f"{T}/batch", {"json": {"tasks": [{"action": "a"}] * 1001}}, 422, "invalid",
     ("tasks",)),
    ("POST", f"{T}/batch", {"json": {"tasks": [{"action": "a"}, {"action": "a", "x": 1}]}},
     422, "invalid", ("tasks[1].x: unknown field",)),
    ("POST", f"{T}/batch", {"json": [{"action": "a"}]}, 422, "invalid", ("object",)),
    # query strings
    ("GET", T, {"params": {"filter": "{"}}, 400, "invalid_json", ("filter parameter",)),
    ("GET", T, {"params": {"filter": "[1]"}}, 422, "invalid_query", ("JSON object",)),
    ("GET", T, {"params": {"filter": '{"priority": {"$gt": [1]}}'}}, 422, "invalid_query",
     ("filter.priority.$gt",)),
    ("GET", T, {"params": {"filter": '{"nope": 1}'}}, 422, "invalid_query",
     ("filter.nope", "unknown field")),
    ("GET", T, {"params": {"sort": "nope"}}, 422, "invalid_query", ("sort",)),
    ("GET", T, {"params": {"sort": "[1, 2, 3]"}}, 422, "invalid_query", ("sort",)),
    ("GET", T, {"params": {"limit": "-1"}}, 422, "invalid", ("limit",)),
    ("GET", T, {"params": {"limit": "1001"}}, 422, "invalid", ("limit", "1000")),
    ("GET", T, {"params": {"limit": "ten"}}, 422, "invalid", ("limit", "integer")),
    ("GET", T, {"params": {"skip": "1e3"}}, 422, "invalid", ("skip",)),
    ("GET", T, {"params": {"filtr": "{}"}}, 422, "invalid", ("unknown query parameter",
                                                               "filtr")),
    ("GET", T, {"params": [("limit", "1"), ("limit", "2")]}, 422, "invalid",
     ("more than once",)),
    ("POST", f"{T}/search", {"json": {"filter": {"status": "done"}}}, 422, "invalid_query",
     ("filter.status", "not a status")),
    ("POST", f"{T}/search", {"json": {"limit": True}}, 422, "invalid", ("limit",)),
    ("POST", f"{T}/search", {"json": {"filter": "x"}}, 422, "invalid", ("filter",)),
    ("GET", f"{T}/count", {"params": {"filter": '{"$or": []}'}}, 422, "invalid_query",
     ("filter.$or",)),
    ("POST", f"{T}/count", {"json": {"filter": {"$and": [{"priority": "x"}]}}}, 422,
     "invalid_query", ("filter.$and[0].priority",)),
    ("GET", f"{T}/{ID}", {"params": {"max_level": "loud"}}, 422, "invalid", ("max_level",)),
    ("GET", f"{T}/{ID}", {"params": {"logs": "maybe"}}, 422, "invalid", ("logs",)),
    ("GET", f"{T}/{'x' * 101}", {}, 422, "invalid", ("task id",)),
    ("GET", f"{T}/{ID}/wait", {"params": {"timeout": "61"}}, 422, "invalid",
     ("timeout", "60")),
    ("GET", f"{T}/{ID}/wait", {"params": {"timeout": "nan"}}, 422, "invalid", ("timeout",)),
    ("GET", f"{T}/{ID}/wait", {"params": {"timeout": "-1"}}, 422, "invalid", ("timeout",)),
    ("GET", f"{T}/{ID}/logs", {"params": {"after_seq": "-1"}}, 422, "invalid", ("after_seq",)),
    ("GET", f"{T}/{ID}/logs", {"params": {"limit": "0"}}, 422, "invalid", ("limit",)),
    ("GET", f"{T}/{ID}/logs", {"params": {"after_seq": "9" * 23}}, 422, "invalid",
     ("after_seq must be between 0 and",)),
    ("GET", T, {"params": {"skip": "1" + "0" * 30}}, 422, "invalid", ("skip must be between",)),
    ("GET", f"{API}/stats", {"params": {"x": "1"}}, 422, "invalid", ("unknown query",)),
    # control bodies
    ("POST", f"{T}/{ID}/prioritize", {}, 422, "invalid", ("body is required",)),
    ("POST", f"{T}/{ID}/prioritize", {"json": {"priority": "1"}}, 422, "invalid",
     ("priority",)),
    ("POST", f"{T}/{ID}/prioritize", {"json": {}}, 422, "invalid", ("priority: required",)),
    ("POST", f"{T}/{ID}/abort", {"json": {"reason": ""}}, 422, "invalid", ("reason",)),
    ("POST", f"{T}/{ID}/retry", {"json": {"delay": -5}}, 422, "invalid", ("delay",)),
    ("POST", f"{T}/delete", {"json": {}}, 422, "invalid", ("ids or filter",)),
    ("POST", f"{T}/delete", {"json": {"ids": [ID], "filter": {}}}, 422, "invalid",
     ("ids or filter",)),
    ("POST", f"{T}/delete", {"json": {"ids": []}}, 422, "invalid", ("ids",)),
    ("POST", f"{T}/delete", {"json": {"filter": {"x": 1}}}, 422, "invalid_query", ("filter.x",)),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "needles"), CASES,
                         ids=[f"{i}-{c[0]}-{c[1].rsplit('/', 1)[-1][:12]}-{c[3]}"
                              for i, c in enumerate(CASES)])
async def test_bad_input_is_refused_and_nothing_is_written(
        hub: RunningHub, method: str, path: str, kwargs: dict[str, Any], status: int,
        code: str, needles: tuple[str, ...]) -> None:
    key = hub.key("ops", admin=True)
    kept = await hub.app.add("a", {"keep": True}, priority=1)
    await hub.app.abort(kept.id)
    before = [t.to_json() for t in await hub.app.find()]
    async with client(hub, key) as http:
        response = await http.request(method, path, **kwargs)
    error_of(response, status, code, *needles)
    assert [t.to_json() for t in await hub.app.find()] == before


async def test_control_of_missing_and_ended_tasks(hub: RunningHub) -> None:
    key = hub.key("ops", admin=True)
    done = await hub.app.add("a")
    await hub.app.abort(done.id)
    queued = await hub.app.add("a")
    async with client(hub, key) as http:
        for method, suffix, body in [("POST", "abort", None), ("POST", "retry", None),
                                     ("POST", "prioritize", {"priority": 1}),
                                     ("GET", "wait", None), ("GET", "logs", None),
                                     ("GET", "", None), ("DELETE", "", None)]:
            path = f"{T}/{ID}/{suffix}".rstrip("/")
            error_of(await http.request(method, path, json=body), 404, "not_found", ID)
        error_of(await http.post(f"{T}/{done.id}/abort"), 409, "invalid_transition")
        error_of(await http.post(f"{T}/{done.id}/prioritize", json={"priority": 2}), 409,
                 "invalid_transition")
        error_of(await http.post(f"{T}/{queued.id}/retry"), 409, "invalid_transition")
        error_of(await http.delete(f"{T}/{queued.id}"), 409, "invalid_transition",
                 "only finished tasks")
    assert (await hub.app.get(queued.id)).status.value == "queued"
    assert (await hub.app.get(done.id)).priority == 0
