"""``conveyor bench`` through the real CLI."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from ._support import Background, add, assert_error, cli, count, eventually, find

KEYS = {"storage", "tasks", "concurrency", "add_one_per_s", "add_many_per_s", "drain_per_s",
        "latency_samples", "latency_p50_ms", "latency_p99_ms"}


def test_bench_on_a_scratch_sqlite_file_prints_every_figure_and_removes_the_file() -> None:
    result = cli("bench", "--tasks", "300", "--latency-samples", "15", "--concurrency", "20",
                 "--json")
    assert result.code == 0, result
    figures = json.loads(result.out)
    assert set(figures) == KEYS
    assert (figures["tasks"], figures["concurrency"], figures["latency_samples"]) == (300, 20, 15)
    for key in ("add_one_per_s", "add_many_per_s", "drain_per_s", "latency_p50_ms"):
        assert figures[key] > 0, key
    assert figures["latency_p99_ms"] >= figures["latency_p50_ms"]
    scratch = Path(figures["storage"].removeprefix("sqlite:///")).parent
    assert scratch.name.startswith("conveyor-bench-")
    assert not scratch.exists()


def test_bench_on_a_given_storage_leaves_other_tasks_and_deletes_its_own(db: str) -> None:
    mine = add(db, "mail:send")
    result = cli("bench", "--tasks", "200", "--latency-samples", "5", "--db", db)
    assert result.code == 0, result
    for row in ("add one by one (20 tasks)", "add_many, batches of 1,000 (200 tasks)",
                "drain, 1 process", "enqueue-to-start p50 (5 samples)"):
        assert row in result.out, (row, result)
    assert [(t.id, t.status) for t in find(db)] == [(mine.id, "queued")]


def test_bench_refuses_bad_numbers_and_a_hub(tmp_path: Path) -> None:
    for option, value in (("--tasks", "0"), ("--tasks", "ten"), ("--concurrency", "0"),
                          ("--latency-samples", "-1")):
        assert_error(cli("bench", option, value), 2, option)
    assert_error(cli("--hub", "http://127.0.0.1:9", "bench"), 2, "does not work through a hub")


def test_bench_never_prints_a_password() -> None:
    result = cli("bench", "--tasks", "10", "--db", "postgresql://ann:s3cret@127.0.0.1:1/x")
    assert result.code == 1, result
    assert "s3cret" not in result.out + result.err
    assert "postgresql://ann:***@127.0.0.1:1/x" in result.err


def test_bench_without_latency_samples_reports_no_latency() -> None:
    result = cli("bench", "--tasks", "50", "--latency-samples", "0", "--json")
    assert result.code == 0, result
    figures = json.loads(result.out)
    assert figures["latency_samples"] == 0
    assert figures["latency_p50_ms"] is None and figures["latency_p99_ms"] is None


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_bench_says_which_of_its_tasks_are_left(
        db: str, background: Callable[..., Background], sig: signal.Signals,
        code: int) -> None:
    """Ctrl-C, and SIGTERM (``timeout 60 conveyor bench``: it left its tasks silently)."""
    mine = add(db, "mail:send")
    bench = background("bench", "--tasks", "300000", "--latency-samples", "0", "--db", db)
    eventually(lambda: count(db) > 1, what="the bench's first tasks")
    bench.signal(sig)
    assert bench.wait(60) == code, (bench.out, bench.err)
    said = " ".join(bench.err)
    match = re.search(r"bench stopped: ([\d,]+) of its tasks \(action (conveyor\.bench:\w+)\) "
                      r"are left in", said)
    assert match is not None, said
    left, action = int(match.group(1).replace(",", "")), match.group(2)
    # the finished ones were deleted; the queued ones are there, and the user's task
    assert count(db, {"action": action}) == left > 0
    assert count(db, {"action": action, "status": {"$ne": "queued"}}) == 0
    assert [t.id for t in find(db, {"action": "mail:send"})] == [mine.id]


def test_latency_percentiles_are_nearest_rank() -> None:
    """p99 of 100 samples was their largest (index int(0.99 * n)); the nearest rank,
    as bench/sqlite_bench.py reports it, is the 99th."""
    from conveyor.cli._bench import _percentile

    assert _percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert _percentile([float(i) for i in range(1, 201)], 0.99) == 198.0
    assert _percentile([float(i) for i in range(1, 101)], 0.5) == 50.0
    assert _percentile([7.0], 0.99) == 7.0
