"""/openapi.json: describes every HTTP route, and real answers match its schemas."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
from starlette.routing import Route

from ._rest_helpers import API, client, error_of, make_keys, worker_hub
from .conftest import RunningHub

__all__ = ["worker_hub"]


def _validator(document: dict[str, Any], name: str) -> Any:
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema_rs.validator_for(root)


async def test_the_document_lists_every_route(hub: RunningHub) -> None:
    key = hub.key("admin", admin=True)
    async with client(hub) as anonymous:
        error_of(await anonymous.get("/openapi.json"), 401)
    async with client(hub, key) as http:
        r = await http.get("/openapi.json")
    assert r.status_code == 200
    document = r.json()
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": hub.hub.config.base_url}]
    assert {"bearer", "key"} <= set(document["components"]["securitySchemes"])
    paths = document["paths"]
    asgi_routes = [route for route in _routes(hub) if isinstance(route, Route)]
    assert asgi_routes
    for route in asgi_routes:
        assert route.path in paths, route.path
        declared = {m.upper() for m in paths[route.path]}
        assert declared == set(route.methods or ()) - {"HEAD"}, route.path
    operation_ids = set()
    for path, item in paths.items():
        for method, op in item.items():
            operation_ids.add(op["operationId"])
            assert op["summary"], (path, method)
            responses = op["responses"]
            assert {"401", "429"} <= set(responses), (path, method)
            assert any(code.startswith("2") for code in responses), (path, method)
            if "{task_id}" in path:
                assert op["parameters"][0]["name"] == "task_id"
                assert "404" in responses
            if "requestBody" in op:
                assert "422" in responses and "400" in responses
    assert len(operation_ids) == sum(len(item) for item in paths.values())
    jsonschema_rs.validator_for({"components": document["components"]})  # well formed


def _routes(hub: RunningHub) -> list[Any]:
    app = hub.server.config.app
    return list(app.routes)


async def test_answers_match_the_document(worker_hub: RunningHub) -> None:
    keys = make_keys(worker_hub)
    async with client(worker_hub, keys.admin) as http:
        document = (await http.get("/openapi.json")).json()
        task_schema = _validator(document, "TaskOut")
        ok = (await http.post(f"{API}/tasks", json={"action": "geo:code",
                                                     "tags": {"k": [1, {"a": None}]}})).json()
        bad = (await http.post(f"{API}/tasks", json={"action": "job:fail",
                                                      "backoff": 1, "max_attempts": 1})).json()
        for task in (ok, bad):
            task_schema.validate(task)
            ended = (await http.get(f"{API}/tasks/{task['id']}/wait",
                                    params={"timeout": 10})).json()
            task_schema.validate(ended)
        with_logs = (await http.get(f"{API}/tasks/{bad['id']}",
                                    params={"logs": "true"})).json()
        task_schema.validate(with_logs)
        assert with_logs["error"]["type"] == "RuntimeError"
        progressed = (await http.get(f"{API}/tasks/{ok['id']}")).json()
        task_schema.validate(progressed)
        for path, name in [(f"{API}/stats", "StatsOut"), (f"{API}/workers", "WorkersOut"),
                           (f"{API}/tasks", "TaskListOut"), (f"{API}/tasks/count", "CountOut"),
                           (f"{API}/tasks/{ok['id']}/logs", "LogsOut")]:
            _validator(document, name).validate((await http.get(path)).json())
        _validator(document, "ErrorOut").validate(
            (await http.get(f"{API}/tasks", params={"limit": "x"})).json())
