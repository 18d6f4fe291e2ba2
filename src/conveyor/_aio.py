"""Stopping background tasks without hanging on a lost cancellation; telling a
cancellation of the running task from a CancelledError raised by code it awaited;
SIGTERM as a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["LoopEvent", "cancelled_here", "green_threads", "handed_to", "on_sigterm",
           "run_in_its_loop", "stop_tasks"]

log = logging.getLogger("conveyor")


def cancelled_here() -> bool:
    """Whether the running asyncio task was cancelled (a worker's abort, stop or
    lost lease; the app's shutdown), rather than a CancelledError raised by the
    code it awaited (a handler's own: a cancelled future it awaited)."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


async def stop_tasks(*tasks: asyncio.Future[Any] | None, what: str,
                     limit: float = 10.0, again: float = 0.5) -> None:
    """Cancel ``tasks`` and wait until they end. A task still running after
    ``again`` seconds is cancelled again (on Python 3.11 a cancellation can be
    lost inside a library: ``asyncio.wait_for``, CPython gh-86296); after ``limit``
    seconds the rest are left behind with an error in the log (``what`` names
    them), rather than hang the caller. Their errors are logged, not raised; the
    caller's own cancellation is not swallowed."""
    pending = {t for t in tasks if t is not None and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while pending:
        if loop.time() > deadline:
            log.error("%s did not stop within %g s; left behind", what, limit)
            return
        for running in pending:
            running.cancel()
        _, pending = await asyncio.wait(pending, timeout=again)
    for ended in tasks:
        if ended is not None and ended.done() and not ended.cancelled():
            exc = ended.exception()
            if exc is not None:
                log.error("%s failed", what, exc_info=exc)


class _SigtermCalls:
    """The callbacks of :func:`on_sigterm` in one loop, all called by one handler of
    that loop (two ``run()`` in one program: each stops)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.calls: list[Callable[[], None]] = []

    def __call__(self) -> None:
        for call in list(self.calls):
            try:
                call()
            except Exception:
                log.exception("a SIGTERM callback failed")


_SIGTERM: dict[asyncio.AbstractEventLoop, _SigtermCalls] = {}


def on_sigterm(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` on SIGTERM, in the running loop, if it runs in the main thread
    and SIGTERM has its default handling there (or already calls this function's
    callbacks: several at once are all called); returns what takes ``callback``
    back, and restores the default with the last one, unless the program has put a
    handler of its own in place meanwhile (that one stays)."""
    sigterm = getattr(signal, "SIGTERM", None)
    if sigterm is None or threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    calls = _SIGTERM.get(loop)
    if calls is None or not _handles(loop, sigterm, calls):
        if signal.getsignal(sigterm) is not signal.SIG_DFL:
            return lambda: None  # the program's own handling
        calls = _SigtermCalls(loop)
        try:
            loop.add_signal_handler(sigterm, calls)
        except (NotImplementedError, RuntimeError):  # not on Unix, or not the main loop
            return lambda: None
        _SIGTERM[loop] = calls
    calls.calls.append(callback)

    def undo() -> None:
        if callback in calls.calls:
            calls.calls.remove(callback)
        if calls.calls or _SIGTERM.get(loop) is not calls:
            return
        del _SIGTERM[loop]
        if _handles(loop, sigterm, calls) and not loop.is_closed():
            loop.remove_signal_handler(sigterm)

    return undo


def _handles(loop: asyncio.AbstractEventLoop, sig: int, calls: _SigtermCalls) -> bool:
    """Whether ``loop``'s handler of ``sig`` is still ``calls`` (the program may have
    put its own in place since)."""
    handle = getattr(loop, "_signal_handlers", {}).get(sig)
    return handle is not None and getattr(handle, "_callback", None) is calls


def green_threads() -> str | None:
    """``"gevent"`` or ``"eventlet"`` when that library has monkey-patched
    ``threading`` in this process (its threads are then greenlets of one OS thread),
    else None. Only looked up if the library was imported."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and _patched(gevent, "is_module_patched", "threading"):
        return "gevent"
    eventlet = sys.modules.get("eventlet.patcher")
    if eventlet is not None and _patched(eventlet, "is_monkey_patched", "thread"):
        return "eventlet"
    return None


def _patched(module: Any, check: str, name: str) -> bool:
    try:
        return bool(getattr(module, check)(name))
    except Exception:  # an unknown version of the library: assume not
        return False


class LoopEvent(asyncio.Event):
    """An ``asyncio.Event`` that code running in another thread may set: a change
    relay or a storage listener in another event loop (an app that a SyncConveyor
    opened, then a loop of the program's own used as well). ``set()`` from another
    thread is handed to the event's own loop (an ``asyncio.Event`` set there woke
    nobody: its waiters ended on their next poll, a second later). Made in a
    running loop, which is its own."""

    def __init__(self) -> None:
        super().__init__()
        self._home: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()

    def set(self) -> None:
        if not handed_to(self._home, super().set):
            super().set()


def handed_to(home: asyncio.AbstractEventLoop | None, fn: Callable[..., Any],
              *args: Any) -> bool:
    """Hand ``fn(*args)`` to ``home`` when called from another thread than that loop's
    (or drop it when ``home`` has ended: nothing waits there any more), and say so;
    False in ``home`` itself or without one, where the caller calls it."""
    if home is None or asyncio._get_running_loop() is home:
        return False
    if not home.is_closed():
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            home.call_soon_threadsafe(fn, *args)
    return True


async def run_in_its_loop(loop: asyncio.AbstractEventLoop | None,
                          make: Callable[[], Coroutine[Any, Any, Any]]) -> bool:
    """When ``loop`` is another thread's running loop: run ``make()`` there, where what
    it stops lives, wait for it here, and say so (a loop that ends meanwhile, its
    ``asyncio.run()`` returning, ends that work with it); False otherwise, where the
    caller runs it itself."""
    if loop is None or loop is asyncio.get_running_loop() or not loop.is_running():
        return False
    try:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), loop))
    except asyncio.CancelledError:
        if cancelled_here():
            raise
    except RuntimeError:  # closed meanwhile
        pass
    return True
