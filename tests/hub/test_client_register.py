"""``HubClient.register`` refuses bad options by name and keeps nothing (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import ConfigurationError
from conveyor.client import HubClient


async def _noop(ctx: Any) -> None:
    return None


@pytest.mark.parametrize(("options", "message"), [
    ({"colour": "red"}, "unknown option(s): colour"),
    ({"colour": 1, "size": 2}, "unknown option(s): colour, size"),
    ({"priority": 1}, "applies before any worker has the task: give it to the tasks "
                      "(add(..., priority=...)) instead"),
    ({"pickup_timeout": 5}, "(add(..., pickup_timeout=...))"),
    ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
    ({"max_attempts": 2, "retries": 1}, "give max_attempts or retries, not both"),
    ({"backoff": -1}, "backoff"),
    ({"limit": 1}, "'limit' is not supported for a remote handler"),
    ({"mode": "process"}, "mode='process' is not supported"),
])
def test_bad_register_options_are_named(options: dict[str, Any], message: str) -> None:
    client = HubClient("http://127.0.0.1:1", "key")
    with pytest.raises(ConfigurationError) as err:
        client.register("calc:add", _noop, **options)
    assert message in str(err.value)
    assert client.actions == []
    client.register("calc:add", _noop, timeout=5)  # nothing was kept: registers now
    assert client.actions == ["calc:add"]
