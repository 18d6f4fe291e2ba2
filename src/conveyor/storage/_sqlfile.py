"""Named SQL queries and versioned migrations kept as ``.sql`` files.

A query file holds blocks that start with a ``-- name: <name>`` line; the
text up to the next such line is the query. Migrations are files named
``NNNN_description.sql`` in a ``migrations`` folder; ``NNNN`` is the schema
version the file brings the database to. Other ``.sql`` files of a dialect's
folder are read whole by name (:func:`load_sql`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["Migration", "load_migrations", "load_queries", "load_sql"]

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def load_queries(dialect: str) -> dict[str, str]:
    """The named queries of ``sql/<dialect>/queries.sql``."""
    text = resources.files(__package__).joinpath("sql", dialect, "queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for i in range(1, len(parts), 2):
        name, body = parts[i], parts[i + 1].strip()
        if name in queries:
            raise RuntimeError(f"query {name!r} defined twice in {dialect}/queries.sql")
        queries[name] = body
    return queries


def load_sql(dialect: str, name: str) -> str:
    """The text of ``sql/<dialect>/<name>``."""
    return resources.files(__package__).joinpath("sql", dialect, name).read_text("utf-8")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """The migrations of ``sql/<dialect>/migrations``, in version order, numbered 1, 2, ..."""
    folder = resources.files(__package__).joinpath("sql", dialect, "migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"{dialect} migrations are not numbered 1..n: {migration.name}")
    return found
