"""Dedupe under a race: 8 processes add the same 1,000 unique keys at once."""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conveyor import Conveyor

from ..integration.procs import REPO

PROCESSES = 8
KEYS = 1000


def start_child(url: str, go: Path, out: Path, seed: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.control._dedupe_child", url, str(go), str(out), str(seed),
         str(KEYS)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def wait_ready(proc: subprocess.Popen[str], timeout: float) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"child did not start: {line!r} {err}")


@pytest.mark.slow
async def test_eight_processes_add_the_same_keys(shared_url: str, tmp_path: Path) -> None:
    app = Conveyor(shared_url)
    await app.open()  # the schema exists before the children race
    go = tmp_path / "go"
    outs = [tmp_path / f"child-{i}.json" for i in range(PROCESSES)]
    procs = [start_child(shared_url, go, out, seed) for seed, out in enumerate(outs)]
    try:
        for proc in procs:
            await asyncio.to_thread(wait_ready, proc, 60)
        t0 = time.monotonic()
        go.touch()  # all start together
        for proc in procs:
            _, err = await asyncio.to_thread(proc.communicate, timeout=120)
            assert proc.returncode == 0, err
        took = time.monotonic() - t0
        tasks = await app.find({"action": "dedupe"})
        total = await app.count()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        await app.close()

    assert total == KEYS and len(tasks) == KEYS
    per_key = Counter(t.unique_key for t in tasks)
    assert set(per_key) == {f"key-{k}" for k in range(KEYS)}
    assert set(per_key.values()) == {1}
    stored = {t.unique_key: t.id for t in tasks}
    got = [json.loads(out.read_text()) for out in outs]
    for answers in got:  # every process got the one stored task for every key
        assert {key: task_id for key, (task_id, _) in answers.items()} == stored
    # exactly one process was told "created" for each key: the one whose payload is stored
    told = Counter(key for answers in got for key, (_, created) in answers.items() if created)
    assert told == Counter({key: 1 for key in stored})
    by = {t.unique_key: t.payload["by"] for t in tasks}
    for seed, answers in enumerate(got):
        assert {k for k, (_, created) in answers.items() if created} == {
            k for k, winner in by.items() if winner == seed}
    winners = Counter(t.payload["by"] for t in tasks)
    print(f"\ndedupe race: {PROCESSES} processes x {KEYS} keys in {took:.2f}s; "
          f"tasks created per process: {dict(sorted(winners.items()))}")
    assert len(winners) >= 2  # the processes really raced
