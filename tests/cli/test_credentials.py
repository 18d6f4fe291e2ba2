"""conveyor credentials add/list/revoke through the real CLI, the read right included."""

from __future__ import annotations

import json
from pathlib import Path

from conveyor.hub._credentials import CredentialStore

from ._support import assert_error, cli


def test_add_list_and_revoke_with_every_right(tmp_path: Path) -> None:
    path = str(tmp_path / "creds.json")
    made = cli("credentials", "add", "monitor", "--read", "geo:*", "--read", "mail:send",
               "--json", "--credentials", path)
    assert made.code == 0, made
    created = json.loads(made.out)
    assert created["read"] == ["geo:*", "mail:send"]
    assert (created["publish"], created["subscribe"], created["admin"]) == ([], [], False)
    worker = cli("credentials", "add", "worker", "--subscribe", "geo:*", "--publish", "geo:x",
                 "--credentials", path)
    assert worker.code == 0 and worker.out.startswith("cvk_"), worker

    store = CredentialStore(path)
    monitor = store.authenticate(created["key"])
    assert monitor is not None
    assert monitor.can_read("geo:code") and monitor.can_read("mail:send")
    assert not monitor.can_read("mail:bulk")
    assert not monitor.can_publish("geo:code") and not monitor.can_subscribe("geo:code")
    assert "cvk_" not in Path(path).read_text()  # only hashes are stored

    listed = json.loads(cli("credentials", "list", "--json", "--credentials", path).out)
    assert [(c["name"], c["read"]) for c in listed] == [("monitor", ["geo:*", "mail:send"]),
                                                        ("worker", [])]
    table = cli("credentials", "list", "--credentials", path)
    assert table.code == 0 and "read" in table.out and "geo:*" in table.out

    assert_error(cli("credentials", "add", "bad", "--read", "no spaces", "--credentials", path),
                 2, "read pattern")
    assert cli("credentials", "revoke", "monitor", "--credentials", path).code == 0
    assert CredentialStore(path).authenticate(created["key"]) is None


def test_list_of_a_missing_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "typo.json"
    listed = cli("credentials", "list", "--json", "--credentials", str(path))
    assert listed.code == 0 and json.loads(listed.out) == []
    assert f"no credentials file at {path}" in listed.err
    assert not path.exists()
    assert cli("credentials", "add", "a", "--read", "*", "--credentials", str(path)).code == 0
    again = cli("credentials", "list", "--credentials", str(path))
    assert again.code == 0 and "no credentials file" not in again.err
