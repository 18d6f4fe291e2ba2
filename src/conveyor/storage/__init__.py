"""Storage: the interface and its backends (memory, SQLite, PostgreSQL).

:func:`open_storage` turns a URL into a backend:

- ``memory://`` — in this process only, for tests and demos;
- ``sqlite:///relative.db``, ``sqlite:////absolute.db`` — the embedded default;
- ``postgresql://user:password@host/db`` — many processes and machines
  (needs ``pip install 'conveyor[postgres]'``).
"""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import (
    AddResult,
    Change,
    ClaimLimits,
    Completion,
    HeartbeatReply,
    Lease,
    NewLog,
    RecoverReport,
    Storage,
    WorkerInfo,
    key_holder,
)

__all__ = [
    "AddResult",
    "Change",
    "ClaimLimits",
    "Completion",
    "HeartbeatReply",
    "Lease",
    "NewLog",
    "RecoverReport",
    "Storage",
    "WorkerInfo",
    "key_holder",
    "migrate",
    "open_storage",
]


def open_storage(url: str) -> Storage:
    """A storage object for ``url`` (not yet opened: call ``await storage.open()``)."""
    if not isinstance(url, str) or not url:
        raise ConfigurationError("a storage URL is required, e.g. sqlite:///conveyor.db")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        from .memory import MemoryStorage

        if url.partition(":")[2] != "//":
            # memory://name, ?options or #x were taken silently: each memory storage is
            # its own (a name would suggest a shared one), and it has no options
            raise ConfigurationError(
                f"bad memory URL {url!r}: write memory:// with nothing after it (each "
                "memory storage is its own, in this process; it takes no name or option)")
        return MemoryStorage(url)
    if scheme == "sqlite":
        from .sqlite import SQLiteStorage

        return SQLiteStorage.from_url(url)
    if scheme in ("postgres", "postgresql"):
        try:
            from .postgres import PostgresStorage  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigurationError(
                f"PostgreSQL support is not installed ({exc}): pip install 'conveyor[postgres]'"
            ) from None
        return PostgresStorage.from_url(url)  # type: ignore[no-any-return,unused-ignore]
    from ._url import hide_password

    raise ConfigurationError(
        f"unknown storage URL {hide_password(url)!r}: expected memory://, sqlite:///path.db "
        "or postgresql://..."
    )


async def migrate(url: str) -> int:
    """Create or upgrade the schema at ``url``; returns the schema version.

    SQLite databases also migrate themselves when opened; PostgreSQL ones
    only here (``conveyor migrate``) or when opened with ``?migrate=true``.
    Safe to run from several processes at once."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("postgres", "postgresql"):
        from .postgres import migrate as migrate_postgres  # type: ignore[import-not-found,unused-ignore]

        version: int = await migrate_postgres(url)
        return version
    storage = open_storage(url)
    await storage.open()
    await storage.close()
    if scheme == "sqlite":
        from .sqlite import SCHEMA_VERSION

        return SCHEMA_VERSION
    return 0
