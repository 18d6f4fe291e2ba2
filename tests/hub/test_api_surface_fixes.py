"""Fixes from the API surface audit on the hub side: credential rights given as a
string (read as its characters: "mail:*" held "*") or an admin flag that is not a
bool ("no", read back as true) are refused; ``HubClient.wait`` takes a timedelta."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from conveyor import ConfigurationError, ValidationError, WaitTimeout
from conveyor.client import HubClient
from conveyor.hub._credentials import CredentialStore

from .conftest import RunningHub


@pytest.mark.parametrize("rights", [{"publish": "mail:*"}, {"subscribe": "reports:*"},
                                    {"read": "x"}, {"admin": "no"}, {"admin": 1}])
def test_rights_of_the_wrong_type_are_refused(tmp_path: Path, rights: dict[str, object]) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    with pytest.raises(ValidationError):
        store.add("svc", **rights)  # type: ignore[arg-type]
    assert store.list() == []


def test_a_credentials_file_with_a_non_bool_admin_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    store = CredentialStore(path)
    store.add("svc", publish=["mail:*"])
    data = json.loads(path.read_text())
    data["credentials"][0]["admin"] = "no"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigurationError, match="admin must be true or false"):
        CredentialStore(path).list()


async def test_hub_client_wait_takes_a_timedelta(hub: RunningHub) -> None:
    task = await hub.app.add("nobody:runs")
    async with HubClient(hub.url, hub.key("ops", admin=True)) as client:
        for wait in (client.wait, client.wait_task):
            with pytest.raises(WaitTimeout):
                await wait(task.id, timedelta(milliseconds=200))
