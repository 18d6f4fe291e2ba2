"""Running a benchmark script of bench/ as a smoke test: it must finish and write
every figure. Nothing here judges the figures (speed is the benchmarks' business,
not the tests'): a test asserts that each piece ran and measured something."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, out: Path, *args: str, timeout: float = 300) -> tuple[int, Any]:
    """Run ``bench/<script> --quick --out <out> args...``; its exit status and JSON."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick",
                           "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.exists(), f"{script} wrote no results:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.returncode, json.loads(out.read_text())


def pieces_ran(section: dict[str, Any], *names: str, rate: str = "rate") -> None:
    """Each named piece of a results section ran without error and measured a rate."""
    for name in names:
        piece = section.get(name)
        assert isinstance(piece, dict), f"{name} missing: {sorted(section)}"
        assert "error" not in piece, f"{name}: {piece['error']}"
        assert piece[rate] > 0, (name, piece)
