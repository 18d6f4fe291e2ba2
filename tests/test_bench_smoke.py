"""The SQLite and hub benchmarks run to the end in their quick mode (the
PostgreSQL one: tests/postgres/test_bench_smoke.py)."""

from __future__ import annotations

from pathlib import Path

from ._bench import pieces_ran, run_bench


def test_sqlite_bench_quick_measures_every_piece(tmp_path: Path) -> None:
    code, res = run_bench("sqlite_bench.py", tmp_path / "sqlite.json")
    assert code == 0, res
    pieces_ran(res["conveyor"], "enqueue_single", "enqueue_bulk_1", "drain_1",
               "enqueue_bulk_2", "drain_2")
    pieces_ran(res["huey"], "enqueue_single", "drain_1", "drain_2")
    pieces_ran(res["raw"], "insert_single")
    pieces_ran(res["raw"], "b1_p1", "b100_p2", rate="process_rate")
    assert res["conveyor"]["latency"]["p50_ms"] > 0
    assert res["targets"] and res["comparisons"]


def test_hub_bench_quick_measures_both_figures(tmp_path: Path) -> None:
    # its exit status is 1 when a target is not met on this machine, which a
    # test does not judge: it must have written both figures
    code, res = run_bench("hub_bench.py", tmp_path / "hub.json")
    assert code in (0, 1), res
    pieces_ran(res["throughput"], "in_process", "remote")
    assert [lat["subscribers"] for lat in res["latency"]] == [1, 200, 200]
    for lat in res["latency"]:
        assert lat["messages"] > 0 and lat["p99_ms"] > 0, lat
        assert lat["gaps"] == 0, lat
