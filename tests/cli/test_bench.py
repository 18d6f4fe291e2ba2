"""``conveyor bench`` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from ._support import add, assert_error, cli, find

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
