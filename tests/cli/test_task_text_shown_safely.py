"""Text that tasks carry (log lines, progress messages, errors, tracebacks, tag
values, the reason of an abort) is shown with its control characters escaped: a
handler or a remote worker could otherwise write terminal escape sequences (colours,
a window title, a cleared screen) onto an operator's screen through ``ls``, ``show``
and ``tail``. A log message is one line however many newlines it holds."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from typing import Any

import pytest

from conveyor import Context, Conveyor

from ._support import CLI, TIMEOUT, clean_env, cli, run

HOSTILE = "A\x1b[31mRED\x1b[0m \x1b]0;TITLE\x07 \x1b[2J\x9b1m\u202eZ"
ESCAPED = ("\\x1b[31mRED", "\\x1b]0;TITLE\\x07", "\\x1b[2J", "\\x9b1m", "\\u202e")
INJECTED = ("\x1b[31mRED", "\x1b]0;", "\x07", "\x1b[2J", "\x9b", "\u202e")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A SQLite URL and a failed task whose every text holds escape sequences."""
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'tasks.db'}"

    async def make(app: Conveyor) -> str:
        @app.handler("x:hostile")
        async def hostile(ctx: Context[None]) -> None:
            ctx.log.info("log %s", HOSTILE)
            ctx.log.warning("first line\nsecond line\r\nthird")
            await ctx.progress(1, total=2, message="p " + HOSTILE)
            raise RuntimeError("err " + HOSTILE)

        async with app:
            task = await app.add("x:hostile", tags={"t": HOSTILE})
            await app.wait_task(task.id, timeout=30)
        return task.id

    return url, run(make, url)


@pytest.mark.parametrize("command", [["show", "ID"], ["show", "ID", "--logs"], ["tail", "ID"],
                                     ["ls"]])
def test_piped_output_escapes_control_characters(hostile: tuple[str, str],
                                                 command: list[str]) -> None:
    url, task_id = hostile
    result = cli(*[task_id if a == "ID" else a for a in command], "--db", url)
    assert result.code in (0, 1), result  # tail of a failed task exits 1
    shown = result.out + result.err
    for raw in INJECTED:
        assert raw not in shown, (raw, result)
    assert "\\x1b[" in shown, result  # still there to read, escaped
    if command != ["ls"]:  # ls folds its cells
        assert all(e in shown for e in ESCAPED if e != "\\x1b]0;TITLE\\x07"), result


@pytest.mark.parametrize("command", [["show", "ID", "--logs"], ["tail", "ID"]])
def test_a_multi_line_log_message_is_one_line(hostile: tuple[str, str],
                                              command: list[str]) -> None:
    url, task_id = hostile
    result = cli(*[task_id if a == "ID" else a for a in command], "--db", url)
    lines = result.out.splitlines()
    [warning] = [line for line in lines if "first line" in line]
    assert "first line\\nsecond line\\r\\nthird" in warning, lines
    assert not any(line.startswith(("second line", "third")) for line in lines), lines
    if command[0] == "tail":
        logs = [line for line in lines if re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line)]
        assert len(logs) == 2, lines


@pytest.mark.parametrize("command", [["show", "ID", "--logs"], ["tail", "ID"], ["ls"]])
def test_a_terminal_gets_no_injected_sequence(hostile: tuple[str, str],
                                              command: list[str]) -> None:
    """On a terminal the CLI draws its own colours; the task's sequences stay escaped."""
    url, task_id = hostile
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([*CLI, *[task_id if a == "ID" else a for a in command],
                                 "--db", url], stdin=follower, stdout=follower,
                                stderr=follower, env=clean_env(COLUMNS="200"))
        os.close(follower)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(TIMEOUT)
    finally:
        os.close(leader)
    shown: Any = b"".join(chunks).decode("utf-8", "replace")
    for raw in ("\x1b]0;", "\x07", "\x1b[2J", "\x9b", "\u202e"):
        assert raw not in shown, (raw, shown)
    assert "RED" in shown
