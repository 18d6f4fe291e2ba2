"""A SyncHubClient used before ``os.fork()`` works in the child and still in the parent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from .conftest import RunningHub

pytestmark = pytest.mark.serial  # a fork of a process with busy threads: alone

ROOT = Path(__file__).resolve().parents[2]


async def test_a_hub_client_used_before_a_fork_works_in_the_child_and_the_parent(
        insecure_hub: RunningHub) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.fork_main", "hub", insecure_hub.ws_url,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:  # the whole group: a hung child too
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0, (out, err)
    assert lines == [{"child": {"mine": 21, "parents": 5}},
                     {"child_exit": 0, "parent": {"first": "queued"}}], err
    assert await insecure_hub.app.count({"action": "fork:hub"}) == 2
