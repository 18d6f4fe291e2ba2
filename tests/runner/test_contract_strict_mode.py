"""A backend's own suite built on ``conveyor.testing.StorageContract`` runs under
pytest-asyncio's strict mode too, as the guide says (the suite's ``other_storage``
fixture was an async one of its own: 5 errors in a correct strict-mode subclass)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SUITE = '''
import pytest
import pytest_asyncio

from conveyor.storage.memory import MemoryStorage
from conveyor.testing import StorageContract


@pytest.mark.asyncio
class TestMine(StorageContract):
    @pytest_asyncio.fixture
    async def storage(self):
        s = MemoryStorage()
        await s.open()
        yield s
        await s.close()
'''


def test_the_contract_runs_under_strict_mode(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings =\n    error\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-p", "no:xdist", "-k", "unique_key_race or add_and_get", "test_mine.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
