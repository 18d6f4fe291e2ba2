from collections.abc import AsyncIterator

import pytest

from conveyor.storage.memory import MemoryStorage
from conveyor.testing.contract import StorageContract


class TestMemoryStorage(StorageContract):
    @pytest.fixture
    async def storage(self) -> AsyncIterator[MemoryStorage]:
        s = MemoryStorage()
        await s.open()
        yield s
        await s.close()
