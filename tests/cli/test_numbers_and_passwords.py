"""Numbers on the command line are written with the digits 0-9 (``float()`` also takes
``1_0`` and digits of other scripts, which were stored as 10 and 5); a tag value out
of a number's range is kept as text, as any value that is not JSON; and no password
of a URL is printed by ``demo`` or by ``serve`` for ``--public-url``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ._support import Background, add, assert_error, cli, count, get


@pytest.mark.parametrize("value", ["1_0", "\u0665", "\uff11", "1e400", "nan", "0x10"])
def test_a_priority_not_written_with_ascii_digits_is_refused(tmp_path: Path,
                                                            value: str) -> None:
    db = f"sqlite:///{tmp_path / 'tasks.db'}"
    task = add(db, "a:b")
    assert_error(cli("add", "a:b", "--priority", value, "--db", db), 2, "must be a")
    assert_error(cli("prioritize", task.id, value, "--db", db), 2, "must be a")
    assert count(db) == 1 and get(db, task.id).priority == 0


@pytest.mark.parametrize("value", ["10", "2.5", "1e2", ".5", "+3"])
def test_plain_numbers_still_go(tmp_path: Path, value: str) -> None:
    db = f"sqlite:///{tmp_path / 'tasks.db'}"
    result = cli("add", "a:b", "--priority", value, "--db", db, "--json")
    assert result.code == 0, result
    assert [t.priority for t in [get(db, result.out.split('"id": "')[1].split('"')[0])]] == [
        float(value)]


def test_a_tag_out_of_a_numbers_range_is_kept_as_text(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tasks.db'}"
    result = cli("add", "a:b", "--tag", "n=1e400", "--tag", "m=-1e999", "--tag", "k=2e3",
                 "--db", db, "--json")
    assert result.code == 0, result
    [task] = [get(db, t) for t in [result.out.split('"id": "')[1].split('"')[0]]]
    assert task.tags == {"n": "1e400", "m": "-1e999", "k": 2000.0}
    assert_error(cli("add", "a:b", "[1e400]", "--db", db), 2, "out of a number's range")
    assert count(db) == 1


def test_demo_prints_no_password(db: str, tmp_path: Path) -> None:
    result = cli("demo", "--db", db, "--duration", "1", cwd=tmp_path, timeout=90)
    assert result.code == 0, result
    if db.startswith("postgresql://"):  # the test server's URL has a password
        password = db.split("@")[0].rsplit(":", 1)[1]
        assert password and f":{password}@" not in result.out + result.err, result
        assert ":***@" in result.out, result
    else:
        assert db.removeprefix("sqlite:///") in result.out, result


def test_serve_logs_the_public_url_without_its_password(
        tmp_path: Path, background: Callable[..., Background]) -> None:
    server = background("serve", "--db", "sqlite:///hub.db", "--insecure", "--port", "0",
                        "--public-url", "http://ann:s3cret@127.0.0.1:9/", cwd=tmp_path)
    ready = server.wait_for("hub ready on", stream="err")
    assert "s3cret" not in ready and "ann:***@127.0.0.1:9" in ready, ready
