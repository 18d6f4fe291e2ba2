"""The task view: live progress and logs, result, error and attempts, the buttons."""

from __future__ import annotations

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
