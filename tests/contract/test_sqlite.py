from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.storage.sqlite import SQLiteStorage
from conveyor.testing.contract import StorageContract


class TestSQLiteStorage(StorageContract):
    @pytest.fixture
    async def storage(self, tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
        s = SQLiteStorage(tmp_path / "tasks.db")
        await s.open()
        yield s
        await s.close()

    @pytest.fixture
    async def other_storage(self, tmp_path: Path,
                            storage: SQLiteStorage) -> AsyncIterator[SQLiteStorage]:
        """A second connection to the same file, as another process would have."""
        s = SQLiteStorage(tmp_path / "tasks.db")
        await s.open()
        yield s
        await s.close()
