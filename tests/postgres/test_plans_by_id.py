"""Statements that reach tasks by id look them up by the primary key, whatever the
statistics say about statuses.

Statistics taken while few tasks ran (a queue filled at a quiet time, the last
ANALYZE before the burst) made the planner read the status index for
``status = 'running'``: every running task, for each id of a batch. A finish of
5,000 tasks with 20,000 running took 41 s instead of 0.1 s; a worker's finishes
fell behind its claims, and the leases of the tasks they ended expired (the
PostgreSQL benchmark's drain of a 1,000,000-task queue stalled)."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

from conveyor.model import Status, Transition
from conveyor.storage import Completion
from conveyor.testing import make_spec

from ..conftest import PG_ENV, pg_schema

BY_ID = ["finish_tasks", "heartbeat", "update_progress", "held_tasks", "claim_ids",
         "append_logs", "delete_finished"]


@pytest.fixture
async def stale(storage: Any, schema_url: str) -> dict[str, list[str]]:
    """20,000 tasks all queued when the table was analyzed; then 10,000 of them
    claimed and 5,000 of those ended: the statistics know of no running task and
    no ended one."""
    import os

    for start in range(0, 20_000, 5000):
        await storage.add([make_spec("plan:x", i) for i in range(start, start + 5000)])
    with psycopg.connect(os.environ[PG_ENV], autocommit=True) as conn:
        table = f'"{pg_schema(schema_url)}".tasks'
        conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")  # stays stale
        conn.execute(f"ANALYZE {table}")
    claimed: list[Any] = []
    while len(claimed) < 10_000:
        claimed += await storage.claim("w", ["plan:x"], 1000, 600.0)
    done, running = claimed[:5000], claimed[5000:]
    ok = Transition(Status.SUCCEEDED)
    for start in range(0, len(done), 1000):
        await storage.finish("w", [Completion(t.id, t.token, ok)
                                   for t in done[start:start + 1000]])
    return {"running": [t.id for t in running[:100]], "tokens": [t.token for t in running[:100]],
            "ended": [t.id for t in done[:100]], "all_running": [t.id for t in running],
            "all_tokens": [t.token for t in running]}


async def test_statements_by_id_read_the_primary_key(storage: Any, schema_url: str,
                                                     stale: dict[str, list[str]]) -> None:
    import os

    offenders: dict[str, str] = {}
    for name in BY_ID:
        query = storage._q[name]
        ids = stale["ended"] if name == "delete_finished" else stale["running"]
        values = {"ids": ids, "tokens": stale["tokens"], "rows": json.dumps(
            [{"id": i, "task_id": i, "token": t}
             for i, t in zip(ids, stale["tokens"], strict=True)]),
            "now": 1.0, "lease_until": 2.0, "origin": "o", "worker": "w", "token": "t"}
        params = {k: values[k] for k in re.findall(r"%\((\w+)\)s", query)}
        with psycopg.connect(os.environ[PG_ENV]) as conn:
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, params).fetchall())
            conn.rollback()
        if "tasks_status" in plan or "tasks_pkey" not in plan:
            offenders[name] = plan
    assert not offenders, "\n\n".join(f"{k}:\n{v}" for k, v in offenders.items())


def _removed(node: dict[str, Any]) -> int:
    """Rows a plan node and those under it read and threw away, over all loops."""
    loops = int(node.get("Actual Loops", 1))
    own = sum(int(node.get(k, 0)) for k in ("Rows Removed by Join Filter",
                                            "Rows Removed by Filter")) * loops
    return own + sum(_removed(child) for child in node.get("Plans", []))


async def test_a_batch_by_id_reads_each_id_once(storage: Any, schema_url: str,
                                                stale: dict[str, list[str]]) -> None:
    """Heartbeat, progress and finish of a batch of 1,000 with 5,000 running, the
    statistics saying none runs: the rows read and thrown away stay within the
    batch (a join read the batch once per running task: millions)."""
    import os

    ids, tokens = stale["all_running"][:1000], stale["all_tokens"][:1000]
    rows = {
        "heartbeat": None,
        "update_progress": [{"id": i, "token": t, "progress": {"current": 1}}
                            for i, t in zip(ids, tokens, strict=True)],
        "finish_tasks": [{"id": i, "token": t, "status": "succeeded", "refund": 0,
                          "event": "succeeded"} for i, t in zip(ids, tokens, strict=True)],
    }
    waste: dict[str, int] = {}
    for name, batch in rows.items():
        values = {"ids": ids, "tokens": tokens, "rows": json.dumps(batch), "now": 1.0,
                  "lease_until": 2.0, "origin": "o", "worker": "w"}
        query = storage._q[name]
        params = {k: values[k] for k in re.findall(r"%\((\w+)\)s", query)}
        with psycopg.connect(os.environ[PG_ENV]) as conn:
            [(plan,)] = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query,
                                     params).fetchall()
            conn.rollback()
        waste[name] = _removed(plan[0]["Plan"])
    assert all(n <= 2 * len(ids) for n in waste.values()), waste
