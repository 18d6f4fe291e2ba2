"""``conveyor bench``: how fast no-op tasks go on this machine and this storage.

A quick measure for users choosing a storage or checking a disk: the project's
own benchmarks, with raw-database baselines and peer libraries, are in ``bench/``.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from conveyor.app import Conveyor
from conveyor.context import Context
from conveyor.storage import Storage, open_storage

from ._base import EXIT_OK, db_option_with, dump_json, explicit_db
from ._render import err_console, out_console
from ._signals import run_stopping_on_sigterm

__all__ = ["BenchResult", "bench_command", "run_bench"]

BATCH = 1000
"""Tasks per ``add_many`` call."""


@dataclass(frozen=True)
class BenchResult:
    """What one ``conveyor bench`` run measured (rates per second, latencies in ms)."""

    storage: str
    tasks: int
    concurrency: int
    add_one_per_s: float
    add_many_per_s: float
    drain_per_s: float
    latency_samples: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None


class _Ended:
    """Counts the ends of one action's runs; wakes a waiter at a target count."""

    def __init__(self, action: str) -> None:
        self.action = action
        self.ended = 0
        self.target = 0
        self.started_at = 0.0
        self.done = asyncio.Event()
        self.started = asyncio.Event()

    def __call__(self, kind: str, action: str, status: str | None,
                 run_seconds: float | None) -> None:
        if action != self.action:
            return
        if kind == "started":
            self.started_at = time.perf_counter()
            self.started.set()
        elif kind == "ended":
            self.ended += 1
            if self.ended >= self.target:
                self.done.set()


async def run_bench(url: str | Storage, *, tasks: int, concurrency: int, latency_samples: int,
                    timeout: float = 600.0) -> BenchResult:
    """Measure on ``url``: ``tasks // 10`` (at least 1) adds one by one, ``tasks`` adds
    in batches of 1,000, the drain of all of them by one worker of ``concurrency``,
    then enqueue-to-start latency with the idle worker (``latency_samples`` tasks
    added one at a time). The tasks have an action of their own
    (``conveyor.bench:<random>``), so other workers on the storage leave them alone;
    they are deleted at the end."""
    action = f"conveyor.bench:{uuid.uuid4().hex[:12]}"
    app = Conveyor(url, concurrency=concurrency)

    @app.handler(action)
    async def noop(ctx: Context[Any]) -> None:
        return None

    counter = _Ended(action)
    app.bus.add_tally(counter)
    try:
        await app.open()
    except BaseException:  # nothing was added
        await app.close()
        raise
    try:
        one_by_one = max(1, tasks // 10)
        began = time.perf_counter()
        for i in range(one_by_one):
            await app.add(action, {"i": i})
        add_one = one_by_one / (time.perf_counter() - began)

        began = time.perf_counter()
        for start in range(0, tasks, BATCH):
            await app.add_many([(action, {"i": i})
                                for i in range(start, min(start + BATCH, tasks))])
        add_many = tasks / (time.perf_counter() - began)

        counter.target = one_by_one + tasks
        began = time.perf_counter()
        await app.start()
        await asyncio.wait_for(counter.done.wait(), timeout)
        drain = counter.target / (time.perf_counter() - began)

        latencies: list[float] = []
        for i in range(latency_samples):
            counter.started.clear()
            added = time.perf_counter()
            await app.add(action, {"latency": i})
            await asyncio.wait_for(counter.started.wait(), timeout)
            latencies.append((counter.started_at - added) * 1000.0)
        await app.stop()
        await app.delete({"action": action})
    except BaseException:
        await _leave_note(app, action)
        raise
    finally:
        await app.close()
    return BenchResult(
        storage=app.storage.url, tasks=tasks, concurrency=concurrency,
        add_one_per_s=add_one, add_many_per_s=add_many, drain_per_s=drain,
        latency_samples=len(latencies),
        latency_p50_ms=statistics.median(latencies) if latencies else None,
        latency_p99_ms=_percentile(latencies, 0.99) if latencies else None)


async def _leave_note(app: Conveyor, action: str) -> None:
    """An interrupted or failed run: delete its finished tasks and say which are left
    (queued ones wait for a handler of their action, which no other worker has)."""
    left = -1
    for _ in range(2):  # again once: an interrupted statement may have spoilt a connection
        try:
            await app.stop()
            await app.delete({"action": action})
            left = await app.count({"action": action})
            break
        except BaseException:  # the first error is the one to report
            continue
    if left:
        what = "some" if left < 0 else f"{left:,}"
        err_console().print(
            f"bench stopped: {what} of its tasks (action {action}) are left in "
            f"{app.storage.url}; no worker runs them")


def _percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (as bench/sqlite_bench.py reports it): p99 of 100
    samples is the 99th, not the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@click.command("bench", short_help="Measure no-op task throughput and latency here.")
@click.option("--tasks", type=click.IntRange(min=1, max=1_000_000), default=10_000,
              show_default=True, help="Tasks added in batches and drained.")
@click.option("--concurrency", type=click.IntRange(min=1, max=10_000), default=100,
              show_default=True, help="Tasks the worker runs at once.")
@click.option("--latency-samples", type=click.IntRange(min=0, max=100_000), default=200,
              show_default=True, help="Tasks added one at a time to an idle worker.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@db_option_with("Measure on this storage ($CONVEYOR_DB is not read); default: a new SQLite "
                "file in a temporary directory, removed afterwards.")
@click.pass_context
def bench_command(ctx: click.Context, tasks: int, concurrency: int, latency_samples: int,
                  as_json: bool) -> int:
    """Measure no-op tasks on a storage, in this process: adds one by one
    (TASKS/10 of them), adds in batches of 1,000, the drain of them all by one
    worker, and the enqueue-to-start latency of an idle worker.

    The tasks use an action of their own, so workers already on the storage
    leave them alone, and they are deleted at the end. For comparisons with
    the raw database and with other libraries, see bench/ in the repository.
    """
    url = explicit_db(ctx)
    scratch = None
    if url is None:
        scratch = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
        url = f"sqlite:///{scratch / 'bench.db'}"
    try:
        storage = open_storage(url)
        if not as_json:
            err_console().print(f"measuring {tasks:,} no-op tasks on {storage.url} ...")
        result = run_stopping_on_sigterm(run_bench(
            storage, tasks=tasks, concurrency=concurrency, latency_samples=latency_samples))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if as_json:
        click.echo(dump_json(asdict(result)))
        return EXIT_OK
    table = Table(title=f"conveyor bench: {result.storage}")
    table.add_column("measure")
    table.add_column("result", justify="right")
    table.add_row(f"add one by one ({max(1, tasks // 10):,} tasks)",
                  f"{result.add_one_per_s:,.0f} tasks/s")
    table.add_row(f"add_many, batches of {BATCH:,} ({tasks:,} tasks)",
                  f"{result.add_many_per_s:,.0f} tasks/s")
    table.add_row(f"drain, 1 process, concurrency {concurrency}",
                  f"{result.drain_per_s:,.0f} tasks/s")
    if result.latency_samples:
        table.add_row(f"enqueue-to-start p50 ({result.latency_samples} samples)",
                      f"{result.latency_p50_ms:.2f} ms")
        table.add_row("enqueue-to-start p99", f"{result.latency_p99_ms:.2f} ms")
    out_console().print(table)
    return EXIT_OK
