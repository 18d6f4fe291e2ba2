"""Queue depth per action, throughput, workers."""

from __future__ import annotations

import re

from playwright.async_api import expect

from .conftest import Dash


async def test_queue_depth_throughput_and_workers(dash: Dash) -> None:
    for to in ("ann", "bob", "cid"):
        await dash.app.add("mail:send", {"to": to})
    await dash.open()
    page = dash.page
    mail = page.locator('[data-testid="queue-row"][data-action="mail:send"]')
    await expect(mail.get_by_test_id("queue-queued")).to_have_text("3")
    await expect(mail.get_by_test_id("queue-running")).to_have_text("0")
    await expect(page.get_by_test_id("throughput-total")).to_have_text("0")

    # the stats were read once: tasks finishing now count as throughput
    quick = [await dash.app.add("job:quick", i) for i in range(4)]
    for task in quick:
        await dash.app.wait(task.id, timeout=10)
    await dash.app.abort((await dash.app.add("mail:send", {"to": "dan"})).id)
    jobs = page.locator('[data-testid="queue-row"][data-action="job:quick"]')
    await expect(jobs.get_by_test_id("queue-succeeded")).to_have_text("4")
    await expect(mail.get_by_test_id("queue-queued")).to_have_text("3")
    await expect(mail.get_by_test_id("queue-aborted")).to_have_text("1")
    await expect(page.get_by_test_id("throughput-total")).to_have_text("5")
    await expect(page.get_by_test_id("throughput-line")).to_have_attribute(
        "points", re.compile(r"^[\d.]+,[\d.]+( [\d.]+,[\d.]+)+$"))

    # the hub's own worker, with its actions and a recent heartbeat
    worker = page.get_by_test_id("worker-row")
    await expect(worker).to_have_count(1)
    await expect(worker.get_by_test_id("worker-actions")).to_have_text(
        "job:fail, job:hang, job:quick, job:steps, job:stubborn")
    await expect(worker.get_by_test_id("worker-alive")).to_have_text("yes")
    await expect(worker.get_by_test_id("worker-last-seen")).to_have_text(
        re.compile(r"^\d s ago$"))
    await expect(worker.get_by_test_id("worker-running")).to_have_text(re.compile(r"^0 / \d+$"))
    # a running task shows in the worker's count and in the queue's running column
    await dash.app.add("job:steps")
    steps = page.locator('[data-testid="queue-row"][data-action="job:steps"]')
    await expect(steps.get_by_test_id("queue-running")).to_have_text("1")
    await expect(worker.get_by_test_id("worker-running")).to_have_text(re.compile(r"^1 / \d+$"))
