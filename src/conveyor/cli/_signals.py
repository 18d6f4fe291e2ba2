"""Graceful stops: SIGINT and SIGTERM set an event instead of raising."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["EXIT_TERMINATED", "LEFT_BEHIND_GRACE", "StopSignal", "Terminated",
           "run_leaving_stuck_tasks", "run_stopping_on_sigterm", "stop_signals"]

SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None))
                if s is not None)


class StopSignal:
    """Set by the first SIGINT/SIGTERM; ``name`` says which (or why)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.name: str | None = None
        self.count = 0
        self.on_repeat: Callable[[str], None] | None = None

    def trigger(self, name: str) -> None:
        self.count += 1
        if self.name is None:
            self.name = name
            self.event.set()
        elif self.on_repeat is not None:
            self.on_repeat(name)

    async def wait(self, seconds: float | None = None) -> bool:
        """Wait for a stop; False when ``seconds`` passed first."""
        if self.event.is_set():
            return True
        try:
            async with asyncio.timeout(seconds):
                await self.event.wait()
        except TimeoutError:
            return False
        return True


@contextmanager
def stop_signals() -> Iterator[StopSignal]:
    """Within a running event loop: route SIGINT and SIGTERM to a :class:`StopSignal`."""
    loop = asyncio.get_running_loop()
    stop = StopSignal()
    installed: list[signal.Signals] = []
    previous: dict[signal.Signals, object] = {}
    for sig in SIGNALS:
        try:
            loop.add_signal_handler(sig, stop.trigger, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
            def handler(_signum: int, _frame: object, name: str = sig.name) -> None:
                loop.call_soon_threadsafe(stop.trigger, name)

            previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for sig, old in previous.items():  # pragma: no cover - not on Unix
            signal.signal(sig, old)  # type: ignore[arg-type]


EXIT_TERMINATED = 128 + signal.SIGTERM
"""The exit code of a command that SIGTERM stopped after its cleanup (``bench``,
``tail``, ``add --wait``)."""


class Terminated(Exception):
    """SIGTERM stopped the command after its way out ran (the CLI exits 143)."""


def run_stopping_on_sigterm(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(work)``, with SIGTERM cancelling ``work`` as Ctrl-C does, so that
    its way out runs (``timeout 60 conveyor bench`` left its queued tasks in the
    database silently; ``tail`` ended without its "goes on" line); then
    :class:`Terminated`."""
    terminated: list[bool] = []

    async def stoppable() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            terminated.append(True)
            task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals
            loop.add_signal_handler(signal.SIGTERM, stop)
        try:
            return await work
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(stoppable())
    except asyncio.CancelledError:
        if terminated:
            raise Terminated from None
        raise


LEFT_BEHIND_GRACE = 2.0
"""Seconds the tasks still pending when a worker command's work has returned (an
async handler that swallowed its cancellation) get to end once cancelled again."""


def run_leaving_stuck_tasks(main: Coroutine[Any, Any, int], what: str) -> int:
    """``asyncio.run(main)`` for a command that has stopped its worker: the tasks
    still pending when ``main`` returns are cancelled and get
    :data:`LEFT_BEHIND_GRACE` seconds; those still running then (an async handler
    that catches its cancellation and goes on) are left behind with a warning, and
    the process exits with ``main``'s code (``asyncio.run`` waited for them for
    ever, the worker having said it stopped and handed their tasks back). Stop
    signals are ignored meanwhile, as during the stop."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(main)
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if pending:
            for sig in SIGNALS:
                with contextlib.suppress(ValueError, OSError):  # not the main thread
                    signal.signal(sig, signal.SIG_IGN)
            for task in pending:
                task.cancel()
            _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=LEFT_BEHIND_GRACE))
            if stuck:
                print(f"{what}: {len(stuck)} task(s) ignored their cancellation "
                      f"(an async handler that catches CancelledError and goes on); "
                      "exiting without them", file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(code)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        return code
    finally:
        asyncio.set_event_loop(None)
        if not loop.is_closed():
            loop.close()
