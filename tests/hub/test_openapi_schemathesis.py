"""schemathesis against a real hub: no server error, no answer outside the document.

It runs every phase (coverage, fuzzing, stateful) with every check except
``positive_data_acceptance`` (the document cannot say everything the library
checks: ``delay`` and ``run_at`` together, ``unique_fields`` naming a payload
field that is missing, a filter's field names, ...; such requests are valid
by the schema and rightly refused with 422).

The long poll's ``timeout`` is pinned to 0.1 s: a generated wait on a real
task would otherwise hold a request for up to 60 s.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore

from .conftest import RunningHub, running_hub

EXAMPLES = int(os.environ.get("CONVEYOR_SCHEMATHESIS_EXAMPLES", "40"))
SEED = os.environ.get("CONVEYOR_SCHEMATHESIS_SEED", "20261123")

CONFIG = """
[[operations]]
include-path = "/api/v1/tasks/{task_id}/wait"
parameters = { "timeout" = 0.1 }
"""


@pytest.fixture
async def fuzzed_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    store = CredentialStore(tmp_path / "credentials.json")
    app = Conveyor(f"sqlite:///{tmp_path / 'hub.db'}")
    config = HubConfig(port=0, credentials_path=str(store.path), login_failures=10**9)
    async with running_hub(app, config, store) as running:
        yield running


@pytest.mark.timeout(280)
async def test_schemathesis_finds_nothing(fuzzed_hub: RunningHub, tmp_path: Path) -> None:
    key = fuzzed_hub.key("fuzzer", admin=True)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    env["NO_COLOR"] = "1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
        f"{fuzzed_hub.url}/openapi.json",
        "--header", f"Authorization: Bearer {key}",
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--max-examples", str(EXAMPLES), "--seed", SEED,
        "--request-timeout", "20", "--generation-database", "none",
        "--no-color", cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 270)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-20000:]
    assert "No issues found" in text, text[-20000:]
    assert "Operations:       19 selected / 19 total" in text, text[:3000]
