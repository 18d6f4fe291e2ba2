"""Handlers that hand odd values to the worker, each registered twice: ``pv:thread:NAME``
in-process and ``pv:process:NAME`` with ``mode="process"`` (tests/runner/
test_process_values.py). A test app that is not this module's ``app`` registers the
same functions for the same actions (its storage and ``max_payload`` its own)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from conveyor import Context, Conveyor, Retry

app = Conveyor("memory://")

UNDECODABLE = os.fsdecode(b"/data/caf\xe9.txt")  # a lone surrogate, '\udce9'
FAST = {"base": 0.01, "factor": 1, "maximum": 0.01, "jitter": 0}


def raise_undecodable(ctx: Context[Any]) -> None:
    raise RuntimeError(f"missing input file {UNDECODABLE}")


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def raise_badstr(ctx: Context[Any]) -> None:
    raise BadStr()


class Fatal(BaseException):
    """Not an ``Exception``: in-process, still the run's error."""


def raise_base(ctx: Context[Any]) -> None:
    raise Fatal(f"gave up on {UNDECODABLE}")


def emit_values(ctx: Context[Any]) -> list[str]:
    """Emits each value, and returns what each call did."""
    said = []
    for value in [float("nan"), "half \ud800", {1, 2}, "x" * 2000, "fine"]:
        try:
            ctx.emit(value)
            said.append("emitted")
        except Exception as exc:
            said.append(f"{type(exc).__name__}: {exc}")
    return said


def emit_nan(ctx: Context[Any]) -> str:
    ctx.emit(float("nan"))  # uncaught
    return "done"


def progress_undecodable(ctx: Context[Any]) -> str:
    ctx.progress(1, total=2, message=f"reading {UNDECODABLE}")
    return "done"


def retry_undecodable(ctx: Context[Any]) -> Any:
    if ctx.attempt == 1:
        return Retry(after=0, reason=f"waiting for {UNDECODABLE}")
    return "done"


HANDLERS: dict[str, Callable[[Context[Any]], Any]] = {
    "raise_undecodable": raise_undecodable, "raise_badstr": raise_badstr,
    "raise_base": raise_base,
    "emit_values": emit_values, "emit_nan": emit_nan,
    "progress_undecodable": progress_undecodable,
    "retry_undecodable": retry_undecodable,
}


def register(target: Conveyor) -> None:
    for name, fn in HANDLERS.items():
        for mode in ("thread", "process"):
            target.register(f"pv:{mode}:{name}", fn, mode=mode, max_attempts=2, backoff=FAST)


register(app)
