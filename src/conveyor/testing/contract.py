"""The storage contract: one test suite every backend must pass unchanged.

To check a backend of your own, subclass :class:`StorageContract` in a test
module and provide two fixtures::

    import pytest
    from conveyor.testing import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        async def storage(self):
            s = MyStorage(...)
            await s.open()
            yield s
            await s.close()

        @pytest.fixture
        async def other_storage(self, storage):
            # a second storage object on the same data (another connection), or `storage`
            yield storage

Run it with pytest and pytest-asyncio (``asyncio_mode = "auto"``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from ..errors import InvalidTransition, StorageError, TaskNotFound
from ..model import (
    DEFAULT_UNIQUE_SCOPE,
    Backoff,
    Condition,
    ErrorInfo,
    LogLevel,
    Progress,
    Status,
    Task,
    TaskSpec,
    Transition,
    new_id,
)
from ..query import parse_filter, parse_query
from ..storage import Change, ClaimLimits, Completion, Lease, NewLog, Storage, WorkerInfo

__all__ = ["StorageContract", "make_spec"]


def make_spec(action: str = "test:a", payload: Any = None, **options: Any) -> TaskSpec:
    """A TaskSpec with a fresh id, ready now unless ``run_at`` is given."""
    options.setdefault("run_at", time.time())
    return TaskSpec(id=new_id(), action=action, payload=payload, **options)


def ok(value: Any = None) -> Transition:
    return Transition(Status.SUCCEEDED, result=value)


async def _claim_one(storage: Storage, action: str = "test:a", worker: str = "w1",
                     lease: float = 30.0) -> Task:
    claimed = await storage.claim(worker, [action], 1, lease)
    assert len(claimed) == 1, claimed
    return claimed[0]


def _assert_same(task: Task, stored: Task) -> None:
    """Every field equal; times to the millisecond (a backend may read them back
    through JSON, whose numbers can carry fewer digits than the stored double)."""
    for f in dataclasses.fields(Task):
        got, want = getattr(task, f.name), getattr(stored, f.name)
        if isinstance(want, float) and f.name.endswith(("_at", "_until", "deadline")):
            assert got == pytest.approx(want, abs=1e-3), f.name
        else:
            assert got == want, f.name


class StorageContract:
    """The behaviour every :class:`~conveyor.storage.Storage` must show."""

    @pytest.fixture
    async def storage(self) -> Storage:  # pragma: no cover - overridden
        raise NotImplementedError("provide a `storage` fixture")

    @pytest.fixture
    def other_storage(self, storage: Storage) -> Storage:
        """A second storage object on the same data; backends override to use a
        second connection. (A plain function: the suite's own fixtures work under
        pytest-asyncio's strict mode as well as its auto mode.)"""
        return storage

    # -- add / get ------------------------------------------------------------

    async def test_add_and_get(self, storage: Storage) -> None:
        spec = make_spec(payload={"n": 1, "s": "é"}, priority=-2.5, tags={"user": "ann"},
                         max_attempts=3, run_timeout=10.0, pickup_timeout=60.0)
        [res] = await storage.add([spec])
        assert res.created
        task = res.task
        assert task.id == spec.id and task.status is Status.QUEUED and task.version == 1
        got = await storage.get(spec.id)
        assert got is not None
        assert got.payload == {"n": 1, "s": "é"}
        assert got.priority == -2.5 and got.tags == {"user": "ann"}
        assert got.max_attempts == 3 and got.run_timeout == 10.0 and got.pickup_timeout == 60.0
        assert got.run_at == spec.run_at and got.pickup_deadline == pytest.approx(got.run_at + 60)
        assert got.attempts == 0 and got.result is None and got.error is None
        assert got.created_at == pytest.approx(time.time(), abs=5)
        assert await storage.get(new_id()) is None

    async def test_a_spec_without_run_at_is_ready_when_stored(self, storage: Storage) -> None:
        spec = TaskSpec(id=new_id(), action="test:a", payload=None, pickup_timeout=5.0)
        [res] = await storage.add([spec])
        got = await storage.get(spec.id)
        assert got is not None and got == res.task
        assert got.run_at == got.created_at and got.pickup_deadline == got.created_at + 5

    async def test_add_batch_is_atomic(self, storage: Storage) -> None:
        good = make_spec()
        clash = make_spec()
        twin = TaskSpec(id=clash.id, action="test:a", payload=None, run_at=time.time())
        with pytest.raises(StorageError):
            await storage.add([good, clash, twin])
        assert await storage.get(good.id) is None
        assert await storage.count(parse_filter({})) == 0

    async def test_get_many(self, storage: Storage) -> None:
        specs = [make_spec(payload=i) for i in range(5)]
        await storage.add(specs)
        got = await storage.get_many([specs[1].id, specs[3].id, new_id()])
        assert sorted(t.payload for t in got) == [1, 3]

    async def test_payload_round_trip(self, storage: Storage) -> None:
        payloads = [None, 0, -1.5, "text", True, [], [1, [2, {"a": None}]], {"k": {"n": 1e300}}]
        specs = [make_spec(payload=p) for p in payloads]
        await storage.add(specs)
        for spec, payload in zip(specs, payloads, strict=True):
            got = await storage.get(spec.id)
            assert got is not None and got.payload == payload

    # -- dedupe ---------------------------------------------------------------

    async def test_unique_key_returns_live_task(self, storage: Storage) -> None:
        [first] = await storage.add([make_spec(unique_key="k1", payload=1)])
        [second] = await storage.add([make_spec(unique_key="k1", payload=2)])
        assert first.created and not second.created
        assert second.task.id == first.task.id and second.task.payload == 1
        assert await storage.count(parse_filter({})) == 1

    async def test_unique_key_within_one_batch(self, storage: Storage) -> None:
        results = await storage.add([make_spec(unique_key="b", payload=i) for i in range(3)])
        assert [r.created for r in results] == [True, False, False]
        assert len({r.task.id for r in results}) == 1

    async def test_a_task_back_in_its_keys_scope_gives_up_a_key_taken_meanwhile(
            self, storage: Storage) -> None:
        """A task whose scope leaves out ``running`` holds no key while it runs; another
        task may take the key then. When the run ends in a retry (or the task is handed
        back, or rescued), the task goes back to ``queued`` without its key, the other
        keeps it (it was refused: a worker's writes and the sweeper jammed)."""
        queued_only = (Status.QUEUED,)
        later = time.time() + 60
        for how in ("retry", "release", "rescue"):
            key, action = f"kq-{how}", f"test:{how}"
            [first] = await storage.add([make_spec(action=action, unique_key=key,
                                                   unique_scope=queued_only)])
            task = await _claim_one(storage, action, lease=0.01 if how == "rescue" else 30.0)
            assert task.id == first.task.id
            [second] = await storage.add([make_spec(unique_key=key, unique_scope=queued_only,
                                                    run_at=later)])
            assert second.created
            if how == "retry":
                assert await storage.finish("w1", [Completion(
                    task.id, task.token or "", Transition(Status.QUEUED, run_at=later))]) == []
            elif how == "release":
                assert await storage.release("w1", [Lease(task.id, task.token or "")]) == [
                    task.id]
            else:
                await asyncio.sleep(0.05)  # the lease's end must pass
                assert (await storage.recover(max_rescues=3)).requeued == (task.id,)
            back = await storage.get(task.id)
            assert back is not None and back.status is Status.QUEUED, how
            assert back.unique_key is None, how
            held = await storage.get(second.task.id)
            assert held is not None and held.unique_key == key
            [again] = await storage.add([make_spec(unique_key=key, unique_scope=queued_only)])
            assert not again.created and again.task.id == second.task.id

    async def test_a_task_finished_twice_in_one_call_takes_the_first(
            self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage)
        token = task.token or ""
        err = ErrorInfo("RuntimeError", "boom", "", 1, time.time())
        refused = await storage.finish("w1", [
            Completion(task.id, token, Transition(Status.FAILED, error=err, reason="error")),
            Completion(task.id, token, Transition(Status.QUEUED, run_at=time.time())),
        ])
        assert refused == [task.id]  # the second: not stored
        after = await storage.get(task.id)
        assert after is not None and after.status is Status.FAILED
        assert [e.message for e in after.errors] == ["boom"]

    async def test_unique_key_frees_after_finish(self, storage: Storage) -> None:
        [first] = await storage.add([make_spec(unique_key="k2")])
        task = await _claim_one(storage)
        assert task.id == first.task.id
        await storage.finish("w1", [Completion(task.id, task.token or "", ok())])
        [again] = await storage.add([make_spec(unique_key="k2")])
        assert again.created and again.task.id != first.task.id

    async def test_unique_scope_with_finished(self, storage: Storage) -> None:
        scope = (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
        [first] = await storage.add([make_spec(unique_key="k3", unique_scope=scope)])
        task = await _claim_one(storage)
        await storage.finish("w1", [Completion(task.id, task.token or "", ok(1))])
        [again] = await storage.add([make_spec(unique_key="k3", unique_scope=scope)])
        assert not again.created and again.task.id == first.task.id
        assert again.task.status is Status.SUCCEEDED

    async def test_unique_key_matches_the_holders_scope_and_the_new_ones(
            self, storage: Storage) -> None:
        wide = (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
        # a holder keeps its key in its own scope, against an add of the default scope
        [held] = await storage.add([make_spec(unique_key="k4", unique_scope=wide)])
        task = await _claim_one(storage)
        await storage.finish("w1", [Completion(task.id, task.token or "", ok())])
        [again] = await storage.add([make_spec(unique_key="k4")])
        assert not again.created and again.task.id == held.task.id
        # an add of a wider scope finds a succeeded task added with the default one
        [plain] = await storage.add([make_spec(unique_key="k5")])
        task = await _claim_one(storage)
        await storage.finish("w1", [Completion(task.id, task.token or "", ok())])
        [found] = await storage.add([make_spec(unique_key="k5", unique_scope=wide)])
        assert not found.created and found.task.id == plain.task.id
        [fresh] = await storage.add([make_spec(unique_key="k5")])
        assert fresh.created

    async def test_a_batch_answers_its_items_as_adds_one_by_one_would(
            self, storage: Storage) -> None:
        """An item of a batch is answered by the rule of :func:`key_holder` over the
        stored tasks and the tasks the batch adds before it: here the first item's
        new task (the key's holder), not an ended task the second's wider scope
        matches."""
        wide = (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
        [ended] = await storage.add([make_spec(unique_key="b1")])
        task = await _claim_one(storage)
        await storage.finish("w1", [Completion(task.id, task.token or "", ok())])
        first, second = await storage.add([make_spec(unique_key="b1"),
                                           make_spec(unique_key="b1", unique_scope=wide)])
        assert first.created and not second.created
        assert second.task.id == first.task.id != ended.task.id
        # a running task outside its own scope, then a batch: the new holder again
        queued_only = (Status.QUEUED,)
        await storage.add([make_spec(action="test:b2", unique_key="b2",
                                     unique_scope=queued_only)])
        running = await _claim_one(storage, "test:b2")
        first, second = await storage.add([make_spec(unique_key="b2", unique_scope=queued_only),
                                           make_spec(unique_key="b2")])
        assert first.created and not second.created
        assert second.task.id == first.task.id != running.id

    async def test_key_holders_name_what_an_add_would_return(self, storage: Storage) -> None:
        wide = (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
        [ended] = await storage.add([make_spec(unique_key="h1")])
        task = await _claim_one(storage)
        await storage.finish("w1", [Completion(task.id, task.token or "", ok())])
        [live] = await storage.add([make_spec(unique_key="h2")])
        asked = [("h1", DEFAULT_UNIQUE_SCOPE), ("h1", wide), ("h2", DEFAULT_UNIQUE_SCOPE),
                 ("h2", wide), ("nobody", wide)]
        holders = await storage.key_holders(asked)
        assert [None if t is None else t.id for t in holders] == [
            None, ended.task.id, live.task.id, live.task.id, None]
        [again] = await storage.add([make_spec(unique_key="h1", unique_scope=wide)])
        assert not again.created and again.task.id == ended.task.id  # as the add says
        assert await storage.key_holders([]) == []
        assert await storage.key_holders([("nul\x00key", wide)]) == [None]

    async def test_which_task_a_key_returns_when_several_are_in_scope(
            self, storage: Storage) -> None:
        """The holder (in its own scope) first, else the newest in the add's scope
        (:func:`~conveyor.storage.base.key_holder`); the backends differed."""
        wide = (Status.QUEUED, Status.RUNNING, Status.SUCCEEDED)
        ended = []
        for _ in range(2):
            [old] = await storage.add([make_spec(unique_key="k6")])
            task = await _claim_one(storage)
            await storage.finish("w1", [Completion(task.id, task.token or "", ok())])
            ended.append(old.task)
        [newest] = await storage.add([make_spec(unique_key="k6", unique_scope=wide)])
        assert not newest.created and newest.task.id == ended[-1].id
        [holder] = await storage.add([make_spec(unique_key="k6")])  # queued: the holder
        assert holder.created
        for add in ([make_spec(unique_key="k6", unique_scope=wide)],
                    [make_spec(payload=1), make_spec(unique_key="k6", unique_scope=wide)]):
            found = (await storage.add(add))[-1]
            assert not found.created and found.task.id == holder.task.id

    async def test_unique_key_race(self, storage: Storage, other_storage: Storage) -> None:
        async def add(s: Storage, i: int) -> list[str]:
            res = await s.add([make_spec(unique_key=f"race-{k}", payload=i) for k in range(20)])
            return [r.task.id for r in res]

        results = await asyncio.gather(*(add(storage if i % 2 else other_storage, i)
                                         for i in range(6)))
        assert all(r == results[0] for r in results)
        assert await storage.count(parse_filter({})) == 20

    # -- claim ------------------------------------------------------------------

    async def test_claim_order(self, storage: Storage) -> None:
        now = time.time()
        specs = [
            make_spec(payload="p1-old", priority=1, run_at=now - 10),
            make_spec(payload="p0-new", priority=0, run_at=now - 1),
            make_spec(payload="p0-old", priority=0, run_at=now - 5),
            make_spec(payload="neg", priority=-1, run_at=now - 1),
            make_spec(payload="future", priority=-5, run_at=now + 3600),
            make_spec(action="test:other", payload="other", priority=-9),
        ]
        await storage.add(specs)
        claimed = await storage.claim("w1", ["test:a"], 10, 30)
        assert [t.payload for t in claimed] == ["neg", "p0-old", "p0-new", "p1-old"]

    async def test_fifo_within_priority(self, storage: Storage) -> None:
        now = time.time()
        specs = [make_spec(payload=i, run_at=now) for i in range(30)]
        await storage.add(specs)
        order: list[Any] = []
        while batch := await storage.claim("w1", ["test:a"], 7, 30):
            order.extend(t.payload for t in batch)
        assert order == list(range(30))

    async def test_claim_marks_running(self, storage: Storage) -> None:
        [res] = await storage.add([make_spec(pickup_timeout=100.0)])
        before = time.time()
        task = await _claim_one(storage, worker="w-1", lease=20)
        assert task.id == res.task.id and task.status is Status.RUNNING
        assert task.worker == "w-1" and task.token
        assert task.attempts == 1 and task.version == 2
        assert task.started_at is not None and task.started_at >= before - 1
        assert task.lease_until == pytest.approx(time.time() + 20, abs=5)
        assert task.pickup_deadline is None
        stored = await storage.get(task.id)
        assert stored is not None and stored.status is Status.RUNNING
        assert stored.token == task.token
        _assert_same(task, stored)  # what the claim returns is what it stored
        assert await storage.claim("w2", ["test:a"], 5, 30) == []

    async def test_claimed_tasks_equal_the_stored_ones(self, storage: Storage) -> None:
        specs = [make_spec(payload={"n": i}, priority=i % 3, tags={"i": str(i)},
                           max_attempts=4, run_timeout=30.0, pickup_timeout=600.0,
                           backoff=Backoff(base=2.0), unique_key=f"k{i}",
                           unique_scope=(Status.QUEUED,), parent_id="p-1")
                 for i in range(5)]
        await storage.add(specs)
        claimed = await storage.claim("w-1", ["test:a"], 10, 15.0)
        assert len(claimed) == 5
        for task in claimed:
            stored = await storage.get(task.id)
            assert stored is not None
            _assert_same(task, stored)

    async def test_claim_limit_and_actions(self, storage: Storage) -> None:
        await storage.add([make_spec(payload=i) for i in range(5)])
        await storage.add([make_spec(action="test:b", payload=i) for i in range(5)])
        assert await storage.claim("w1", ["test:a"], 0, 30) == []
        assert await storage.claim("w1", [], 5, 30) == []
        first = await storage.claim("w1", ["test:a"], 3, 30)
        assert len(first) == 3 and {t.action for t in first} == {"test:a"}
        both = await storage.claim("w1", ["test:a", "test:b"], 100, 30)
        assert len(both) == 7

    async def test_claim_merges_actions_in_order(self, storage: Storage) -> None:
        """A claim over several actions takes the first tasks over all of them,
        by priority then age; also with many actions at once (80 here)."""
        now = time.time()
        specs = [make_spec(action=f"test:{a}", payload=f"{a}{p}", priority=p,
                           run_at=now - 60 + a + p / 10)
                 for a in range(3) for p in range(4)]
        await storage.add(specs)
        claimed = await storage.claim("w1", ["test:0", "test:1", "test:2"], 5, 30)
        assert [t.payload for t in claimed] == ["00", "10", "20", "01", "11"]
        many = [f"test:many{i}" for i in range(80)]
        await storage.add([make_spec(action=a, payload=i, priority=-i)
                           for i, a in enumerate(many)])
        claimed = await storage.claim("w1", many, 10, 30)
        assert [t.payload for t in claimed] == list(range(79, 69, -1))

    async def test_concurrent_claims_never_share(self, storage: Storage,
                                                 other_storage: Storage) -> None:
        await storage.add([make_spec(payload=i) for i in range(200)])

        async def drain(s: Storage, name: str) -> list[str]:
            got: list[str] = []
            while batch := await s.claim(name, ["test:a"], 9, 30):
                got.extend(t.id for t in batch)
            return got

        results = await asyncio.gather(*(drain(storage if i % 2 else other_storage, f"w{i}")
                                         for i in range(4)))
        ids = [i for r in results for i in r]
        assert len(ids) == 200 and len(set(ids)) == 200

    async def test_pickup_timeout_expires_on_claim(self, storage: Storage) -> None:
        now = time.time()
        [late] = await storage.add([make_spec(payload="late", run_at=now - 10,
                                              pickup_timeout=0.01)])
        [fine] = await storage.add([make_spec(payload="fine", run_at=now - 10,
                                              pickup_timeout=60.0)])
        await asyncio.sleep(0.05)  # the pickup timeout runs out
        claimed = await storage.claim("w1", ["test:a"], 10, 30)
        assert [t.id for t in claimed] == [fine.task.id]
        expired = await storage.get(late.task.id)
        assert expired is not None and expired.status is Status.FAILED
        assert expired.reason == "pickup_timeout" and expired.attempts == 0
        assert expired.error is not None and expired.error.type == "PickupTimeout"

    async def test_pickup_timeout_expires_on_recover(self, storage: Storage) -> None:
        [late] = await storage.add([make_spec(run_at=time.time() - 10, pickup_timeout=0.01)])
        await asyncio.sleep(0.05)  # the pickup timeout runs out
        report = await storage.recover(max_rescues=3)
        assert report.expired == (late.task.id,)
        task = await storage.get(late.task.id)
        assert task is not None and task.status is Status.FAILED
        assert task.reason == "pickup_timeout"

    async def test_a_past_run_at_counts_the_pickup_timeout_from_now(
            self, storage: Storage) -> None:
        """A task cannot become ready before it is added (or queued again): its pickup
        timeout counts from then, not from a ``run_at`` in the past (it failed at
        once, without running)."""
        hour_ago = time.time() - 3600
        [res] = await storage.add([make_spec(run_at=hour_ago, pickup_timeout=60.0)])
        assert res.task.run_at == hour_ago
        assert res.task.pickup_deadline == pytest.approx(time.time() + 60, abs=5)
        task = await _claim_one(storage)
        assert task.id == res.task.id
        await storage.finish("w1", [Completion(task.id, task.token or "", Transition(
            Status.QUEUED, run_at=hour_ago, refund_attempt=True))])
        again = await storage.get(task.id)
        assert again is not None and again.status is Status.QUEUED
        assert again.pickup_deadline == pytest.approx(time.time() + 60, abs=5)
        assert [t.id for t in await storage.claim("w1", ["test:a"], 5, 30)] == [task.id]

    # -- concurrency conditions -------------------------------------------------

    async def test_condition_limits_running_matches(self, storage: Storage) -> None:
        cond = (Condition(query={"payload.book": "X"}, limit=1),)
        specs = [make_spec(payload={"book": "X", "n": i}, concurrency=cond) for i in range(3)]
        specs += [make_spec(payload={"book": "Y", "n": i},
                            concurrency=(Condition(query={"payload.book": "Y"}, limit=2),))
                  for i in range(3)]
        await storage.add(specs)
        claimed = await storage.claim("w1", ["test:a"], 10, 30)
        books = sorted(t.payload["book"] for t in claimed)
        assert books == ["X", "Y", "Y"]
        assert await storage.claim("w2", ["test:a"], 10, 30) == []
        x = next(t for t in claimed if t.payload["book"] == "X")
        await storage.finish("w1", [Completion(x.id, x.token or "", ok())])
        again = await storage.claim("w2", ["test:a"], 10, 30)
        assert [t.payload["book"] for t in again] == ["X"]

    async def test_condition_counts_unconditional_tasks(self, storage: Storage) -> None:
        await storage.add([make_spec(payload={"book": "Z"})])
        await storage.add([make_spec(payload={"book": "Z"},
                                     concurrency=(Condition({"payload.book": "Z"}, 1),))])
        claimed = await storage.claim("w1", ["test:a"], 10, 30)
        assert len(claimed) == 1 and not claimed[0].concurrency

    async def test_condition_scope_queued(self, storage: Storage) -> None:
        cond = Condition(query={"action": "test:b"}, limit=2, scope=(Status.QUEUED,))
        await storage.add([make_spec(action="test:b"), make_spec(action="test:b")])
        [gated] = await storage.add([make_spec(concurrency=(cond,))])
        assert await storage.claim("w1", ["test:a"], 5, 30) == []
        await storage.claim("w1", ["test:b"], 1, 30)
        claimed = await storage.claim("w1", ["test:a"], 5, 30)
        assert [t.id for t in claimed] == [gated.task.id]

    async def test_per_action_limit(self, storage: Storage, other_storage: Storage) -> None:
        await storage.add([make_spec(payload=i) for i in range(10)])
        await storage.add([make_spec(action="test:b", payload=i) for i in range(3)])
        limits = ClaimLimits({"test:a": 2})
        first = await storage.claim("w1", ["test:a", "test:b"], 10, 30, limits)
        assert sorted(t.action for t in first) == ["test:a", "test:a", "test:b", "test:b",
                                                    "test:b"]
        assert await other_storage.claim("w2", ["test:a"], 10, 30, limits) == []
        a = next(t for t in first if t.action == "test:a")
        await storage.finish("w1", [Completion(a.id, a.token or "", ok())])
        more = await other_storage.claim("w2", ["test:a"], 10, 30, limits)
        assert len(more) == 1

    # -- finish, fencing ---------------------------------------------------------

    async def test_finish_success(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage)
        progress = Progress(3, 3, "done")
        refused = await storage.finish("w1", [Completion(task.id, task.token or "",
                                                         ok({"r": [1, 2]}), progress)])
        assert refused == []
        done = await storage.get(task.id)
        assert done is not None and done.status is Status.SUCCEEDED
        assert done.result == {"r": [1, 2]} and done.finished_at is not None
        assert done.worker is None and done.token is None and done.lease_until is None
        assert done.progress == progress and done.version == task.version + 1

    async def test_finish_is_fenced(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage)
        refused = await storage.finish("w9", [Completion(task.id, "not-the-token", ok("bad"))])
        assert refused == [task.id]
        stored = await storage.get(task.id)
        assert stored is not None and stored.status is Status.RUNNING and stored.result is None
        await storage.finish("w1", [Completion(task.id, task.token or "", ok("good"))])
        late = await storage.finish("w1", [Completion(task.id, task.token or "", ok("again"))])
        assert late == [task.id]
        final = await storage.get(task.id)
        assert final is not None and final.result == "good"

    async def test_finish_retry_keeps_history(self, storage: Storage) -> None:
        await storage.add([make_spec(max_attempts=3, pickup_timeout=50.0)])
        task = await _claim_one(storage)
        err = ErrorInfo("ValueError", "boom", "Traceback...", attempt=1, at=time.time())
        retry_at = time.time() + 100
        await storage.finish("w1", [Completion(task.id, task.token or "",
                                               Transition(Status.QUEUED, run_at=retry_at,
                                                          error=err))])
        queued = await storage.get(task.id)
        assert queued is not None and queued.status is Status.QUEUED
        assert queued.run_at == pytest.approx(retry_at) and queued.attempts == 1
        assert queued.errors == (err,) and queued.error == err
        assert queued.finished_at is None and queued.token is None
        assert queued.pickup_deadline == pytest.approx(retry_at + 50.0)
        assert await storage.claim("w1", ["test:a"], 5, 30) == []

    async def test_finish_reschedule_refunds_attempt(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage)
        await storage.finish("w1", [Completion(task.id, task.token or "", Transition(
            Status.QUEUED, run_at=time.time() - 1, result={"polls": 1}, refund_attempt=True))])
        again = await storage.get(task.id)
        assert again is not None and again.status is Status.QUEUED and again.attempts == 0
        assert again.result == {"polls": 1}
        claimed = await _claim_one(storage)
        assert claimed.attempts == 1

    async def test_finish_many_in_one_call(self, storage: Storage) -> None:
        await storage.add([make_spec(payload=i) for i in range(50)])
        tasks = await storage.claim("w1", ["test:a"], 50, 30)
        completions = [Completion(t.id, t.token or "", ok(t.payload)) for t in tasks]
        completions.append(Completion(new_id(), "x", ok()))
        refused = await storage.finish("w1", completions)
        assert refused == [completions[-1].task_id]
        stats = await storage.stats()
        assert stats == {"test:a": {"succeeded": 50}}

    async def test_failed_is_terminal(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage)
        err = ErrorInfo("RuntimeError", "no", None, attempt=1)
        await storage.finish("w1", [Completion(task.id, task.token or "", Transition(
            Status.FAILED, error=err, reason="error"))])
        failed = await storage.get(task.id)
        assert failed is not None and failed.status is Status.FAILED
        assert failed.reason == "error" and failed.error == err and failed.errors == (err,)
        assert failed.finished_at is not None

    # -- heartbeats, leases, recovery ------------------------------------------

    async def test_heartbeat_extends_lease(self, storage: Storage) -> None:
        await storage.add([make_spec(), make_spec()])
        a, b = await storage.claim("w1", ["test:a"], 2, 1.0)
        reply = await storage.heartbeat("w1", [Lease(a.id, a.token or ""),
                                               Lease(b.id, "wrong")], 100.0)
        assert reply.lost == frozenset({b.id}) and dict(reply.abort_requested) == {}
        stored = await storage.get(a.id)
        assert stored is not None and stored.lease_until == pytest.approx(time.time() + 100,
                                                                             abs=5)

    async def test_heartbeat_reports_abort_requests(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage)
        await storage.abort(task.id, "user said so")
        reply = await storage.heartbeat("w1", [Lease(task.id, task.token or "")], 30)
        assert dict(reply.abort_requested) == {task.id: "user said so"}

    async def test_recover_requeues_expired(self, storage: Storage) -> None:
        await storage.add([make_spec(max_attempts=1)])
        task = await _claim_one(storage, lease=0.01)
        await asyncio.sleep(0.05)
        report = await storage.recover(max_rescues=3)
        assert report.requeued == (task.id,)
        back = await storage.get(task.id)
        assert back is not None and back.status is Status.QUEUED
        assert back.rescues == 1 and back.attempts == 0 and back.token is None
        assert back.errors and back.errors[-1].type == "WorkerLost"
        # the old holder is fenced out
        refused = await storage.finish("w1", [Completion(task.id, task.token or "", ok())])
        assert refused == [task.id]
        assert (await storage.recover(max_rescues=3)).total == 0

    async def test_recover_fails_after_max_rescues(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        for i in range(3):
            task = await _claim_one(storage, lease=0.01)
            await asyncio.sleep(0.03)
            report = await storage.recover(max_rescues=2)
            if i < 2:
                assert report.requeued == (task.id,)
            else:
                assert report.failed == (task.id,)
        final = await storage.get(task.id)
        assert final is not None and final.status is Status.FAILED
        assert final.reason == "worker_lost" and final.rescues == 2

    async def test_recover_aborts_when_requested(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage, lease=0.01)
        await storage.abort(task.id, "stop it")
        await asyncio.sleep(0.03)
        report = await storage.recover(max_rescues=3)
        assert report.aborted == (task.id,)
        final = await storage.get(task.id)
        assert final is not None and final.status is Status.ABORTED and final.reason == "stop it"

    async def test_release_refunds_attempt(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage)
        released = await storage.release("w1", [Lease(task.id, task.token or ""),
                                                Lease(new_id(), "x")])
        assert released == [task.id]
        back = await storage.get(task.id)
        assert back is not None and back.status is Status.QUEUED and back.attempts == 0
        assert back.rescues == 0 and back.token is None
        assert await storage.release("w1", [Lease(task.id, task.token or "")]) == []

    async def test_update_progress_is_fenced(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage)
        refused = await storage.update_progress([
            (Lease(task.id, task.token or ""), Progress(1, 4, "a quarter", {"k": 1})),
            (Lease(task.id, "wrong"), Progress(9, 9)),
        ])
        assert refused == [task.id]
        stored = await storage.get(task.id)
        assert stored is not None and stored.progress == Progress(1, 4, "a quarter", {"k": 1})
        assert stored.version == task.version + 1

    # -- control ------------------------------------------------------------------

    async def test_abort_queued(self, storage: Storage) -> None:
        [res] = await storage.add([make_spec()])
        task = await storage.abort(res.task.id, "not needed")
        assert task.status is Status.ABORTED and task.reason == "not needed"
        stored = await storage.get(res.task.id)
        assert stored is not None and stored.status is Status.ABORTED
        assert stored.finished_at is not None
        assert await storage.claim("w1", ["test:a"], 5, 30) == []

    async def test_abort_running_sets_request(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        claimed = await _claim_one(storage)
        task = await storage.abort(claimed.id, "cancel")
        assert task.status is Status.RUNNING and task.abort_requested == "cancel"
        again = await storage.abort(claimed.id, "twice")
        assert again.abort_requested == "cancel"

    async def test_an_abort_requested_wins_over_a_retry(self, storage: Storage,
                                                         other_storage: Storage) -> None:
        """A run that ends in a retry (or a reschedule) after an abort was requested
        is not queued again: the task ends aborted (event ``retry_aborted``) and
        ``finish`` reports the id as not stored as given. Endings are kept."""
        await storage.add([make_spec(max_attempts=5) for _ in range(4)])
        tasks = await storage.claim("w1", ["test:a"], 4, 30)
        retry, reschedule, success, untouched = tasks
        for t in (retry, reschedule, success):
            await other_storage.abort(t.id, "stop it")
        stream = storage.changes()
        seen: list[Change] = []

        async def collect() -> None:
            ends = {retry.id, reschedule.id, success.id, untouched.id}
            async for change in stream:
                seen.append(change)
                if ends <= {c.task_id for c in seen
                            if c.event in ("retry_aborted", "retrying", "succeeded")}:
                    return

        collector = asyncio.create_task(collect())
        await asyncio.sleep(0.05)
        err = ErrorInfo("ValueError", "boom", attempt=1, at=time.time())
        later = time.time() + 100
        completions = [
            Completion(retry.id, retry.token or "",
                       Transition(Status.QUEUED, run_at=later, error=err), Progress(1, 2)),
            Completion(reschedule.id, reschedule.token or "",
                       Transition(Status.QUEUED, run_at=later, refund_attempt=True)),
            Completion(success.id, success.token or "", ok("done")),
            Completion(untouched.id, untouched.token or "",
                       Transition(Status.QUEUED, run_at=later, error=err)),
        ]
        refused = await storage.finish("w1", completions)
        assert sorted(refused) == sorted([retry.id, reschedule.id])
        a = await storage.get(retry.id)
        assert a is not None and a.status is Status.ABORTED and a.reason == "stop it"
        assert a.error is not None and a.error.type == "Aborted"
        assert [e.type for e in a.errors] == ["ValueError", "Aborted"]
        assert a.finished_at is not None and a.attempts == 1 and a.token is None
        assert a.abort_requested is None and a.progress == Progress(1, 2)
        assert a.version == retry.version + 2  # the request, then the end
        b = await storage.get(reschedule.id)
        assert b is not None and b.status is Status.ABORTED and b.attempts == 1
        assert [e.type for e in b.errors] == ["Aborted"]
        c = await storage.get(success.id)
        assert c is not None and c.status is Status.SUCCEEDED and c.result == "done"
        d = await storage.get(untouched.id)
        assert d is not None and d.status is Status.QUEUED and d.run_at == pytest.approx(later)
        assert await storage.claim("w1", ["test:a"], 5, 30) == []
        async with asyncio.timeout(10):
            await collector
        events = {(c.task_id, c.event, c.status) for c in seen}
        assert (retry.id, "retry_aborted", Status.ABORTED) in events
        assert (reschedule.id, "retry_aborted", Status.ABORTED) in events
        assert (untouched.id, "retrying", Status.QUEUED) in events
        # a second finish of the same run is refused (fenced) and changes nothing
        assert await storage.finish("w1", completions[:1]) == [retry.id]
        again = await storage.get(retry.id)
        assert again is not None and again.version == a.version

    async def test_abort_finished_or_missing(self, storage: Storage) -> None:
        await storage.add([make_spec()])
        task = await _claim_one(storage)
        await storage.finish("w1", [Completion(task.id, task.token or "", ok())])
        with pytest.raises(InvalidTransition):
            await storage.abort(task.id, "late")
        with pytest.raises(TaskNotFound):
            await storage.abort(new_id(), "nobody")
        stored = await storage.get(task.id)
        assert stored is not None and stored.status is Status.SUCCEEDED

    async def test_prioritize(self, storage: Storage) -> None:
        [a] = await storage.add([make_spec(payload="a", priority=5)])
        [b] = await storage.add([make_spec(payload="b", priority=1)])
        moved = await storage.prioritize(a.task.id, -1)
        assert moved.priority == -1
        assert [t.payload for t in await storage.claim("w1", ["test:a"], 1, 30)] == ["a"]
        with pytest.raises(InvalidTransition):
            await storage.prioritize(a.task.id, 3)
        with pytest.raises(TaskNotFound):
            await storage.prioritize(new_id(), 3)
        assert (await storage.get(b.task.id)) is not None

    async def test_retry_failed_keeps_history(self, storage: Storage) -> None:
        await storage.add([make_spec(max_attempts=1)])
        task = await _claim_one(storage)
        err = ErrorInfo("E", "first", attempt=1)
        await storage.finish("w1", [Completion(task.id, task.token or "", Transition(
            Status.FAILED, error=err, reason="error"))])
        retried = await storage.retry(task.id)
        assert retried.status is Status.QUEUED and retried.errors == (err,)
        assert retried.error is None and retried.reason is None and retried.finished_at is None
        again = await _claim_one(storage)
        assert again.id == task.id and again.attempts == 2
        with pytest.raises(InvalidTransition):
            await storage.retry(task.id)
        with pytest.raises(TaskNotFound):
            await storage.retry(new_id())

    async def test_retry_refused_when_key_taken(self, storage: Storage) -> None:
        [first] = await storage.add([make_spec(unique_key="u")])
        await storage.abort(first.task.id, "x")
        [second] = await storage.add([make_spec(unique_key="u")])
        assert second.created
        with pytest.raises(InvalidTransition):
            await storage.retry(first.task.id)

    async def test_delete_only_finished(self, storage: Storage) -> None:
        [a] = await storage.add([make_spec()])
        [b] = await storage.add([make_spec()])
        await storage.abort(a.task.id, "x")
        await storage.append_logs([NewLog(a.task.id, LogLevel.INFO, "hi", time.time())])
        deleted = await storage.delete([a.task.id, b.task.id, new_id()])
        assert deleted == [a.task.id]
        assert await storage.get(a.task.id) is None
        assert await storage.read_logs(a.task.id) == []
        assert await storage.get(b.task.id) is not None

    # -- queries ------------------------------------------------------------------

    async def test_find_count_stats(self, storage: Storage) -> None:
        await storage.add([make_spec(payload={"n": i, "even": i % 2 == 0}, priority=i % 3,
                                     tags={"team": "a" if i < 6 else "b"}) for i in range(10)])
        await storage.add([make_spec(action="test:b", payload={"n": 100})])
        q = parse_query({"payload.even": True, "tags.team": "a"}, sort="-payload.n")
        assert [t.payload["n"] for t in await storage.find(q)] == [4, 2, 0]
        q = parse_query({"action": "test:a"}, sort=["priority", "payload.n"], limit=4, skip=1)
        assert [t.payload["n"] for t in await storage.find(q)] == [3, 6, 9, 1]
        assert await storage.count(parse_filter({"payload.n": {"$gte": 5}})) == 6
        assert await storage.count(parse_filter({"$or": [{"action": "test:b"},
                                                         {"payload.n": 0}]})) == 2
        assert await storage.stats() == {"test:a": {"queued": 10}, "test:b": {"queued": 1}}

    async def test_next_run_at(self, storage: Storage) -> None:
        assert await storage.next_run_at(["test:a"]) is None
        now = time.time()
        await storage.add([make_spec(run_at=now + 50), make_spec(run_at=now + 20),
                           make_spec(action="test:b", run_at=now + 1)])
        assert await storage.next_run_at(["test:a"]) == pytest.approx(now + 20)

    # -- logs ---------------------------------------------------------------------

    async def test_logs(self, storage: Storage) -> None:
        [res] = await storage.add([make_spec()])
        tid = res.task.id
        now = time.time()
        stored = await storage.append_logs([
            NewLog(tid, LogLevel.DEBUG, "d", now, None),
            NewLog(tid, LogLevel.INFO, "i", now, {"k": [1]}),
            NewLog(tid, LogLevel.WARNING, "w", now),
            NewLog(tid, LogLevel.ERROR, "e", now),
        ])
        seqs = [s for s in stored if s is not None]  # no token: every line is stored
        assert len(seqs) == 4 and seqs == sorted(seqs) and len(set(seqs)) == 4
        logs = await storage.read_logs(tid)
        assert [r.message for r in logs] == ["d", "i", "w", "e"]
        assert logs[1].data == {"k": [1]} and logs[1].level is LogLevel.INFO
        assert [r.seq for r in logs] == seqs
        info = await storage.read_logs(tid, max_level=LogLevel.INFO)
        assert [r.message for r in info] == ["i", "w", "e"]
        after = await storage.read_logs(tid, after_seq=seqs[1])
        assert [r.message for r in after] == ["w", "e"]
        assert [r.message for r in await storage.read_logs(tid, limit=1)] == ["d"]
        more = await storage.append_logs([NewLog(tid, LogLevel.INFO, "later", now)])
        assert more[0] is not None and more[0] > seqs[-1]

    async def test_log_lines_of_a_run_are_fenced(self, storage: Storage) -> None:
        """A line with a token is stored only while its task runs under that claim;
        one without (a note) always; the others of a batch are stored all the same."""
        [res] = await storage.add([make_spec()])
        tid = res.task.id
        now = time.time()
        # not running yet: a run's line has no claim to belong to
        assert await storage.append_logs([NewLog(tid, LogLevel.INFO, "early", now,
                                                 token="t")]) == [None]
        task = await _claim_one(storage)
        token = task.token or ""
        seqs = await storage.append_logs([
            NewLog(tid, LogLevel.INFO, "mine", now, token=token),
            NewLog(tid, LogLevel.INFO, "stale", now, token=token + "x"),
            NewLog(tid, LogLevel.INFO, "note", now),
        ])
        assert seqs[1] is None and seqs[0] is not None and seqs[2] is not None
        assert seqs[0] < seqs[2]
        await storage.finish("w1", [Completion(tid, token, ok())])
        late = await storage.append_logs([NewLog(tid, LogLevel.INFO, "late", now, token=token),
                                          NewLog(tid, LogLevel.INFO, "note 2", now)])
        assert late[0] is None and late[1] is not None and late[1] > seqs[2]
        logs = await storage.read_logs(tid)
        assert [(r.message, r.seq) for r in logs] == [
            ("mine", seqs[0]), ("note", seqs[2]), ("note 2", late[1])]

    # -- workers ------------------------------------------------------------------

    async def test_workers(self, storage: Storage) -> None:
        now = time.time()
        info = WorkerInfo(id="host:1:abc", host="host", pid=1, actions=("test:a",),
                          concurrency=4, started_at=now, last_seen=now)
        await storage.register_worker(info)
        [found] = await storage.list_workers()
        assert found.id == info.id and found.actions == ("test:a",) and found.concurrency == 4
        await asyncio.sleep(0.01)
        await storage.heartbeat(info.id, [], 30)
        [seen] = await storage.list_workers()
        assert seen.last_seen > now
        await storage.unregister_worker(info.id)
        assert await storage.list_workers() == []
        reply = await storage.heartbeat(info.id, [], 30)
        assert not reply.known  # a worker that was forgotten learns it

    async def test_forget_dead_workers(self, storage: Storage) -> None:
        now = time.time()
        alive = WorkerInfo(id="a", host="h", pid=1, actions=(), concurrency=1, started_at=now,
                           last_seen=now, info={"lease": 30})
        dead = WorkerInfo(id="d", host="h", pid=2, actions=(), concurrency=1, started_at=now,
                          last_seen=now - 121, info={"lease": 30})
        # not seen for 100 s: shown as not alive (after 90 s) for a while before it goes
        stale = WorkerInfo(id="g", host="h", pid=4, actions=(), concurrency=1, started_at=now,
                           last_seen=now - 100, info={"lease": 30})
        slow = WorkerInfo(id="s", host="h", pid=3, actions=(), concurrency=1, started_at=now,
                          last_seen=now - 121, info={"lease": 300})
        for info in (alive, dead, slow, stale):
            await storage.register_worker(info)
        assert await storage.forget_workers() == ["d"]
        assert sorted(w.id for w in await storage.list_workers()) == ["a", "g", "s"]

    # -- change feed --------------------------------------------------------------

    async def test_changes_in_order(self, storage: Storage, other_storage: Storage) -> None:
        stream = storage.changes()
        seen: list[Change] = []

        async def collect() -> None:
            async for change in stream:
                seen.append(change)
                if change.event == "succeeded":
                    return

        collector = asyncio.create_task(collect())
        await asyncio.sleep(0.05)
        [res] = await other_storage.add([make_spec()])
        task = await _claim_one(other_storage)
        await other_storage.finish("w1", [Completion(task.id, task.token or "", ok())])
        async with asyncio.timeout(10):
            await collector
        mine = [c for c in seen if c.task_id == res.task.id]
        assert [c.event for c in mine] == ["added", "started", "succeeded"]
        assert [c.version for c in mine] == [1, 2, 3]
        assert [c.status for c in mine] == [Status.QUEUED, Status.RUNNING, Status.SUCCEEDED]
        assert [c.seq for c in mine] == sorted(c.seq for c in mine)
        assert all(c.origin == other_storage.instance_id for c in mine)

    # -- retention ----------------------------------------------------------------

    async def test_prune(self, storage: Storage) -> None:
        [old] = await storage.add([make_spec()])
        [live] = await storage.add([make_spec()])
        await storage.abort(old.task.id, "x")
        assert await storage.prune(time.time() - 3600) == 0
        assert await storage.prune(time.time() + 1) == 1
        assert await storage.get(old.task.id) is None
        assert await storage.get(live.task.id) is not None
