"""A small async client of the hub's REST API (``docs/http.md``), on httpx.

Its methods mirror :class:`conveyor.Conveyor`'s and return the same types
(:class:`~conveyor.Task`, :class:`~conveyor.storage.WorkerInfo`, ...). Errors
are the library's own: :class:`~conveyor.errors.TaskNotFound`,
:class:`~conveyor.errors.ValidationError` (:class:`~conveyor.errors.QueryError`
for filters), :class:`~conveyor.errors.InvalidTransition`,
:class:`~conveyor.errors.TaskFailed` / :class:`~conveyor.errors.TaskAborted` /
:class:`~conveyor.errors.WaitTimeout` from :meth:`HTTPClient.wait`, and
:class:`HubError` for the rest (authentication, rights, rate limits, an
unreachable hub)::

    async with HTTPClient("http://127.0.0.1:8765", key) as hub:
        task = await hub.add("mail:send", {"to": "ann@example.com"})
        print(await hub.wait(task.id, timeout=60))
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx

from .._specs import check_task_id, task_ids
from .._taskjson import log_from_json, task_from_json
from ..errors import (
    DuplicateTask,
    InvalidTransition,
    QueryError,
    TaskAborted,
    TaskFailed,
    TaskNotFound,
    ValidationError,
    WaitTimeout,
)
from ..model import (
    LogLevel,
    LogRecord,
    Status,
    Task,
    seconds,
)
from ..query import parse_filter
from ..query._tree import check_window
from ..storage import WorkerInfo
from ..storage._url import hide_password, scrub_password
from ._checks import check_http_url, setting_seconds
from ._errors import HubError
from ._unserved import UNSERVED_HEADER, warn_unserved
from ._wire import item_json, options_json, payload_json, seconds_json

__all__ = ["HTTPClient", "HubError", "LogPage", "task_from_json"]

API = "/api/v1"
PAGE = 1000
"""Tasks read per request when :meth:`HTTPClient.find` has no limit (or a larger one)."""
LONG_POLL = 50.0
"""The longest wait per request (the hub's is 60 s): under the 60 s a reverse
proxy commonly allows an answer (nginx's ``proxy_read_timeout``), so that the
hub's "not yet" comes before the proxy's own timeout."""

_PROXY_TIMEOUTS = (502, 503, 504)
"""Statuses a proxy in front of the hub answers a long poll with when the hub's
answer comes late or the hub restarts: a wait polls again (until its timeout)."""


@dataclass(frozen=True, slots=True)
class LogPage:
    """One read of a task's log (:meth:`HTTPClient.logs`): its status (read before
    the lines), the lines after ``after_seq`` in ``records`` (the REST body's
    ``logs``), and the ``next_seq`` to ask for the lines that follow."""

    task_id: str
    status: Status
    records: list[LogRecord]
    next_seq: int
    limit: int | None = None  # the read's limit: a full page may have more behind it

    @property
    def complete(self) -> bool:
        """The task had ended before these lines were read and the read was not cut
        short by its limit (fewer than ``limit`` lines came back): no more will come."""
        return self.status.terminal and (self.limit is None or len(self.records) < self.limit)


class HTTPClient:
    """A client of one hub. Use it as an async context manager, or call :meth:`close`.

    ``url`` is the hub's base URL (``http://127.0.0.1:8765``), ``key`` a
    credential's key (None for a hub running ``--insecure``), ``timeout`` the
    seconds one request may take (long polls get their wait on top). A URL that
    is not an ``http://`` or ``https://`` URL with a host (a port from 1 to 65535,
    no query or fragment), or a ``timeout`` that is not a finite number > 0, is a
    :class:`~conveyor.errors.ConfigurationError` (a ``ValueError``) at once.
    """

    def __init__(self, url: str, key: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = check_http_url(url).rstrip("/")
        self.timeout = setting_seconds(timeout, "timeout")
        headers = {"Accept": "application/json", "User-Agent": "conveyor-client"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"HTTPClient({hide_password(self.url)!r})"

    # -- plumbing -------------------------------------------------------------------

    async def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                    body: Any = None, task_id: str | None = None,
                    timeout: float | None = None, ok: Sequence[int] = (200, 201)
                    ) -> tuple[int, Any]:
        content = None
        headers = {}
        if body is not None:
            try:
                content = json.dumps(body, allow_nan=False, ensure_ascii=False).encode()
            except (TypeError, ValueError, RecursionError) as exc:
                raise ValidationError(f"the request is not JSON-serialisable: {exc}") from None
            except UnicodeEncodeError:
                raise ValidationError("the request holds text that is not valid Unicode") \
                    from None
            headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(
                method, path, params=params, content=content, headers=headers,
                timeout=self.timeout if timeout is None else timeout)
        except httpx.TimeoutException as exc:
            raise HubError(0, f"the hub at {hide_password(self.url)} did not answer in time "
                              f"({type(exc).__name__})", "timeout") from None
        except httpx.HTTPError as exc:
            shown = scrub_password(str(exc), self.url) or type(exc).__name__
            raise HubError(0, f"cannot reach the hub at {hide_password(self.url)}: {shown}",
                           "unreachable") from None
        if response.status_code in ok:
            unserved = response.headers.get(UNSERVED_HEADER)
            if unserved:
                warn_unserved(unserved.split(", "))
            try:
                return response.status_code, response.json()
            except ValueError:
                raise HubError(response.status_code, "the hub answered with something that "
                                                     "is not JSON", "bad_answer") from None
        raise _error(response, task_id)

    @staticmethod
    def _id(task_id: str) -> str:
        check_task_id(task_id)
        return quote(task_id, safe="")

    # -- adding ---------------------------------------------------------------------

    async def add(self, action: str, payload: Any = None, **options: Any) -> Task:
        """Add a task (options as :meth:`Conveyor.add`); a task holding
        ``unique_key`` in scope is returned instead of a new one."""
        return (await self.add_checked(action, payload, **options))[0]

    async def add_checked(self, action: str, payload: Any = None,
                          **options: Any) -> tuple[Task, bool]:
        """:meth:`add`, and whether the task is new (False: a task in scope held its
        ``unique_key``, and that task is returned)."""
        body = {"action": action, "payload": payload_json(payload), **options_json(options)}
        status, data = await self._call("POST", f"{API}/tasks", body=body)
        return task_from_json(data), status == 201

    async def add_many(self, items: Iterable[Any]) -> list[Task]:
        """Add many tasks, all or none: ``(action, payload)``,
        ``(action, payload, options)`` or dicts with ``action``."""
        return [task for task, _ in await self.add_many_checked(items)]

    async def add_many_checked(self, items: Iterable[Any]) -> list[tuple[Task, bool]]:
        """:meth:`add_many`, and for each task whether it is new (see
        :meth:`add_checked`), in the order given."""
        tasks = [_item(item, i) for i, item in enumerate(items)]
        if not tasks:
            return []
        _, data = await self._call("POST", f"{API}/tasks/batch", body={"tasks": tasks})
        return [(task_from_json(t), bool(c)) for t, c in zip(data["tasks"], data["created"],
                                                             strict=True)]

    # -- reading --------------------------------------------------------------------

    async def get(self, task_id: str, *, logs: bool = False,
                  max_level: LogLevel | str = LogLevel.DEBUG) -> Task:
        """The task (``GET /tasks/{id}``); with ``logs=True`` its logs too."""
        params = {"logs": "true", "max_level": _level(max_level)} if logs else None
        _, data = await self._call("GET", f"{API}/tasks/{self._id(task_id)}", params=params,
                                   task_id=task_id)
        return task_from_json(data)

    async def find(self, filter: Mapping[str, Any] | None = None, *, sort: Any = None,
                   limit: int | None = None, skip: int = 0) -> list[Task]:
        """Tasks matching ``filter``, sorted, paged (read 1,000 per request).

        Pages are separate reads: a task that a change during the listing moved
        into a page already read is not listed twice, but one that it moved back
        into such a page is not listed at all."""
        check_window(limit, skip)
        where = _filter_body(filter)
        out: list[Task] = []
        seen: set[str] = set()
        read = 0
        while True:
            want = PAGE if limit is None else min(PAGE, limit - len(out))
            body = {"filter": where, "sort": sort, "limit": want, "skip": skip + read}
            _, data = await self._call("POST", f"{API}/tasks/search", body=body)
            page = [task_from_json(t) for t in data["tasks"]]
            read += len(page)
            out.extend(t for t in page if t.id not in seen)
            seen.update(t.id for t in page)
            if len(page) < want or want == 0 or (limit is not None and len(out) >= limit):
                return out

    async def find_one(self, filter: Mapping[str, Any] | None = None, *,
                       sort: Any = None) -> Task | None:
        """The first task matching the filter, or None."""
        found = await self.find(filter, sort=sort, limit=1)
        return found[0] if found else None

    async def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """How many tasks match the filter."""
        _, data = await self._call("POST", f"{API}/tasks/count",
                                   body={"filter": _filter_body(filter)})
        return int(data["count"])

    async def stats(self) -> dict[str, dict[str, int]]:
        """Task counts per action and status."""
        _, data = await self._call("GET", f"{API}/stats")
        return {str(a): {str(s): int(n) for s, n in counts.items()}
                for a, counts in data["stats"].items()}

    async def workers(self) -> list[WorkerInfo]:
        """The workers registered in the hub's storage."""
        _, data = await self._call("GET", f"{API}/workers")
        return [WorkerInfo(id=w["id"], host=w["host"], pid=w["pid"],
                           actions=tuple(w["actions"]), concurrency=w["concurrency"],
                           started_at=w["started_at"], last_seen=w["last_seen"],
                           running=w.get("running", 0), info=w.get("info") or {})
                for w in data["workers"]]

    async def logs(self, task_id: str, *, after_seq: int = 0,
                   max_level: LogLevel | str = LogLevel.DEBUG, limit: int = 1000) -> LogPage:
        """One page of a task's log: the lines with ``seq > after_seq``."""
        params = {"after_seq": str(after_seq), "max_level": _level(max_level),
                  "limit": str(limit)}
        _, data = await self._call("GET", f"{API}/tasks/{self._id(task_id)}/logs",
                                   params=params, task_id=task_id)
        return LogPage(task_id=data["task_id"], status=Status(data["status"]),
                       records=[log_from_json(r) for r in data["logs"]], next_seq=data["next_seq"],
                       limit=limit)

    async def follow_logs(self, task_id: str, *, max_level: LogLevel | str = LogLevel.DEBUG,
                          after_seq: int = 0, poll: float = 0.5) -> AsyncIterator[LogRecord]:
        """The task's log lines, then new ones (read every ``poll`` seconds)
        until the task ends."""
        seq = after_seq
        while True:
            page = await self.logs(task_id, after_seq=seq, max_level=max_level)
            for record in page.records:
                yield record
            seq = page.next_seq
            if page.complete:
                return
            if page.limit is not None and len(page.records) >= page.limit:
                continue  # a full page: read on at once
            await asyncio.sleep(poll)

    # -- waiting --------------------------------------------------------------------

    async def wait_once(self, task_id: str, timeout: float) -> tuple[Task, bool]:
        """One long poll of at most ``timeout`` seconds (capped at 50, under a
        proxy's common 60 s limit): the task, and whether it has ended."""
        wait = max(0.0, min(float(timeout), LONG_POLL))
        status, data = await self._call(
            "GET", f"{API}/tasks/{self._id(task_id)}/wait", params={"timeout": f"{wait:g}"},
            task_id=task_id, timeout=self.timeout + wait, ok=(200, 202))
        return task_from_json(data), status == 200

    async def wait_task(self, task_id: str,
                        timeout: float | timedelta | None = None) -> Task:
        """Wait until the task ends and return it, whatever its final status
        (:class:`WaitTimeout` after ``timeout`` seconds, or a timedelta)."""
        limit = seconds(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            left = LONG_POLL if deadline is None else deadline - time.monotonic()
            try:
                task, ended = await self.wait_once(task_id, max(0.0, left))
            except HubError as exc:
                # a proxy's own answer (not the hub's JSON: no code) to a poll it
                # gave up on, or while the hub restarts: ask again
                if exc.status not in _PROXY_TIMEOUTS or exc.code:
                    raise
                ended = False
            else:
                if ended:
                    return task
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(task_id, float(limit or 0.0))

    async def wait(self, task_id: str, timeout: float | timedelta | None = None) -> Any:
        """The task's result once it ends; :class:`TaskFailed` or
        :class:`TaskAborted` if it did not succeed."""
        task = await self.wait_task(task_id, timeout)
        if task.status is Status.SUCCEEDED:
            return task.result
        if task.status is Status.ABORTED:
            raise TaskAborted(task)
        raise TaskFailed(task)

    # -- control (admin) --------------------------------------------------------------

    async def abort(self, task_id: str, reason: str = "aborted") -> Task:
        """Abort a task (queued: at once; running: its worker is asked to stop)."""
        _, data = await self._call("POST", f"{API}/tasks/{self._id(task_id)}/abort",
                                   body={"reason": reason}, task_id=task_id)
        return task_from_json(data)

    async def retry(self, task_id: str, *, delay: float | timedelta | None = None) -> Task:
        """Queue a failed or aborted task again, after ``delay`` seconds."""
        body = {"delay": seconds_json(delay)} if delay is not None else {}
        _, data = await self._call("POST", f"{API}/tasks/{self._id(task_id)}/retry",
                                   body=body, task_id=task_id)
        return task_from_json(data)

    async def prioritize(self, task_id: str, priority: float) -> Task:
        """Change the priority of a queued task."""
        _, data = await self._call("POST", f"{API}/tasks/{self._id(task_id)}/prioritize",
                                   body={"priority": priority}, task_id=task_id)
        return task_from_json(data)

    async def delete(self, target: str | Sequence[str] | Mapping[str, Any]) -> list[str]:
        """Delete finished tasks by id, ids or filter; others are left alone.
        Returns the ids deleted."""
        if isinstance(target, Mapping):
            _, data = await self._call("POST", f"{API}/tasks/delete",
                                       body={"filter": dict(target)})
            return list(data["deleted"])
        ids = list(dict.fromkeys(task_ids(target)))  # all checked before the first page
        deleted: list[str] = []
        for start in range(0, len(ids), PAGE):
            _, data = await self._call("POST", f"{API}/tasks/delete",
                                       body={"ids": ids[start:start + PAGE]})
            deleted.extend(data["deleted"])
        return deleted


# -- decoding -------------------------------------------------------------------------


def _error(response: httpx.Response, task_id: str | None) -> Exception:
    status = response.status_code
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error["message"])
        path = str(error.get("path") or "")
        duplicate = error.get("duplicate") is True
    except (ValueError, KeyError, TypeError):
        # not the hub's answer: a proxy's in front of it (an HTML page)
        code, path, duplicate = "", "", False
        title = re.search(r"<title>(.*?)</title>", response.text, re.IGNORECASE | re.DOTALL)
        said = " ".join((title[1] if title else response.text).split())[:200]
        message = (f"HTTP {status} {response.reason_phrase}, not from the hub (its answers "
                   f"are JSON): from a proxy in front of it?" + (f" It said: {said}"
                                                                  if said else ""))
        return HubError(status, message, code)
    if status == 404 and code == "not_found" and task_id is not None \
            and not message.startswith("no route"):  # a wrong path to the hub is no task's
        return TaskNotFound(task_id)
    if status == 422 and code == "invalid_query":
        exc = QueryError(message)
        exc.path = path
        return exc
    if status in (400, 413, 415, 422):
        return ValidationError(message)
    if status == 409 and code == "invalid_transition":
        return DuplicateTask(message) if duplicate else InvalidTransition(message)
    return HubError(status, message, code)


# -- encoding -------------------------------------------------------------------------


def _level(value: LogLevel | str) -> str:
    return LogLevel.parse(value).name.lower()


def _item(item: Any, index: int) -> dict[str, Any]:
    action, payload, options = item_json(item, index)
    return {"action": action, "payload": payload_json(payload), **options_json(options)}


def _filter_body(filter: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The filter as sent: a mapping, or None for every task; anything else is the
    library's ``QueryError`` (an empty list is not "no filter")."""
    if filter is None:
        return None
    if not isinstance(filter, Mapping):
        parse_filter(filter)  # raises what Conveyor.find would
    return dict(filter)
