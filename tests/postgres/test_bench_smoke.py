"""The PostgreSQL benchmark runs to the end in its quick mode, on the test server
(its role may create databases: each piece runs in one of its own)."""

from __future__ import annotations

from pathlib import Path

from .._bench import pieces_ran, run_bench


def test_pg_bench_quick_measures_every_piece(server: str, tmp_path: Path) -> None:
    code, res = run_bench("pg_bench.py", tmp_path / "pg.json", "--db", server, "--peers", "")
    assert code == 0, res
    pieces_ran(res["conveyor"], "enqueue_single", "enqueue_bulk_2", "drain_2")
    latency = res["conveyor"]["latency"]
    assert latency["p50_ms"] > 0 and len(latency["each_ms"]) == latency["samples"]
    assert len(latency["warmup_ms"]) == latency["warmup"]
    pieces_ran(res["conveyor"]["claim_depth"], "shallow")
    pieces_ran(res["raw"], "bulk", rate="unnest_rate")
    pieces_ran(res["raw"], "b1_p1", "b1_p2", "b100_p1", "b100_p2", rate="process_rate")
    assert res["targets"] and res["comparisons"]
