"""Adding tasks for a credential: a ``unique_key`` held by a task of an action the
credential may not read is refused, never answered with that task, and the queries
of the tasks' concurrency conditions count only tasks of actions it may read.

Unique keys are shared by all actions (a key from ``unique_fields`` starts with
its action, but another action's task may have been given that very string as its
``unique_key``). A publish that met such a holder would return the task (its payload,
result, ...) and, over the WebSocket, stream its events to a publisher that may
not read them. A batch is checked before it is added (so all or none holds); a
holder that appears between that check and the add is refused after it, and a
single add then has added nothing.

A concurrency condition counts the tasks its query matches, whatever their action:
whether a task is claimed, or stays queued, would tell its publisher whether tasks
it may not read match a query of its choosing (``$regex`` on their payload or
result, one character at a time). Each condition's query is therefore narrowed to
the readable actions, ``{"$and": [<read scope>, query]}``, as stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..app import Conveyor, _item_list
from ..errors import QueryError
from ..model import Task
from ..query import parse_filter
from ..storage import AddResult
from ._credentials import Credential, read_scope_query

__all__ = ["KeyHeld", "add_as"]



class KeyHeld(Exception):
    """Item ``index``'s ``unique_key`` is held by a task the credential may not read;
    ``added`` when other tasks of the call were added all the same (a race): the
    message says so."""

    def __init__(self, index: int, key: str, several: bool, added: bool) -> None:
        where = f"task {index}: " if several else ""
        message = (f"{where}unique key {key!r} is held by a task of an action this "
                   "credential may not read")
        message += ("; the call's other tasks were added" if added
                    else "; nothing was added")
        super().__init__(message)


async def add_as(app: Conveyor, cred: Credential, items: Sequence[dict[str, Any]],
                 before_events: Callable[[list[AddResult]], None] | None = None
                 ) -> list[tuple[Task, bool]]:
    """``app.add_many_checked(items)`` for ``cred``: :class:`KeyHeld` instead of a
    task it may not read. ``before_events(results)``: run once the tasks are stored,
    before their events go out (a publish's streams start listening then)."""
    several = len(items) > 1
    narrow = not cred.admin and "*" not in cred.readable
    items = [_scoped_conditions(item, cred, narrow) for item in items]
    if several and not cred.admin:
        await _check_holders(app, cred, items)
    added = [(r.task, r.created)
             for r in await app._add_items(_item_list(items), before_events)]
    if not cred.admin:
        for i, (task, created) in enumerate(added):
            if not created and not cred.can_read(task.action):
                raise KeyHeld(i, task.unique_key or "", several,
                              any(c for _, c in added))
    return added


async def _check_holders(app: Conveyor, cred: Credential,
                         items: Sequence[dict[str, Any]]) -> None:
    """Refuse a call (before anything is added) one of whose keys the add would
    answer with a task ``cred`` may not read: the storage tells which task each
    item's key and scope get, reading a few rows per key. The keys are those the
    add makes (``unique_key``, or built from ``unique_fields``): the items are
    checked as the add checks them, so a bad one is refused in the add's words."""
    if not any(item.get("unique_key") is not None or item.get("unique_fields") is not None
               for item in items):
        return
    specs = app._spec_builder(_item_list(items))(0, len(items))
    keyed = [(i, spec.unique_key, spec.unique_scope) for i, spec in enumerate(specs)
             if spec.unique_key is not None]
    await app.open()
    holders = await app.storage.key_holders([(key, scope) for _, key, scope in keyed])
    for (i, key, _), holder in zip(keyed, holders, strict=True):
        if holder is not None and not cred.can_read(holder.action):
            raise KeyHeld(i, key, True, False)


def _scoped_conditions(item: dict[str, Any], cred: Credential, narrow: bool
                       ) -> dict[str, Any]:
    """``item`` with its conditions' queries held to the hub's bound on patterns (for
    every credential: an admin's too) and, when ``narrow``, narrowed to the actions
    ``cred`` may read. A condition the add will refuse (not an object, a bad query) is
    left as it is, so that its error keeps its own words and path."""
    conditions = item.get("concurrency")
    if not isinstance(conditions, Mapping | list):
        return item  # none, or refused by the add
    several = isinstance(conditions, list)
    scoped = []
    for i, cond in enumerate(conditions if several else [conditions]):
        if isinstance(cond, Mapping) and isinstance(cond.get("query"), Mapping):
            try:
                parse_filter(cond["query"])
            except QueryError:
                pass  # refused by the add, in its own words
            else:
                # the hub's own bound on patterns (the add does not know it comes from a hub)
                parse_filter(cond["query"], bounded=True,
                             where=f"concurrency[{i}].query" if several else "concurrency.query")
                if narrow:
                    cond = {**cond, "query": {"$and": [read_scope_query(cred.readable),
                                                       cond["query"]]}}
        scoped.append(cond)
    return {**item, "concurrency": scoped if several else scoped[0]}

