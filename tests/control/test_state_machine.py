"""Racing transitions: a hypothesis state machine drives the storage API of each
backend with every kind of transition, stale tokens included, and checks after
every step that storage and a plain Python model of the lifecycle agree."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from conveyor.errors import InvalidTransition
from conveyor.model import (
    Backoff,
    ErrorInfo,
    Status,
    Task,
    TaskSpec,
    TimedOut,
    Transition,
    default_policy,
    new_id,
)
from conveyor.storage import Completion, Lease, Storage, open_storage

T = TypeVar("T")
MAX_RESCUES = 2
TERMINAL = {Status.SUCCEEDED, Status.FAILED, Status.ABORTED}
LONG_LEASE = 60.0
TINY_LEASE = 0.001
# the policy's backoff for timeouts: no delay, so a retried task is ready at once
NO_BACKOFF = Backoff(base=0.0, jitter=0.0)


@dataclass
class Expected:
    """What the model believes about one task."""

    status: Status
    priority: float
    run_at: float
    max_attempts: int
    attempts: int = 0
    rescues: int = 0
    errors: int = 0
    token: str | None = None
    old_tokens: list[str] = field(default_factory=list)
    abort_requested: str | None = None
    expiring: bool = False  # claimed with a tiny lease and no heartbeat since
    version: int = 1  # the last version seen
    final_version: int | None = None  # the version it ended with, while terminal

    def drop_token(self) -> None:
        if self.token is not None:
            self.old_tokens.append(self.token)
        self.token = None
        self.expiring = False
        self.abort_requested = None


class Transitions(RuleBasedStateMachine):
    """One example: its own storage object on its own event loop, and its own
    action name, so that examples sharing a database do not see each other."""

    url: str = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.storage: Storage = open_storage(self.url)
        self.run(self.storage.open())
        self.action = f"sm:{uuid.uuid4().hex[:10]}"
        self.model: dict[str, Expected] = {}

    def teardown(self) -> None:
        try:
            self.run(self.storage.close())
        finally:
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    # -- picking tasks ------------------------------------------------------------

    def ids(self, *statuses: Status) -> list[str]:
        return sorted(i for i, m in self.model.items() if not statuses or m.status in statuses)

    def pick(self, data: st.DataObject, *statuses: Status) -> str:
        return data.draw(st.sampled_from(self.ids(*statuses)))

    def get(self, task_id: str) -> Task:
        task = self.run(self.storage.get(task_id))
        assert task is not None
        return task

    def terminal(self, m: Expected, status: Status) -> None:
        m.status = status
        m.drop_token()

    def finish(self, task_id: str, transition: Transition) -> None:
        m = self.model[task_id]
        assert m.token is not None
        refused = self.run(self.storage.finish("w", [Completion(task_id, m.token, transition)]))
        if transition.error is not None:
            m.errors += 1
        if transition.status is Status.QUEUED and m.abort_requested is not None:
            # the abort wins over a retry or a reschedule: aborted, not stored as given
            assert refused == [task_id]
            m.errors += 1
            self.terminal(m, Status.ABORTED)
            return
        assert refused == []
        if transition.refund_attempt:
            m.attempts -= 1
        m.status = transition.status
        if transition.status is Status.QUEUED:
            assert transition.run_at is not None
            m.run_at = transition.run_at
        m.drop_token()

    # -- rules --------------------------------------------------------------------

    @rule(n=st.integers(1, 3), priority=st.sampled_from([-1.0, 0.0, 2.5]),
          max_attempts=st.integers(1, 3), ready=st.booleans())
    def add(self, n: int, priority: float, max_attempts: int, ready: bool) -> None:
        now = time.time()
        run_at = now - 1 if ready else now + 3600
        specs = [TaskSpec(id=new_id(), action=self.action, payload={"k": i}, priority=priority,
                          run_at=run_at, max_attempts=max_attempts) for i in range(n)]
        results = self.run(self.storage.add(specs))
        assert [r.created for r in results] == [True] * n
        for spec, res in zip(specs, results, strict=True):
            assert res.task.id == spec.id and res.task.status is Status.QUEUED
            self.model[spec.id] = Expected(Status.QUEUED, priority, run_at, max_attempts)

    @rule(limit=st.integers(1, 4), tiny=st.booleans(), worker=st.sampled_from(["w1", "w2"]))
    def claim(self, limit: int, tiny: bool, worker: str) -> None:
        before = time.time()
        ready = sorted(
            (i for i in self.ids(Status.QUEUED) if self.model[i].run_at <= before),
            key=lambda i: (self.model[i].priority, self.model[i].run_at, i))
        claimed = self.run(self.storage.claim(worker, [self.action], limit,
                                              TINY_LEASE if tiny else LONG_LEASE))
        assert [t.id for t in claimed] == ready[:limit]
        for task in claimed:
            m = self.model[task.id]
            assert task.status is Status.RUNNING and task.worker == worker
            assert task.token and task.token not in m.old_tokens
            assert task.attempts == m.attempts + 1
            m.status = Status.RUNNING
            m.attempts += 1
            m.token = task.token
            m.expiring = tiny

    @precondition(lambda self: self.ids(Status.RUNNING))
    @rule(data=st.data())
    def succeed(self, data: st.DataObject) -> None:
        task_id = self.pick(data, Status.RUNNING)
        self.finish(task_id, Transition(Status.SUCCEEDED, result={"ok": task_id}))

    @precondition(lambda self: self.ids(Status.RUNNING))
    @rule(data=st.data(), retrying=st.booleans(), ready=st.booleans())
    def fail(self, data: st.DataObject, retrying: bool, ready: bool) -> None:
        task_id = self.pick(data, Status.RUNNING)
        now = time.time()
        error = ErrorInfo("ValueError", "boom", "Traceback ...",
                          attempt=self.model[task_id].attempts, at=now)
        if retrying:
            transition = Transition(Status.QUEUED, run_at=now if ready else now + 3600,
                                    error=error)
        else:
            transition = Transition(Status.FAILED, error=error, reason="error")
        self.finish(task_id, transition)

    @precondition(lambda self: self.ids(Status.RUNNING))
    @rule(data=st.data())
    def time_out(self, data: st.DataObject) -> None:
        task_id = self.pick(data, Status.RUNNING)
        m = self.model[task_id]
        transition = default_policy(self.get(task_id), TimedOut(0.5), default_backoff=NO_BACKOFF)
        if m.attempts < m.max_attempts:
            assert transition.status is Status.QUEUED
        else:
            assert transition.status is Status.ABORTED and transition.reason == "timeout"
        self.finish(task_id, transition)

    @precondition(lambda self: self.ids(Status.RUNNING))
    @rule(data=st.data())
    def reschedule(self, data: st.DataObject) -> None:
        task_id = self.pick(data, Status.RUNNING)
        self.finish(task_id, Transition(Status.QUEUED, run_at=time.time(), refund_attempt=True))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        task_id = self.pick(data)
        m = self.model[task_id]
        before = self.get(task_id)
        if m.status in TERMINAL:
            try:
                self.run(self.storage.abort(task_id, "late"))
            except InvalidTransition:
                pass
            else:
                raise AssertionError(f"abort of a {m.status.value} task was accepted")
            assert self.get(task_id) == before
            return
        task = self.run(self.storage.abort(task_id, f"abort-{len(m.old_tokens)}"))
        if m.status is Status.QUEUED:
            assert task.status is Status.ABORTED
            m.errors += 1
            self.terminal(m, Status.ABORTED)
        else:
            assert task.status is Status.RUNNING and task.token == m.token
            if m.abort_requested is None:
                m.abort_requested = f"abort-{len(m.old_tokens)}"
            assert task.abort_requested == m.abort_requested

    @precondition(lambda self: self.model)
    @rule(data=st.data(), ready=st.booleans())
    def retry(self, data: st.DataObject, ready: bool) -> None:
        task_id = self.pick(data)
        m = self.model[task_id]
        run_at = time.time() if ready else time.time() + 3600
        if m.status in (Status.FAILED, Status.ABORTED):
            task = self.run(self.storage.retry(task_id, run_at))
            assert task.status is Status.QUEUED and task.attempts == m.attempts
            assert task.rescues == 0  # the new run has max_rescues of its own
            m.status = Status.QUEUED
            m.rescues = 0
            m.run_at = run_at
            m.final_version = None
            return
        before = self.get(task_id)
        try:
            self.run(self.storage.retry(task_id, run_at))
        except InvalidTransition:
            pass
        else:
            raise AssertionError(f"retry of a {m.status.value} task was accepted")
        assert self.get(task_id) == before

    @precondition(lambda self: self.model)
    @rule(data=st.data(), priority=st.sampled_from([-3.0, 0.0, 1.0, 7.0]))
    def prioritize(self, data: st.DataObject, priority: float) -> None:
        task_id = self.pick(data)
        m = self.model[task_id]
        if m.status is Status.QUEUED:
            task = self.run(self.storage.prioritize(task_id, priority))
            assert task.priority == priority
            m.priority = priority
            return
        before = self.get(task_id)
        try:
            self.run(self.storage.prioritize(task_id, priority))
        except InvalidTransition:
            pass
        else:
            raise AssertionError(f"prioritize of a {m.status.value} task was accepted")
        assert self.get(task_id) == before

    @precondition(lambda self: self.ids(Status.RUNNING))
    @rule(data=st.data(), with_stale=st.booleans())
    def heartbeat(self, data: st.DataObject, with_stale: bool) -> None:
        running = self.ids(Status.RUNNING)
        held = data.draw(st.lists(st.sampled_from(running), min_size=1, unique=True))
        leases = [Lease(i, self.model[i].token or "") for i in held]
        stale = ([i for i in self.ids() if self.model[i].old_tokens and i not in held]
                 if with_stale else [])
        leases += [Lease(i, self.model[i].old_tokens[-1]) for i in stale]
        reply = self.run(self.storage.heartbeat("w", leases, LONG_LEASE))
        assert reply.lost == frozenset(stale)
        assert dict(reply.abort_requested) == {
            i: self.model[i].abort_requested for i in held if self.model[i].abort_requested}
        for i in held:
            self.model[i].expiring = False

    @rule()
    def rescue(self) -> None:
        """Let tiny leases run out, then recover: rescued, lost, or aborted if asked."""
        time.sleep(0.004)
        report = self.run(self.storage.recover(MAX_RESCUES))
        mine = set(self.model)
        requeued, failed, aborted = set(), set(), set()
        for i in self.ids(Status.RUNNING):
            m = self.model[i]
            if not m.expiring:
                continue
            m.errors += 1
            if m.abort_requested is not None:
                aborted.add(i)
                self.terminal(m, Status.ABORTED)
            elif m.rescues >= MAX_RESCUES:
                failed.add(i)
                self.terminal(m, Status.FAILED)
            else:
                requeued.add(i)
                m.rescues += 1
                m.attempts = max(0, m.attempts - 1)
                m.status = Status.QUEUED
                m.drop_token()
        assert set(report.requeued) & mine == requeued
        assert set(report.failed) & mine == failed
        assert set(report.aborted) & mine == aborted
        assert not set(report.expired) & mine

    @precondition(lambda self: self.ids(Status.RUNNING))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        task_id = self.pick(data, Status.RUNNING)
        m = self.model[task_id]
        released = self.run(self.storage.release("w", [Lease(task_id, m.token or "")]))
        assert released == [task_id]
        if m.abort_requested is not None:
            m.errors += 1
            self.terminal(m, Status.ABORTED)
        else:
            m.attempts = max(0, m.attempts - 1)
            m.status = Status.QUEUED
            m.drop_token()

    @precondition(lambda self: any(m.old_tokens for m in self.model.values()))
    @rule(data=st.data(), success=st.booleans())
    def stale_finish(self, data: st.DataObject, success: bool) -> None:
        """A worker that lost its lease tries to finish: refused, nothing changes."""
        task_id = data.draw(st.sampled_from([i for i in self.ids() if self.model[i].old_tokens]))
        token = data.draw(st.sampled_from(self.model[task_id].old_tokens))
        before = self.get(task_id)
        transition = (Transition(Status.SUCCEEDED, result="stale") if success else
                      Transition(Status.FAILED, error=ErrorInfo("E", "stale"), reason="error"))
        refused = self.run(self.storage.finish("w", [Completion(task_id, token, transition)]))
        assert refused == [task_id]
        assert self.run(self.storage.release("w", [Lease(task_id, token)])) == []
        assert self.get(task_id) == before

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def storage_agrees_with_the_model(self) -> None:
        if not self.model:
            return
        tasks = {t.id: t for t in self.run(self.storage.get_many(list(self.model)))}
        assert set(tasks) == set(self.model)
        for task_id, m in self.model.items():
            t = tasks[task_id]
            assert isinstance(t.status, Status) and t.status in set(Status)
            assert t.status is m.status, (task_id, t.status, m)
            assert t.attempts == m.attempts >= 0, (task_id, t.attempts, m)
            assert t.rescues == m.rescues and len(t.errors) == m.errors, (task_id, t, m)
            assert t.priority == m.priority
            assert t.version >= m.version, "a version went backwards"
            m.version = t.version
            if t.status is Status.RUNNING:
                assert t.token == m.token and t.token is not None
                assert t.worker is not None and t.lease_until is not None
                assert t.abort_requested == m.abort_requested
            else:
                assert t.token is None and t.lease_until is None
            if t.status is Status.QUEUED:
                assert t.abort_requested is None
            if t.status is Status.QUEUED:
                assert t.run_at == m.run_at and t.finished_at is None
            if t.status in TERMINAL:
                assert t.finished_at is not None
                # a task that ended never changes again (only retry reopens it)
                if m.final_version is None:
                    m.final_version = t.version
                assert t.version == m.final_version, (task_id, "changed after it ended")


def run_machine(url: str, examples: int) -> None:
    machine = type("Machine", (Transitions,), {"url": url})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))


def test_racing_transitions(local_url: str) -> None:
    started = time.monotonic()
    run_machine(local_url, examples=150 if local_url.startswith("memory") else 60)
    print(f"\nstate machine on {local_url.split(':')[0]}: {time.monotonic() - started:.1f}s")
