"""The synchronous face of :class:`Conveyor`, for Django, Flask and scripts.

It is derived at one seam rather than written twice: a :class:`SyncConveyor`
runs an event loop in a background thread and forwards every call of the
async API to it. Coroutine methods become blocking calls; methods that
return async iterators (``logs``, ``events``) return ordinary iterators;
everything else (``handler``, ``register``, ``on``, attributes) passes
through unchanged::

    from conveyor import SyncConveyor

    app = SyncConveyor("sqlite:///tasks.db")
    task = app.add("mail:send", {"to": "ann@example.com"})
    result = app.wait(task.id, timeout=30)
    for line in app.logs(task.id):
        print(line.message)
    app.close()

Handlers registered on a SyncConveyor run in its background loop once
``app.start()`` is called (sync handlers in threads, as usual).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import inspect
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from . import _forks
from ._worker import RUNNING_HERE
from .app import Conveyor
from .errors import ConveyorError, StorageError
from .storage import Storage

__all__ = ["BlockingIterator", "Portal", "SyncConveyor"]

T = TypeVar("T")
T2 = TypeVar("T2")

# Sync methods of Conveyor whose work must happen on the loop thread.
_ON_LOOP = frozenset({"events"})


# the loops portals run: never lent to another portal (one closing ends its calls)
_PORTAL_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

SIGNAL_CHECK = 0.2
"""Seconds the main thread waits at most between two looks for a signal (Ctrl-C)."""

_KEEP_HELD_WAIT = 1.0
"""Seconds a closing SyncConveyor waits in all for what its iterators' ended streams
still give (it is in memory: a stream that does not end in that time is taken as
ended)."""


def _being_closed(owner: str) -> ConveyorError:
    """A call from another thread while a close is under way."""
    return ConveyorError(f"this {owner} is being closed by another thread: call again "
                         "once close() has returned (the call then opens it again)")


def _ended_with_the_app() -> ConveyorError:
    return ConveyorError("the app was closed while this call waited (this iterator "
                         "ended with it)")


def _result(future: concurrent.futures.Future[T]) -> T:
    """``future.result()``, in slices in the main thread: a signal that another thread
    received (the kernel gives a process's SIGINT to any of its threads) does not
    wake a main thread blocked on a lock, and Ctrl-C would go unnoticed until the
    call ended, for ``run()`` never."""
    if threading.current_thread() is not threading.main_thread():
        return future.result()
    while True:
        try:
            return future.result(SIGNAL_CHECK)
        except TimeoutError:
            if future.done():  # the call's own TimeoutError, or it ended just now
                return future.result()


class Portal:
    """An event loop in a daemon thread, and blocking calls into it; or, given
    ``loop``, blocking calls into that loop, which another thread runs (the portal
    then neither starts nor stops it)."""

    def __init__(self, owner: str = "SyncConveyor",
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.owner = owner  # the class named in errors
        self._closing = False
        self._ending = False  # a close is under way: no call of other threads from now
        self._submit = threading.Lock()  # the look at _ending and the submission, at once
        self.iterators: weakref.WeakSet[BlockingIterator[Any]] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        if loop is not None:
            self._loop = loop
            return
        self._loop = asyncio.new_event_loop()
        _PORTAL_LOOPS.add(self._loop)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="conveyor-sync-loop", daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def borrowed(self) -> bool:
        """True for a portal into a loop it did not start."""
        return self._thread is None

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the portal's thread runs."""
        return self._loop

    def in_its_loop(self) -> bool:
        """True when called from the loop the portal's calls run in."""
        if self._thread is None:
            return _running_loop() is self._loop
        return threading.current_thread() is self._thread

    def end_calls(self) -> None:
        """For a close: refuse calls from now on, but those given ``last=True`` (the
        close's own). Calls submitted before run on."""
        with self._submit:
            self._ending = True

    def run(self, fn: Callable[[], Any], *, last: bool = False) -> Any:
        """Call ``fn()`` on the loop thread (awaiting it if needed) and return its
        result. After :meth:`end_calls`, only a ``last`` call is taken."""
        if self._thread is None:
            if _running_loop() is self._loop:
                raise ConveyorError(f"a {self.owner} of an app open in this event loop cannot "
                                    "be called from it (it would wait for itself): await the "
                                    "app's own methods here")
        elif threading.current_thread() is self._thread:
            raise ConveyorError(f"a {self.owner} cannot be called from its own event loop "
                                "thread (it would wait for itself): in an async handler, "
                                "await the async object's own methods (SyncConveyor.app); "
                                "in a callback or sink, hand the work to another thread")
        if self._loop.is_closed():
            raise ConveyorError(f"this {self.owner} is closed")

        started, finished = threading.Event(), threading.Event()

        async def call() -> Any:
            started.set()
            try:
                value = fn()
                if inspect.isawaitable(value):
                    return await value
                return value
            finally:
                finished.set()

        with self._submit:
            if self._ending and not last:
                raise _being_closed(self.owner)
            future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        try:
            return _result(future)
        except KeyboardInterrupt:
            # Ctrl-C: the call is cancelled and what it does on the way out (run()'s
            # graceful stop, which hands running tasks back) is waited for; a second
            # Ctrl-C stops waiting
            future.cancel()
            if started.is_set():
                while not finished.wait(SIGNAL_CHECK):
                    pass
            raise
        except concurrent.futures.CancelledError:
            if self._closing or self._ending:
                raise ConveyorError(f"this {self.owner} was closed while the call "
                                    "waited") from None
            raise

    async def keep_held(self) -> None:
        """On the loop, once what the iterators read from has ended (the app closed):
        each iterator takes what its stream still holds (see
        :meth:`BlockingIterator._keep_held`)."""
        deadline = self._loop.time() + _KEEP_HELD_WAIT
        for iterator in list(self.iterators):
            await iterator._keep_held(deadline)

    def close(self) -> None:
        """Stop the loop and join its thread (up to 10 s); closing twice is harmless.
        Calls still waiting in other threads (an event, a log line, a wait) are
        cancelled: they raise :class:`ConveyorError`."""
        if self._loop.is_closed():
            return
        self._closing = True
        if self._thread is None:
            return  # another's loop: it goes on
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _cancel_others() -> None:
    """Cancel every task of the running loop but this one, and let them end."""
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current]
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=5)


class BlockingIterator(Iterator[T]):
    """An ordinary iterator over an async iterator that lives on a portal's loop
    (``BlockingIterator[LogRecord]`` for ``logs()``, ``[Event]`` for ``events()``)."""

    def __init__(self, portal: Portal, aiter: Any) -> None:
        self._portal = portal
        self._aiter = aiter
        self._done = False
        self._step: asyncio.Task[Any] | None = None  # the pending __anext__, on the loop
        # kept when the portal closed: the items the stream still held, then its end
        self._held: collections.deque[T] = collections.deque()
        self._end: BaseException | None = None
        self._started = False  # a step was asked for (a generator then runs)
        portal.iterators.add(self)

    def __iter__(self) -> BlockingIterator[T]:
        return self

    async def _keep_held(self, deadline: float) -> None:
        """On the loop, the app closed: take the items the stream still holds and the
        way it ends (the app's "closed while this call waited"), so that they are
        given after the loop is gone, by ``deadline`` (the loop's time). Not while
        another thread waits in a step (the close ended that wait: it gets its item
        or error itself); a generator never started holds nothing."""
        if self._done or self._step is not None:
            return
        if inspect.isasyncgen(self._aiter) and not self._started:
            return  # it ends as an iterator whose stream ended with the app
        loop = asyncio.get_running_loop()
        while True:
            try:
                item = await asyncio.wait_for(self._aiter.__anext__(),
                                              max(0.0, deadline - loop.time()))
            except StopAsyncIteration:
                self._end = StopIteration()
                return
            except ConveyorError as exc:
                self._end = exc
                return
            except Exception as exc:  # a stream that cannot end cleanly
                self._end = _ended_with_the_app()
                self._end.__cause__ = exc
                return
            self._held.append(item)

    def _after_close(self) -> T:
        """``next()`` once the portal's loop is closed: a held item, then the end."""
        if self._held:
            return self._held.popleft()
        self._done = True
        end, self._end = self._end, None
        if end is None:
            raise _ended_with_the_app()
        if isinstance(end, StopIteration):
            raise StopIteration
        raise end

    def __next__(self) -> T:
        if self._portal.loop.is_closed() and not self._done:
            return self._after_close()
        if self._done:
            raise StopIteration
        self._started = True

        async def step() -> Any:
            if self._done:  # closed by another thread before this step began
                raise StopAsyncIteration
            self._step = asyncio.current_task()
            try:
                return await self._aiter.__anext__()
            finally:
                self._step = None

        try:
            item: T = self._portal.run(step)
            return item
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None
        except concurrent.futures.CancelledError:
            if self._done:  # close() from another thread ended the wait
                raise StopIteration from None
            raise

    def get(self, timeout: float | timedelta | None = None) -> T | None:
        """The next item, or None after ``timeout`` seconds or at the end, for a
        stream that offers ``get`` (``events()``: :meth:`Subscription.get
        <conveyor.events.Subscription.get>`); else ``AttributeError``."""
        getter = getattr(self._aiter, "get", None)
        if getter is None:
            raise AttributeError(f"{type(self._aiter).__name__} offers no get(); iterate it")
        if self._done:
            return None
        if self._portal.loop.is_closed():
            try:
                return self._after_close()
            except StopIteration:
                return None
        got: T | None = self._portal.run(lambda: getter(timeout))
        return got

    def _read(self, read: Callable[[Any], T2]) -> T2:
        """``read(stream)`` on the loop thread, where the stream changes (directly
        once the loop is gone)."""
        if self._portal.loop.is_closed():
            return read(self._aiter)
        return cast("T2", self._portal.run(lambda: read(self._aiter), last=True))

    def close(self) -> None:
        """Stop iterating early and release the underlying stream. From another
        thread, a ``next()`` waiting meanwhile ends the iteration (StopIteration).
        Harmless twice, and once the app was closed (its stream ended with it)."""
        if self._done:
            return
        self._done = True
        self._held.clear()
        if self._portal.loop.is_closed():
            return

        async def shut() -> None:
            step = self._step
            if step is not None:  # another thread waits for the next item: end that
                step.cancel()
                await asyncio.wait([step])
            closer = getattr(self._aiter, "aclose", None) or getattr(self._aiter, "close",
                                                                     None)
            if closer is not None:
                value = closer()
                if inspect.isawaitable(value):
                    await value

        self._portal.run(shut)

    def __enter__(self) -> BlockingIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Seam:
    """The one seam both sync faces are derived at: a :class:`Portal` made on first
    use, and attribute access that turns the wrapped object's coroutine and async
    generator methods (and the methods named in ``_on_loop``, which return async
    iterators) into blocking calls; everything else passes through."""

    _on_loop: frozenset[str] = frozenset()

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self._portal: Portal | None = None
        self._lock = threading.Lock()
        self._closing = False  # a close() is under way: no new portal meanwhile
        _forks.track(self)

    def _after_fork(self) -> None:
        """In a forked child: the parent's loop thread does not exist here; the next
        call starts a new one (the wrapped object resets itself likewise)."""
        _forks.keep(self._portal)
        self._portal = None
        self._lock = threading.Lock()

    def _get_portal(self) -> Portal:
        with self._lock:
            if self._closing:
                # a new loop now would open the wrapped object beside the close under
                # way (two loops at once on one app: errors, and threads left behind)
                raise _being_closed(type(self).__name__)
            portal = self._portal
            if portal is not None and portal.borrowed and not portal.loop.is_running():
                portal = None  # the loop lent has ended: a loop of our own from now on
            if portal is None:
                home = self._home_loop()
                portal = self._portal = Portal(type(self).__name__, home)
            return portal

    def _home_loop(self) -> asyncio.AbstractEventLoop | None:
        """A running loop, of another thread, that the wrapped object is bound to
        (calls then go there), or None (the seam runs a loop of its own)."""
        return None

    def _enter(self, open_: Callable[[], Any]) -> Self:
        """``with``: run ``open_`` on the loop thread. ``__exit__`` is not called when
        ``__enter__`` raises, so a failed open closes here (ending the loop thread
        and whatever the open left)."""
        try:
            self._get_portal().run(open_)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Each face's own: disconnect, and end the background loop."""
        raise NotImplementedError

    @contextlib.contextmanager
    def _closing_portal(self) -> Iterator[Portal | None]:
        """For ``close``: detach the portal (the next call makes a new one) and
        refuse calls from other threads until the close is done. From the portal's
        own loop (an ``on()`` callback, a sink) a close would stop the loop it runs
        on, the app left open on it: refused first, nothing changed."""
        with self._lock:
            own = self._portal
            if own is not None and own.in_its_loop():
                raise ConveyorError(f"a {type(self).__name__} cannot be closed from its own "
                                    "event loop (in an on() callback or a sink): hand the "
                                    "close to another thread")
            if self._closing:
                raise ConveyorError(f"this {type(self).__name__} is already being closed "
                                    "by another thread")
            portal, self._portal = self._portal, None
            self._closing = True
        try:
            yield portal
        finally:
            with self._lock:
                self._closing = False

    def _iterator(self, portal: Portal, aiter: Any) -> BlockingIterator[Any]:
        """The blocking iterator over ``aiter`` a forwarded call returns."""
        return BlockingIterator(portal, aiter)

    if not TYPE_CHECKING:
        # checkers read each forwarded name from the sync face's declarations
        # (``conveyor._blocking``): a name neither declares is an error there, as on
        # the async class, not Any
        def __getattr__(self, name: str) -> Any:
            return self._forward(name)

    def _forward(self, name: str) -> Any:
        """The wrapped object's attribute ``name``: a coroutine or async generator
        method (or one named in ``_on_loop``) as a blocking call, anything else as is."""
        wrapped = self.__dict__.get("_wrapped")
        if wrapped is None:
            raise AttributeError(name)
        attr = getattr(wrapped, name)
        if not callable(attr):
            return attr
        if not (inspect.iscoroutinefunction(attr) or inspect.isasyncgenfunction(attr)
                or name in self._on_loop):
            return attr

        def blocking(*args: Any, **kwargs: Any) -> Any:
            portal = self._get_portal()
            try:
                value = portal.run(lambda: attr(*args, **kwargs))
            except StorageError as exc:
                if portal is self._portal:
                    raise
                # a close() from another thread closed the storage under this call
                raise ConveyorError(f"this {type(self).__name__} was closed while the "
                                    "call ran") from exc
            if hasattr(value, "__anext__"):
                return self._iterator(portal, value)
            return value

        blocking.__name__ = name
        blocking.__doc__ = attr.__doc__
        blocking.__signature__ = _signature(type(wrapped), name, attr)  # type: ignore[attr-defined]
        return blocking


_SIGNATURES: dict[tuple[type, str], inspect.Signature] = {}


def _signature(cls: type, name: str, method: Any) -> inspect.Signature:
    """The signature a blocking method shows (``help()``, IDEs): the async one's
    parameters (read once per class and name)."""
    key = (cls, name)
    found = _SIGNATURES.get(key)
    if found is None:
        found = _SIGNATURES[key] = inspect.signature(method)
    return found


if TYPE_CHECKING:
    from ._blocking import BlockingConveyor as _Typed
else:
    class _Typed:
        """The blocking signatures (``conveyor._blocking``), for type checkers only."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM during :meth:`SyncConveyor.run`: handled as Ctrl-C is (the call is
    cancelled and its graceful stop waited for), then ``run()`` returns."""


def _sigterm_interrupts() -> Callable[[], None]:
    """In the main thread, while SIGTERM has its default handling: make its first
    SIGTERM raise :class:`_Terminated` (later ones are ignored); returns what
    restores the default."""
    sigterm = getattr(signal, "SIGTERM", None)
    if (sigterm is None or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(sigterm) is not signal.SIG_DFL):
        return lambda: None
    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not seen:
            seen.append(signum)
            raise _Terminated()

    signal.signal(sigterm, handler)

    def restore() -> None:
        signal.signal(sigterm, signal.SIG_DFL)

    return restore


_FACES: weakref.WeakSet[SyncConveyor] = weakref.WeakSet()


def _stop_at_exit() -> None:
    """At the interpreter's exit (a normal one: a script's end, ``sys.exit``,
    gunicorn's or Django's exit on SIGTERM): a worker still running in a
    SyncConveyor is stopped gracefully, its running tasks handed back, as
    ``close()`` would (they stayed running until their leases ran out, and counted a
    rescue)."""
    faces = [f for f in list(_FACES) if f.app.worker is not None and f._portal is not None]
    if not faces:
        return
    # the program's own threads that are not daemons still run (the interpreter waits
    # for them after these hooks): they may still need the worker
    for thread in _program_threads():
        thread.join()
    for face in faces:
        with contextlib.suppress(Exception):
            face.close()


def _program_threads() -> list[threading.Thread]:
    """The non-daemon threads still alive but this one, the main one and the workers
    of ``concurrent.futures`` executors (they end with that module's own exit hook,
    which comes after ours)."""
    import concurrent.futures.thread as pool

    executors = set(getattr(pool, "_threads_queues", {}))
    current = threading.current_thread()
    return [t for t in threading.enumerate()
            if t.is_alive() and not t.daemon and t is not current
            and t is not threading.main_thread() and t not in executors]


def _at_interpreter_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` at the interpreter's exit while threads may still be handed work:
    with threading's own exit hooks, which run (last registered first) before
    ``concurrent.futures`` stops taking work and before ``atexit`` (whose hooks
    come too late: every ``asyncio.to_thread`` of a stop then raised "cannot
    schedule new futures after interpreter shutdown"); ``atexit`` where threading
    has no such hook."""
    import concurrent.futures.thread  # noqa: F401 - its exit hook first, so ours runs before

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        with contextlib.suppress(RuntimeError):  # the interpreter is shutting down
            register(fn)
            return
    atexit.register(fn)


_at_interpreter_exit(_stop_at_exit)


class SyncConveyor(_Typed, _Seam):
    """A blocking :class:`Conveyor`. Takes the same arguments, or an existing app
    (alone: options beside it are a ``TypeError``).

    An existing app already open in an event loop that another thread runs (a web
    server's, which opened it in its lifespan) is called in that loop, where its
    worker and waits live; from that loop's own thread a call is a
    :class:`ConveyorError` (await the app there). Otherwise the calls run in a loop
    of the SyncConveyor's own, in a background thread."""

    _on_loop = _ON_LOOP

    if not TYPE_CHECKING:
        # checkers read the constructor from ``conveyor._blocking``: Conveyor's own
        # parameters (typed), or an app alone
        def __init__(self, url: str | Storage | Conveyor | None = None,
                     **options: Any) -> None:
            self._setup(url, options)

    def _setup(self, url: str | Storage | Conveyor | None, options: dict[str, Any]) -> None:
        if isinstance(url, Conveyor) and options:
            raise TypeError(f"SyncConveyor(app) takes no options (got {', '.join(options)}): "
                            "an existing app has its own; give them to Conveyor(...)")
        self.app: Conveyor = url if isinstance(url, Conveyor) else Conveyor(url, **options)
        _Seam.__init__(self, self.app)
        _FACES.add(self)

    def run(self) -> None:
        """``app.run()`` as a blocking call: start the worker and run until Ctrl-C
        (``KeyboardInterrupt`` once the graceful stop is done) or SIGTERM (the same
        stop, then ``run()`` returns; when called in the main thread while SIGTERM
        has its default handling there; a second SIGTERM during the stop is
        ignored)."""
        portal = self._get_portal()
        restore = _sigterm_interrupts()
        try:
            portal.run(self.app.run)
        except _Terminated:
            return
        finally:
            restore()

    def _home_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self.app._home_loop()
        return None if loop is None or loop in _PORTAL_LOOPS else loop

    def close(self) -> None:
        """Stop the worker if any, disconnect, and end the background loop (not the
        loop of an app opened elsewhere, see the class). Not from a handler of the
        app (its stop waits for the handler) nor from its loop (an ``on()``
        callback): :class:`ConveyorError`, nothing changed."""
        here = RUNNING_HERE.get()
        if here is not None and here[0] is self.app:
            raise ConveyorError(
                f"close() inside the handler of task {here[1]}: the close stops the worker, "
                "which waits for this handler to return; close the app from the code that "
                "started it")
        with self._closing_portal() as portal:
            if portal is not None and portal.borrowed and not portal.loop.is_running():
                # the loop it was lent has ended (a lifespan's): close the app in one of
                # our own (it raised "this SyncConveyor is closed", the storage left open)
                portal = Portal(type(self).__name__)
            if portal is not None:
                portal.end_calls()  # calls of other threads from now on are refused
                try:
                    portal.run(self.app.close, last=True)
                    # the iterators' streams ended with the app: what they hold is
                    # kept for them, as the async ones give it before their error
                    portal.run(portal.keep_held, last=True)
                    if not portal.borrowed:  # (another's loop goes on as it is)
                        portal.run(self._settle, last=True)
                finally:
                    portal.close()

    async def _settle(self) -> None:
        """The close's last step on its own loop: a call submitted before the close
        began may have opened the app, or its storage alone (which opens on use),
        again meanwhile (its loop is about to end with them open on it, their
        threads and files left behind): end those calls, and close what they
        opened."""
        await _cancel_others()
        if self.app._opened:
            await self.app.close()
        await self.app.storage.close()  # nothing to do when it stayed closed

    def __enter__(self) -> SyncConveyor:
        return self._enter(self.app.__aenter__)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sync{self.app!r}"
