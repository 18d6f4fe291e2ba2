"""A ``mode="process"`` handler's child sees the worker's ``sys.argv``, as a
multiprocessing child does: a script that reads its options at import (argparse)
imports in the child too. The child used to see its own command line (conveyor's
child module, the script, the handler's name...): argparse exited, and the run
failed with "the child process exited"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("_argv_script.py")


def run(tmp_path: Path, **env: str) -> dict[str, Any]:
    db = f"sqlite:///{tmp_path / 'argv.db'}"
    done = subprocess.run([sys.executable, str(SCRIPT), "--db", db, "--tag", "x y"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    out["db"] = db
    out["stderr"] = done.stderr
    return out


def test_the_child_sees_the_scripts_command_line(tmp_path: Path) -> None:
    out = run(tmp_path)
    assert out["status"] == "succeeded", out
    assert out["result"] == ["--db", out["db"], "--tag", "x y"]


def test_a_module_that_exits_at_import_fails_the_run_once_and_says_so(tmp_path: Path) -> None:
    out = run(tmp_path, EXIT_ON_IMPORT="1")
    assert out["status"] == "failed"
    assert out["attempts"] == 1  # not retried: it would exit again
    kind, message = out["error"]
    assert kind == "SystemExit"
    assert "_argv_script" in message and "exited with 3" in message
