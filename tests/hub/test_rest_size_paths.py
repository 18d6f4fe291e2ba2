"""REST size errors name the field that is too big (``payload``, ``tags``,
``tasks[1].payload``), not the whole ``body``; nothing is written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor

from ._rest_helpers import API, client, error_of
from ._ws_helpers import make_hub
from .conftest import RunningHub, hub_db_url

T = f"{API}/tasks"
BIG = "x" * 2000  # over the app's max_payload of 1000 bytes
OK: dict[str, Any] = {"action": "a"}

# (path, body, the error's path, a needle of its message)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (T, {"action": "a", "payload": BIG}, "payload", "payload is 2002 bytes"),
    (T, {"action": "a", "tags": {"t": BIG}}, "tags", "tags is"),
    (T, {"action": "a", "payload": {"deep": [BIG]}}, "payload", "over the limit of 1000"),
    (f"{T}/batch", {"tasks": [{"action": "a", "payload": BIG}]}, "tasks[0].payload",
     "payload is"),
    (f"{T}/batch", {"tasks": [OK, {"action": "a", "payload": BIG}]}, "tasks[1].payload",
     "task 1: payload is"),
    (f"{T}/batch", {"tasks": [OK, OK, {"action": "a", "tags": {"t": BIG}}]},
     "tasks[2].tags", "task 2: tags is"),
]


@pytest.fixture
async def small_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    app = Conveyor(hub_db_url(tmp_path), max_payload=1000)
    async with make_hub(tmp_path, app=app) as hub:
        yield hub


@pytest.mark.parametrize(("path", "body", "where", "needle"), CASES,
                         ids=[f"{i}-{c[2]}" for i, c in enumerate(CASES)])
async def test_a_field_over_max_payload_is_named_in_path(
        small_hub: RunningHub, path: str, body: dict[str, Any], where: str,
        needle: str) -> None:
    key = small_hub.key("ops", admin=True)
    async with client(small_hub, key) as http:
        response = await http.post(path, json=body)
    error_of(response, 422, "invalid", needle)
    assert response.json()["error"]["path"] == where, response.text
    assert await small_hub.app.count() == 0


async def test_a_body_over_16_mib_is_413_without_a_field(small_hub: RunningHub) -> None:
    """Refused before it is read: there is no field to name (docs/http.md)."""
    key = small_hub.key("ops", admin=True)
    async with client(small_hub, key) as http:
        response = await http.post(T, json={"action": "a", "payload": "x" * (17 << 20)})
    error_of(response, 413, "too_large", "over the limit of 16777216 bytes")
    assert "path" not in response.json()["error"]
    assert await small_hub.app.count() == 0


async def test_other_library_errors_keep_their_paths(small_hub: RunningHub) -> None:
    key = small_hub.key("ops", admin=True)
    async with client(small_hub, key) as http:
        both = await http.post(T, json={"action": "a", "delay": 1, "run_at": 5})
        assert both.json()["error"]["path"] == "delay"
        fine = await http.post(T, json={"action": "a", "payload": "x" * 900})
        assert fine.status_code == 201, fine.text
    assert await small_hub.app.count() == 1
