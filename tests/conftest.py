"""Shared fixtures: apps on every backend this machine has.

PostgreSQL joins when ``CONVEYOR_TEST_PG`` holds a server URL (scripts/test
sets it from scripts/pg-setup): each test then gets a schema of its own,
created on open (``?migrate=true``) and dropped after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from conveyor import Conveyor

PG_ENV = "CONVEYOR_TEST_PG"
BACKENDS = ["memory", "sqlite", *(["postgres"] if os.environ.get(PG_ENV) else [])]


def pg_url(schema: str | None = None, **options: str) -> str:
    """The test server's URL with a schema (a fresh random one by default) and options."""
    base = os.environ[PG_ENV]
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    query.append(("schema", schema or f"t_{uuid.uuid4().hex[:16]}"))
    query.extend(options.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def pg_schema(url: str) -> str:
    """The schema named in a URL of :func:`pg_url`."""
    return dict(parse_qsl(urlsplit(url).query))["schema"]


def drop_pg_schema(url: str) -> None:
    """Drop the schema named in ``url`` (and everything in it)."""
    import psycopg  # the [postgres] extra; a missing driver is an error, not a skip

    schema = pg_schema(url)
    with psycopg.connect(os.environ[PG_ENV], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def backend_url(kind: str, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    if kind == "postgres":
        return pg_url(migrate="true")
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    value = backend_url(request.param, tmp_path)
    yield value
    if request.param == "postgres":
        drop_pg_schema(value)


@pytest.fixture
async def app(url: str) -> AsyncIterator[Conveyor]:
    """An app with short leases and fast sweeps, closed after the test."""
    app = Conveyor(url, concurrency=8, lease=5.0, stop_timeout=2.0)
    yield app
    await app.close()


def _skipped(config: pytest.Config) -> list[object]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return list(reporter.stats.get("skipped", [])) if reporter is not None else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``CONVEYOR_NO_SKIPS=1`` (set by ``scripts/test``, so CI) a skipped test
    fails the run: everything the suite has must run there, PostgreSQL included.
    (Under pytest-xdist this runs in the controller too, which sees every report.)"""
    if os.environ.get("CONVEYOR_NO_SKIPS") != "1" or exitstatus != 0:
        return
    if _skipped(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say why a run with skips failed, after the summary (see pytest_sessionfinish)."""
    skipped = _skipped(terminalreporter.config)
    if os.environ.get("CONVEYOR_NO_SKIPS") == "1" and skipped:
        terminalreporter.write_line(f"CONVEYOR_NO_SKIPS: {len(skipped)} test(s) skipped; "
                                    "every test must run here", red=True)
