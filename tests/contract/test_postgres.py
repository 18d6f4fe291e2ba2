"""The storage contract on PostgreSQL (needs CONVEYOR_TEST_PG; each test gets its own schema)."""

from collections.abc import AsyncIterator

import pytest

from conveyor.testing.contract import StorageContract

from ..conftest import BACKENDS, drop_pg_schema, pg_url

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif("postgres" not in BACKENDS, reason="CONVEYOR_TEST_PG is not set"),
]


class TestPostgresStorage(StorageContract):
    @pytest.fixture
    def schema_url(self) -> AsyncIterator[str]:
        url = pg_url(migrate="true")
        yield url
        drop_pg_schema(url)

    @pytest.fixture
    async def storage(self, schema_url: str) -> AsyncIterator[object]:
        from conveyor.storage.postgres import PostgresStorage

        s = PostgresStorage(schema_url)
        await s.open()
        yield s
        await s.close()

    @pytest.fixture
    async def other_storage(self, schema_url: str, storage: object) -> AsyncIterator[object]:
        """A second storage object on the same schema, as another process would have."""
        from conveyor.storage.postgres import PostgresStorage

        s = PostgresStorage(schema_url)
        await s.open()
        yield s
        await s.close()
