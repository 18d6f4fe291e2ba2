"""A reader that goes away (``conveyor tail ID | head -1``) ends the command quietly:
exit code 1, nothing on stderr (it was a 70-line traceback from rich's SystemExit
inside the log-following task)."""

from __future__ import annotations

import subprocess

import pytest

from conveyor import Context, Conveyor

from ._support import CLI, TIMEOUT, clean_env, run

LINES = 5000  # about 200 KB of output: far more than a pipe holds


@pytest.fixture(scope="module")
def chatty(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A SQLite URL and a finished task with LINES log lines."""
    url = f"sqlite:///{tmp_path_factory.mktemp('closed') / 'tasks.db'}"

    async def make(app: Conveyor) -> str:
        @app.handler("chatty")
        async def chatty(ctx: Context[None]) -> None:
            for i in range(LINES):
                ctx.log.info("line %s of a long log", i)

        async with app:
            task = await app.add("chatty")
            await app.wait(task.id, timeout=60)
            # and enough tasks for `ls` to print more than a pipe holds
            await app.add_many([("filler", {"pad": "x" * 200})] * 3000)
        return task.id

    return url, run(make, url)


@pytest.mark.parametrize("command", [
    ["tail", "ID"], ["show", "ID", "--logs"],
    # one large write each (a table, a JSON document): a pipe cut it short without an
    # error, and these ended with exit code 0
    ["show", "ID", "--logs", "--json"], ["ls", "--limit", "0"], ["ls", "--limit", "0", "--json"],
])
def test_a_closed_output_ends_the_command_quietly(chatty: tuple[str, str],
                                                  command: list[str]) -> None:
    url, task_id = chatty
    args = [task_id if arg == "ID" else arg for arg in command]
    proc = subprocess.Popen([*CLI, *args, "--db", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert first  # it started writing
    proc.stdout.close()  # the reader goes away, as `| head -1` does
    try:
        err = proc.stderr.read()
        code = proc.wait(TIMEOUT)
    finally:
        proc.kill()
        proc.stderr.close()
    assert code == 1, err
    assert err == b"", err.decode()


def test_the_whole_log_reaches_a_reader_that_stays(chatty: tuple[str, str]) -> None:
    url, task_id = chatty
    out = subprocess.run([*CLI, "tail", task_id, "--db", url], capture_output=True,
                         env=clean_env(), timeout=TIMEOUT, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert len(lines) == LINES and lines[-1].endswith(f"line {LINES - 1} of a long log")
