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

import pytest

from conveyor import _children

from . import process_app

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


@pytest.mark.parametrize("argv", ["a path", "none", "huge", "a lone surrogate"])
async def test_an_odd_worker_argv_does_not_stop_the_child(
        argv: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The worker's argv with a non-string (a Path a program appended), no argv at
    all (an embedded interpreter), or one longer than an environment string may be
    (8,000 file names): the child started with it failed every run (TypeError,
    AttributeError, 'Argument list too long')."""
    if argv == "a path":
        monkeypatch.setattr(sys, "argv", ["prog", Path("/data/in.csv"), "x"])
    elif argv == "none":
        monkeypatch.delattr(sys, "argv")
    elif argv == "a lone surrogate":
        monkeypatch.setattr(sys, "argv", ["prog", "bad-\ud800-text"])
    else:
        monkeypatch.setattr(sys, "argv", ["prog", *(f"/data/in/file{i:05d}.csv"
                                                    for i in range(8000))])
        monkeypatch.setattr(_children, "_argv_warned", False)  # warned once a process
    async with process_app.app as app:
        task = await app.add("proc:argv")
        done = await app.wait_task(task.id, timeout=60)
    if argv == "a lone surrogate":  # the child ran and returned it: a result refused
        assert done.error is not None and "not valid Unicode" in done.error.message
        return
    assert done.status.value == "succeeded", done.error
    if argv == "a path":
        assert done.result == ["/data/in.csv", "x"]
    if argv == "huge":
        assert "too long to hand to its handler processes" in caplog.text
