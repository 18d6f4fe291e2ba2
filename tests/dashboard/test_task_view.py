"""The task view: live progress and logs, result, error and attempts, the buttons."""

from __future__ import annotations

import asyncio
from typing import Any

from playwright.async_api import expect

from .conftest import Dash


async def test_progress_and_logs_follow_a_running_task(dash: Dash) -> None:
    task = await dash.app.add("job:steps", {"n": 3})
    await dash.open()
    page = dash.page
    await dash.row(task.id).click()
    await expect(page.get_by_test_id("task-view")).to_be_visible()
    await expect(page.get_by_test_id("tasks-panel")).to_be_hidden()
    await expect(page.get_by_test_id("task-id")).to_have_text(task.id)
    await expect(page.get_by_test_id("task-status")).to_have_text("running")
    await expect(page.get_by_test_id("task-payload")).to_have_text('{\n  "n": 3\n}')
    await expect(page.get_by_test_id("task-progress-text")).to_have_text("1 / 3 first")
    await expect(page.get_by_test_id("task-progress")).to_have_attribute("value", "1")
    logs = page.get_by_test_id("log-message")
    await expect(logs).to_have_text(["step one"])
    await expect(page.get_by_test_id("task-result-box")).to_be_hidden()
    await expect(page.get_by_test_id("task-retry")).to_be_hidden()

    dash.gates["one"].set()
    await expect(page.get_by_test_id("task-progress-text")).to_have_text("2 / 3 second")
    await expect(logs).to_have_text(["step one", "step two"])
    await expect(page.get_by_test_id("task-status")).to_have_text("running")

    dash.gates["two"].set()
    await expect(page.get_by_test_id("task-status")).to_have_text("succeeded")
    await expect(page.get_by_test_id("task-result")).to_have_text('{\n  "done": true\n}')
    await expect(page.get_by_test_id("task-abort")).to_be_hidden()
    # opened again (from the URL), a finished task replays its log
    await page.reload()
    await expect(page.get_by_test_id("task-status")).to_have_text("succeeded")
    await expect(logs).to_have_text(["step one", "step two"])
    await page.get_by_test_id("task-close").click()
    await expect(dash.row(task.id)).to_be_visible()


async def test_abort_button_ends_a_running_task(dash: Dash) -> None:
    task = await dash.app.add("job:hang")
    await dash.open()
    page = dash.page
    await dash.row(task.id).click()
    await expect(page.get_by_test_id("log-message")).to_have_text(["hanging"])
    await expect(page.get_by_test_id("task-status")).to_have_text("running")
    await page.get_by_test_id("task-abort").click()
    await expect(page.get_by_test_id("task-status")).to_have_text("aborted")
    await expect(page.get_by_test_id("task-reason")).to_have_text("aborted")
    assert (await dash.app.get(task.id)).status == "aborted"
    await expect(page.get_by_test_id("task-abort")).to_be_hidden()
    await expect(page.get_by_test_id("task-retry")).to_be_visible()


async def test_errors_retry_and_prioritize(dash: Dash) -> None:
    failed = await dash.app.add("job:fail", max_attempts=1)
    queued = await dash.app.add("mail:send", {"to": "ann"})
    await dash.open()
    page = dash.page
    await dash.row(failed.id).click()
    await expect(page.get_by_test_id("task-status")).to_have_text("failed")
    await expect(page.get_by_test_id("task-error-type")).to_have_text("RuntimeError")
    await expect(page.get_by_test_id("task-error-message")).to_have_text("boom")
    await expect(page.get_by_test_id("task-error-traceback")).to_contain_text("RuntimeError")
    items = page.get_by_test_id("task-errors-item")
    await expect(items).to_have_count(1)

    await page.get_by_test_id("task-retry").click()  # it fails again: a second attempt
    await expect(items).to_have_count(2)
    await expect(items.nth(1)).to_contain_text("attempt 2")
    await expect(page.get_by_test_id("task-status")).to_have_text("failed")
    # a retry gives one more attempt than max_attempts
    await expect(page.get_by_test_id("task-attempts")).to_have_text("2 / 1")

    await page.get_by_test_id("task-close").click()
    await dash.row(queued.id).click()
    await expect(page.get_by_test_id("task-status")).to_have_text("queued")
    await expect(page.get_by_test_id("task-retry")).to_be_hidden()
    await page.get_by_test_id("task-priority-input").fill("-5")
    await page.get_by_test_id("task-prioritize").click()
    await expect(page.get_by_test_id("task-priority")).to_have_text("-5")
    assert (await dash.app.get(queued.id)).priority == -5

    # an error from the hub is shown as its text
    await dash.app.abort(queued.id)
    await expect(page.get_by_test_id("task-status")).to_have_text("aborted")
    await page.get_by_test_id("task-retry").click()
    await expect(page.get_by_test_id("task-status")).to_have_text("queued")
    await dash.app.abort(queued.id)
    await expect(page.get_by_test_id("task-status")).to_have_text("aborted")
    await page.evaluate("document.querySelector('[data-testid=task-abort]').hidden = false")
    await page.get_by_test_id("task-abort").click()
    await expect(page.get_by_test_id("task-action-error")).to_contain_text("abort: ")
    await expect(page.get_by_test_id("task-action-error")).to_contain_text("aborted")


async def test_an_actions_late_answer_does_not_take_over_another_tasks_view(
        dash: Dash) -> None:
    """Retry on task A, then task B opened before the hub answers: the answer (held
    back here) is not shown, and B stays in the view with B's buttons."""
    a = await dash.app.add("job:fail", {"who": "A"}, max_attempts=1)
    b = await dash.app.add("mail:send", {"who": "B"})
    await dash.app.wait_task(a.id, timeout=10)
    release = asyncio.Event()

    async def held(route: Any) -> None:
        await release.wait()
        await route.continue_()

    page = dash.page
    await page.route("**/retry", held)
    await dash.open()
    await dash.row(a.id).click()
    await expect(page.get_by_test_id("task-status")).to_have_text("failed")
    async with page.expect_response("**/retry") as answer:
        await page.get_by_test_id("task-retry").click()
        await page.evaluate(f"location.hash = '#/tasks/{b.id}'")
        await expect(page.get_by_test_id("task-id")).to_have_text(b.id)
        await expect(page.get_by_test_id("task-status")).to_have_text("queued")
        release.set()
    assert (await answer.value).status == 200
    retried = await dash.app.wait_task(a.id, timeout=10)  # it ran (and failed) again
    assert retried.attempts == 2
    await page.wait_for_timeout(300)  # a negative check: nothing to wait for
    await expect(page.get_by_test_id("task-id")).to_have_text(b.id)
    await expect(page.get_by_test_id("task-payload")).to_have_text('{\n  "who": "B"\n}')
    await expect(page.get_by_test_id("task-prioritize-form")).to_be_visible()
    await expect(page.get_by_test_id("task-action-error")).to_be_hidden()


async def test_an_abort_requested_elsewhere_hides_the_abort_button(dash: Dash) -> None:
    """The view of a running task hides Abort once an abort is requested, also one
    requested elsewhere (here by the app; the handler ignores it, so the task
    stays running)."""
    task = await dash.app.add("job:stubborn")
    await dash.open()
    page = dash.page
    await dash.row(task.id).click()
    try:
        await expect(page.get_by_test_id("log-message")).to_have_text(["stubborn"])
        await expect(page.get_by_test_id("task-abort")).to_be_visible()
        await dash.app.abort(task.id, "from elsewhere")
        await expect(page.get_by_test_id("task-reason")).to_have_text(
            "abort requested: from elsewhere")
        await expect(page.get_by_test_id("task-abort")).to_be_hidden()
        await expect(page.get_by_test_id("task-status")).to_have_text("running")
    finally:
        dash.gates.stubborn.set()
    done = await dash.app.wait_task(task.id, timeout=10)
    assert (done.status, done.reason) == ("aborted", "from elsewhere")


async def test_a_task_opened_after_another_shows_nothing_of_the_first(dash: Dash) -> None:
    """The view kept the previous task's error, attempts and Retry button when the next
    address named a task that does not exist; a malformed address threw."""
    failed = await dash.app.add("job:fail", max_attempts=1)
    await dash.app.wait_task(failed.id, timeout=10)
    await dash.open()
    page = dash.page
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await dash.row(failed.id).click()
    await expect(page.get_by_test_id("task-error")).to_be_visible()
    await expect(page.get_by_test_id("task-errors-box")).to_be_visible()
    await expect(page.get_by_test_id("task-retry")).to_be_visible()

    await page.evaluate("location.hash = '#/tasks/no-such-task'")
    await expect(page.get_by_test_id("task-id")).to_have_text("no-such-task")
    await expect(page.get_by_test_id("task-action-error")).to_contain_text("no-such-task")
    for box in ("task-error", "task-errors-box", "task-retry", "task-result-box"):
        await expect(page.get_by_test_id(box)).to_be_hidden()
    await expect(page.get_by_test_id("task-status")).to_have_text("")

    await page.evaluate("location.hash = '#/tasks/%E0%A4%A'")
    await expect(page.get_by_test_id("tasks-panel")).to_be_visible()
    await expect(page.get_by_test_id("notice")).to_have_text("that address names no task")
    assert errors == []


async def test_progress_without_a_current_value_reads_as_a_dash(dash: Dash) -> None:
    from conveyor.model import Progress
    from conveyor.storage import Lease

    task = await dash.app.add("mail:send")  # no handler: claimed here, by hand
    [claimed] = await dash.app.storage.claim("by-hand", ["mail:send"], 1, 30.0)
    assert claimed.id == task.id and claimed.token
    await dash.app.storage.update_progress([(Lease(task.id, claimed.token),
                                             Progress(None, 5, "waiting"))])
    await dash.open()
    await expect(dash.row(task.id)).to_contain_text("- / 5 waiting")
    await dash.row(task.id).click()
    await expect(dash.page.get_by_test_id("task-progress-text")).to_have_text("- / 5 waiting")


async def test_a_task_live_again_after_a_refused_action_is_followed(dash: Dash) -> None:
    """The view's watch ended with the task (aborted); the task was retried elsewhere;
    Retry here is refused (409): the view shows the task as it is now AND follows it
    again (it stayed frozen at that state while the task went on)."""
    task = await dash.app.add("mail:send", {"to": "ann"})  # no handler: stays queued
    await dash.open()
    page = dash.page
    status = page.get_by_test_id("task-status")
    await dash.row(task.id).click()
    await expect(status).to_have_text("queued")
    await dash.app.abort(task.id)
    await expect(status).to_have_text("aborted")  # the end of the view's watch
    await dash.app.retry(task.id)  # elsewhere: the task is queued again
    await page.evaluate("document.querySelector('[data-testid=task-retry]').hidden = false")
    await page.get_by_test_id("task-retry").click()
    await expect(page.get_by_test_id("task-action-error")).to_contain_text("retry: ")
    await expect(status).to_have_text("queued")
    await dash.app.abort(task.id, "again")  # followed: the view sees it end again
    await expect(status).to_have_text("aborted")
    await expect(page.get_by_test_id("task-reason")).to_contain_text("again")


async def test_long_values_wrap_and_an_ended_task_has_a_still_bar(dash: Dash) -> None:
    """A 200-character action name (the longest allowed) and a progress message of
    100,000 characters without a space wrap: the page is no wider than the window
    (the table was 2,139 px wide in 1,280, the view millions). A task that ended
    without a measured progress shows a still bar, not the busy one."""
    from conveyor.model import Progress
    from conveyor.storage import Lease

    page = dash.page
    await page.set_viewport_size({"width": 1280, "height": 720})
    action = "a" * 200
    task = await dash.app.add(action)  # no handler: claimed here, by hand
    [claimed] = await dash.app.storage.claim("by-hand", [action], 1, 30.0)
    assert claimed.token
    await dash.app.storage.update_progress([(Lease(task.id, claimed.token),
                                             Progress(1, 2, "m" * 100_000))])
    done = await dash.app.add("job:quick", 1)
    await dash.app.wait(done.id, timeout=10)
    fits = "document.documentElement.scrollWidth <= window.innerWidth"
    await dash.open()
    await expect(dash.row(task.id)).to_be_visible()
    assert await page.evaluate(fits)
    await dash.row(task.id).click()
    await expect(page.get_by_test_id("task-action")).to_have_text(action)
    await expect(page.get_by_test_id("task-progress-text")).to_contain_text("mmmm")
    assert await page.evaluate(fits)
    await page.get_by_test_id("task-close").click()
    await dash.row(done.id).click()
    await expect(page.get_by_test_id("task-status")).to_have_text("succeeded")
    bar = page.get_by_test_id("task-progress")
    assert await bar.evaluate("b => b.hasAttribute('value') && b.value === b.max")


async def test_the_view_follows_changes_made_elsewhere(dash: Dash) -> None:
    """A priority set by another client showed in the table but not in the open
    view (a watch has no message for it)."""
    task = await dash.app.add("mail:send", {"n": 1})  # no handler: it stays queued
    await dash.open()
    page = dash.page
    await dash.row(task.id).click()
    shown = page.get_by_test_id("task-priority")
    await expect(shown).to_have_text("0")
    await dash.app.prioritize(task.id, 9)
    await expect(shown).to_have_text("9")
    await dash.app.prioritize(task.id, -3)
    await expect(shown).to_have_text("-3")
    await expect(page.get_by_test_id("task-status")).to_have_text("queued")
    await dash.app.abort(task.id, "not now")
    await expect(page.get_by_test_id("task-status")).to_have_text("aborted")


async def test_a_delayed_task_shows_when_it_runs(dash: Dash) -> None:
    later = await dash.app.add("job:quick", delay=3600)
    now = await dash.app.add("job:hang")
    await dash.open()
    page = dash.page
    status = dash.row(later.id).get_by_test_id("cell-status")
    await expect(status).to_have_text("queued")
    shown = await page.evaluate(
        "t => new Date(t * 1000).toLocaleString()", later.run_at)
    await expect(status).to_have_attribute("title", f"runs at {shown}")
    await expect(dash.row(now.id).get_by_test_id("cell-status")).to_have_text("running")
    await expect(dash.row(now.id).get_by_test_id("cell-status")).not_to_have_attribute(
        "title", f"runs at {shown}")
    await dash.row(later.id).click()
    await expect(page.get_by_test_id("task-run-at")).to_have_text(shown)
    await page.get_by_test_id("task-close").click()
    await dash.row(now.id).click()
    await expect(page.get_by_test_id("task-status")).to_have_text("running")
    await expect(page.get_by_test_id("task-run-at")).to_have_text("")  # not waiting


async def test_a_child_task_links_to_its_parent(dash: Dash) -> None:
    parent = await dash.app.add("job:hang")
    child = await dash.app.add("job:quick", {"n": 1}, parent_id=parent.id)
    await dash.open()
    page = dash.page
    await page.goto(f"{dash.hub.url}/#/tasks/{child.id}")
    await expect(page.get_by_test_id("task-id")).to_have_text(child.id)
    link = page.get_by_test_id("task-parent-link")
    await expect(link).to_have_text(parent.id)
    await link.click()
    await expect(page.get_by_test_id("task-id")).to_have_text(parent.id)
    await expect(page.get_by_test_id("task-parent")).to_have_text("")  # none of its own
