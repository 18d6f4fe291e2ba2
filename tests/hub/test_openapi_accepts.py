"""/openapi.json says what the hub accepts: for each request below, the document
allows it exactly when the hub answers 2xx (sorts, filters, unique_scope, delete)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest

from ._rest_helpers import API, client
from .conftest import RunningHub

BODIES: list[tuple[str, Any]] = [
    # sorts in a body
    ("/tasks/search", {"sort": []}),
    ("/tasks/search", {"sort": {}}),
    ("/tasks/search", {"sort": [{}]}),
    ("/tasks/search", {"sort": ""}),
    ("/tasks/search", {"sort": "-priority"}),
    ("/tasks/search", {"sort": "tags"}),
    ("/tasks/search", {"sort": "priority.x"}),
    ("/tasks/search", {"sort": "payload..x"}),
    ("/tasks/search", {"sort": ["id", "desc"]}),
    ("/tasks/search", {"sort": ["id", "DESCENDING"]}),
    ("/tasks/search", {"sort": ["-id", "asc"]}),
    ("/tasks/search", {"sort": ["id", 5]}),
    ("/tasks/search", {"sort": ["id", True]}),
    ("/tasks/search", {"sort": [["payload.a b", 1], {"id": -1}, "+priority"]}),
    ("/tasks/search", {"sort": [["id", 1, 2]]}),
    ("/tasks/search", {"sort": [{"id": 1, "priority": 1}]}),
    ("/tasks/search", {"sort": {"payload.x": "asc", "id": -1}}),
    ("/tasks/search", {"sort": {"-id": 1}}),
    ("/tasks/search", {"sort": {"nope": 1}}),
    # filters
    ("/tasks/search", {"filter": {}}),
    ("/tasks/search", {"filter": {"nope": 1}}),
    ("/tasks/search", {"filter": {"": 1}}),
    ("/tasks/search", {"filter": {"status.x": "queued"}}),
    ("/tasks/search", {"filter": {"payload.a": {"x": 1}}}),
    ("/tasks/search", {"filter": {"priority": {}}}),
    ("/tasks/search", {"filter": {"priority": [1]}}),
    ("/tasks/search", {"filter": {"priority": {"$options": "i"}}}),
    ("/tasks/search", {"filter": {"$and": []}}),
    ("/tasks/search", {"filter": {"$nor": [{"id": "x"}]}}),
    ("/tasks/search", {"filter": {"$or": [{"id": "x"}, {"$not": {"tags.a.b": None}}],
                                  "priority": {"$gte": 1, "$not": {"$gt": 5}}}}),
    ("/tasks/count", {"filter": {"": {}}}),
    ("/tasks/count", {"filter": {"payload.user.id": {"$in": [1, "a"]}}}),
    # unique_scope and concurrency queries of new tasks
    ("/tasks", {"action": "a", "unique_key": "k1", "unique_scope": ["aborted"]}),
    ("/tasks", {"action": "a", "unique_key": "k2", "unique_scope": ["running", "queued"]}),
    ("/tasks", {"action": "a", "concurrency": [{"query": {"nope": 1}}]}),
    ("/tasks", {"action": "a", "concurrency": [{"query": {"action": "a"}}]}),
    ("/tasks/batch", {"tasks": [{"action": "a", "unique_key": "k3",
                                 "unique_scope": ["failed"]}]}),
    # delete: ids or filter, not both, not neither
    ("/tasks/delete", {"filter": None, "ids": None}),
    ("/tasks/delete", {}),
    ("/tasks/delete", {"ids": ["x"], "filter": {}}),
    ("/tasks/delete", {"ids": ["x"], "filter": None}),
    ("/tasks/delete", {"filter": {"status": "failed"}}),
    ("/tasks/delete", {"filter": {"nope": 1}}),
]

SORT_PARAMS = ["", ",", "priority,,id", "id,", " -priority , id ", "-id,+priority,payload.a.b",
               "payload. ", "payload.a b", "unknown", "priority.x", "[]", "{}", '"-id"',
               '[["id",1]]', '["id", 1]', "[{}]", "[", '{"id": 2}', '{"id": 1, "priority":"asc"}',
               '[ "id" , ["priority", "desc"], {"payload.x": -1} ]']
FILTER_PARAMS = ["{}", '{"nope": 1}', '{"status": "queued", "payload.n": {"$gt": 1}}',
                 '{"$or": []}']


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    return jsonschema_rs.validator_for({**schema, "components": document["components"]})


@pytest.fixture
async def document(hub: RunningHub) -> dict[str, Any]:
    async with client(hub, hub.key("reader", admin=True)) as http:
        return dict((await http.get("/openapi.json")).json())


async def test_bodies_are_allowed_exactly_when_accepted(hub: RunningHub,
                                                        document: dict[str, Any]) -> None:
    wrong = []
    async with client(hub, hub.key("admin", admin=True)) as http:
        for path, body in BODIES:
            op = document["paths"][API + path]["post"]
            schema = op["requestBody"]["content"]["application/json"]["schema"]
            allowed = _validator(document, schema).is_valid(body)
            r = await http.post(API + path, json=body)
            assert r.status_code < 300 or r.status_code == 422, (path, body, r.text)
            if allowed != (r.status_code < 300):
                wrong.append((path, body, allowed, r.status_code, r.text[:200]))
    assert not wrong, wrong


async def test_query_parameters_are_allowed_exactly_when_accepted(
        hub: RunningHub, document: dict[str, Any]) -> None:
    params = {p["name"]: p for p in document["paths"][f"{API}/tasks"]["get"]["parameters"]}
    sort = _validator(document, params["sort"]["schema"])
    filter = _validator(document, params["filter"]["content"]["application/json"]["schema"])
    wrong = []
    async with client(hub, hub.key("admin", admin=True)) as http:
        for value in SORT_PARAMS:
            r = await http.get(f"{API}/tasks", params={"sort": value})
            if sort.is_valid(value) != (r.status_code == 200):
                wrong.append(("sort", value, r.status_code, r.text[:200]))
        for value in FILTER_PARAMS:
            r = await http.get(f"{API}/tasks", params={"filter": value})
            if filter.is_valid(json.loads(value)) != (r.status_code == 200):
                wrong.append(("filter", value, r.status_code, r.text[:200]))
    assert not wrong, wrong
