"""``ctx.progress`` refuses what it cannot report (a ValidationError in the handler,
nothing reported), like ``ctx.log``."""

from __future__ import annotations

from typing import Any

from conveyor import Context, Conveyor, ValidationError

BAD: list[tuple[dict[str, Any], str]] = [
    ({"current": "3"}, "progress current must be a finite number"),
    ({"current": True}, "progress current must be a finite number"),
    ({"total": float("nan")}, "progress total must be a finite number"),
    ({"current": float("inf")}, "progress current must be a finite number"),
    # past a float: a browser (the dashboard) reads it as Infinity
    ({"current": 10**400}, "progress current must be a finite number"),
    ({"total": -(10**309)}, "progress total must be a finite number"),
    ({"current": 1, "message": 5}, "progress message must be text"),
    ({"current": 1, "blob": object()}, "progress data is not JSON-serialisable"),
]


async def test_bad_progress_raises_in_the_handler(app: Conveyor) -> None:
    reported: list[Any] = []
    app.on("task.progress", lambda event: reported.append(event.data["progress"]))

    @app.handler("progress:bad")
    async def bad(ctx: Context[Any]) -> list[str]:
        messages = []
        for kwargs, _ in BAD:
            try:
                ctx.progress(**kwargs)
            except ValidationError as exc:
                messages.append(str(exc))
        return messages

    async with app:
        task = await app.add("progress:bad")
        messages = await app.wait(task.id, timeout=10)
        assert len(messages) == len(BAD)
        for message, (_, expected) in zip(messages, BAD, strict=True):
            assert message.startswith(expected), message
        assert (await app.get(task.id)).progress is None
    assert reported == []


async def test_good_progress_is_reported(app: Conveyor) -> None:
    @app.handler("progress:good")
    async def good(ctx: Context[Any]) -> None:
        ctx.progress(2, 10**6, "half", phase="upload")

    async with app:
        task = await app.add("progress:good")
        await app.wait(task.id, timeout=10)
        progress = (await app.get(task.id)).progress
    assert progress is not None
    assert (progress.current, progress.total, progress.message) == (2, 10**6, "half")
    assert progress.data == {"phase": "upload"}
