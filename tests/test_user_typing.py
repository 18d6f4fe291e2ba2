"""The documented usages type-check under ``mypy --strict`` in a user's program
(packaging audit): a bare ``Context``, ``timedelta`` durations and ``@app.on(...)``
as a decorator were rejected."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROGRAM = textwrap.dedent('''
    import asyncio
    from datetime import timedelta

    from conveyor import Context, Conveyor, Event

    app = Conveyor("sqlite:///tasks.db", lease=timedelta(seconds=30),
                   stop_timeout=timedelta(seconds=5), retention=timedelta(days=7))


    @app.handler("files:download", environment={"chunk": 1024}, max_attempts=3)
    async def download(ctx: Context) -> dict[str, int]:
        await ctx.progress(1, total=1)
        return {"bytes": ctx.env["chunk"]}


    @app.on("task.succeeded")
    def announce(event: Event) -> None:
        print(event.type, event.task_id)


    stop_listening = app.on("task.failed", lambda event: None)


    async def main() -> None:
        async with app:
            task = await app.add("files:download", {"url": "..."})
            await app.wait(task.id, timeout=timedelta(seconds=60))
            await app.retry(task.id, delay=timedelta(seconds=1))
            await app.prune(timedelta(days=7))
            await app.drain(timeout=timedelta(seconds=10))
            await app.stop(timedelta(seconds=3))
        stop_listening()


    asyncio.run(main())
''')


@pytest.mark.serial  # mypy: a few seconds of CPU
def test_documented_usages_pass_mypy_strict(tmp_path: Path) -> None:
    program = tmp_path / "user_app.py"
    program.write_text(PROGRAM, encoding="utf-8")
    src = Path(__file__).resolve().parents[1] / "src"
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                           str(program)], capture_output=True, text=True, timeout=300,
                          check=False, env={"MYPYPATH": str(src), "PATH": "/usr/bin:/bin"},
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
