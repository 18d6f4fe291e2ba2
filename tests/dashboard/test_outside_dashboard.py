"""Outside-in tests of the dashboard, written from docs/dashboard.md: the headers of every
file, the key's life in the tab, the lockout message, the table's window and filters,
changes made by another process, the task view's fields and buttons, the workers panel,
and reconnecting after the hub restarts.

Not repeated here: what tests/dashboard/test_*.py already check.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, expect

from conveyor import Conveyor
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore
from conveyor.storage import WorkerInfo

from ..cli._support import clean_env
from ..hub.conftest import free_port, running_hub
from .conftest import Dash, Gates, dashboard_app, sign_in

FILES = ("/", "/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css")
CSP_PARTS = ("default-src 'none'", "script-src 'self'", "style-src 'self'",
             "connect-src 'self'", "frame-ancestors 'none'")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in another process (another writer on the hub's database)."""
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], capture_output=True,
                          text=True, env=clean_env(), timeout=60, check=True)


# -- security --------------------------------------------------------------------------------


async def test_every_file_carries_the_documented_headers_and_no_inline_code(dash: Dash) -> None:
    async with httpx.AsyncClient(base_url=dash.hub.url) as http:
        for path in FILES:
            r = await http.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            for part in CSP_PARTS:
                assert part in csp, (path, part, csp)
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
            assert r.headers["x-frame-options"] == "DENY", path
            assert r.headers["referrer-policy"] == "no-referrer", path
            assert r.headers["x-content-type-options"] == "nosniff", path
        page = (await http.get("/")).text
        # no inline script, no inline style, no handler attribute, nothing from elsewhere
        assert re.findall(r"<script[^>]*>", page) == [
            '<script src="dashboard/static/dashboard.js" defer>']  # relative: a prefix works
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", page)
        assert not re.search(r"(src|href)=\"(https?:)?//", page)
        # the dashboard is not part of the REST API
        spec = (await http.get("/openapi.json",
                               headers={"Authorization": f"Bearer {dash.admin}"})).json()
        assert "/" not in spec["paths"]
        assert not any(p.startswith("/dashboard") for p in spec["paths"])


async def test_use_another_key_forgets_it_at_once_and_a_new_tab_asks_again(dash: Dash) -> None:
    await dash.open()
    page = dash.page
    assert await page.evaluate("sessionStorage.length") == 1
    # another tab of the same browser does not share the key
    other = await page.context.new_page()
    await other.goto(dash.hub.url + "/")
    await expect(other.get_by_test_id("key-form")).to_be_visible()
    await expect(other.get_by_test_id("main")).to_be_hidden()
    await other.close()

    await page.get_by_test_id("forget-key").click()
    await expect(page.get_by_test_id("key-form")).to_be_visible()
    await expect(page.get_by_test_id("main")).to_be_hidden()
    await expect(page.get_by_test_id("connection")).to_have_text("not connected")
    assert await page.evaluate("sessionStorage.length") == 0
    await page.reload()
    await expect(page.get_by_test_id("key-form")).to_be_visible()


async def test_five_failed_logins_lock_the_address_out_and_the_page_says_so(dash: Dash) -> None:
    async with httpx.AsyncClient(base_url=dash.hub.url) as http:
        for _ in range(5):
            r = await http.get("/api/v1/stats",
                               headers={"Authorization": "Bearer cvk_000000000000_wrong"})
            assert r.status_code == 401
        assert (await http.get("/api/v1/stats",
                               headers={"Authorization": f"Bearer {dash.admin}"})
                ).status_code == 429
    page = dash.page
    await page.goto(dash.hub.url + "/")
    await expect(page.get_by_test_id("notice")).to_contain_text("Too many failed logins")
    # even the admin key is refused while the address is locked out
    await sign_in(page, dash.admin)
    await expect(page.get_by_test_id("notice")).to_contain_text("Too many failed logins")
    await expect(page.get_by_test_id("key-form")).to_be_visible()
    await expect(page.get_by_test_id("main")).to_be_hidden()


# -- the task table ------------------------------------------------------------------------------


async def test_the_table_holds_the_newest_100_tasks(dash: Dash) -> None:
    tasks = await dash.app.add_many([("mail:send", {"n": i}) for i in range(105)])
    await dash.open()
    rows = dash.page.get_by_test_id("task-row")
    await expect(rows).to_have_count(100)
    await expect(dash.page.get_by_test_id("task-count")).to_have_text(
        "100 tasks, newest first (the first 100)")
    newest = sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True)
    await expect(rows.first).to_have_attribute("data-task-id", newest[0].id)
    for old in newest[100:]:
        await expect(dash.row(old.id)).to_have_count(0)
    # a new task enters at the top, the oldest shown one leaves
    fresh = await dash.app.add("mail:send", {"n": "fresh"})
    await expect(rows.first).to_have_attribute("data-task-id", fresh.id)
    await expect(dash.row(newest[99].id)).to_have_count(0)
    await expect(rows).to_have_count(100)


async def test_progress_shows_in_the_rows_of_tasks_that_start_at_once(dash: Dash) -> None:
    # the window of 100 is re-read after each change: a task whose first progress comes
    # before the hub stored it must still show that progress in its row
    await dash.open()
    tasks = await dash.app.add_many([("job:steps", {"n": i}) for i in range(6)])
    for task in tasks:
        row = dash.row(task.id)
        await expect(row.get_by_test_id("cell-status")).to_have_text("running")
        await expect(row.get_by_test_id("cell-progress")).to_have_text("1 / 3 first")
        await expect(row.get_by_test_id("progress-bar")).to_have_attribute("max", "3")
    dash.gates["one"].set()
    for task in tasks:
        await expect(dash.row(task.id).get_by_test_id("cell-progress")).to_have_text(
            "2 / 3 second")


async def test_progress_of_a_task_running_before_the_page_opened_moves_on(dash: Dash) -> None:
    task = await dash.app.add("job:steps")
    deadline = time.monotonic() + 10
    while (await dash.app.get(task.id)).progress is None:  # stored: its version moved on
        assert time.monotonic() < deadline, "the first progress was never stored"
        await asyncio.sleep(0.05)
    await dash.open()
    progress = dash.row(task.id).get_by_test_id("cell-progress")
    await expect(progress).to_have_text("1 / 3 first")
    dash.gates["one"].set()
    await expect(progress).to_have_text("2 / 3 second")
    dash.gates["two"].set()
    await expect(dash.row(task.id).get_by_test_id("cell-status")).to_have_text("succeeded")


async def test_cells_id_on_hover_attempts_and_created(dash: Dash) -> None:
    task = await dash.app.add("mail:send", {"to": "ann"}, max_attempts=3)
    await dash.open()
    row = dash.row(task.id)
    await expect(row.get_by_test_id("cell-id")).to_have_attribute("title", task.id)
    await expect(row.get_by_test_id("cell-attempts")).to_have_text("0 / 3")
    await expect(row.get_by_test_id("cell-created")).not_to_be_empty()
    await expect(row.get_by_test_id("cell-progress")).to_be_empty()
    headers = await dash.page.locator('[data-testid="task-table"] th').all_inner_texts()
    assert headers == ["id", "action", "status", "priority", "attempts", "progress", "created"]


async def test_rows_leave_when_they_stop_matching_or_are_deleted(dash: Dash) -> None:
    first = await dash.app.add("mail:send", {"to": "ann"})
    second = await dash.app.add("mail:send", {"to": "bob"})
    await dash.open()
    page = dash.page
    rows = page.get_by_test_id("task-row")
    await page.get_by_test_id("filter-status").select_option("queued")
    await expect(rows).to_have_count(2)
    await dash.app.abort(first.id)
    await expect(dash.row(first.id)).to_have_count(0)
    await expect(rows).to_have_count(1)

    await page.get_by_test_id("filter-status").select_option("")
    await expect(rows).to_have_count(2)
    await dash.app.delete([first.id])
    await expect(dash.row(first.id)).to_have_count(0)
    await expect(dash.row(second.id)).to_be_visible()


async def test_changes_made_by_another_process_show_live(dash: Dash) -> None:
    await dash.open()
    db = dash.app.storage.url
    added = await asyncio.to_thread(_cli, "add", "mail:send", '{"to": "far"}',
                                    "--priority", "4", "--db", db)
    task_id = added.stdout.strip()
    row = dash.row(task_id)
    await expect(row.get_by_test_id("cell-status")).to_have_text("queued")
    await expect(row.get_by_test_id("cell-priority")).to_have_text("4")
    await asyncio.to_thread(_cli, "prioritize", task_id, "9", "--db", db)
    await expect(row.get_by_test_id("cell-priority")).to_have_text("9")
    await asyncio.to_thread(_cli, "abort", task_id, "--db", db)
    await expect(row.get_by_test_id("cell-status")).to_have_text("aborted")


async def test_action_filter_by_name_by_pattern_and_a_tag_query(dash: Dash) -> None:
    send = await dash.app.add("mail:send", tags={"user": "ann"})
    sender = await dash.app.add("mail:sender", tags={"user": "bob"})
    seed = await dash.app.add("mail:seed", tags={"user": "ann"})
    await dash.open()
    page = dash.page
    rows = page.get_by_test_id("task-row")
    action = page.get_by_test_id("filter-action")
    await expect(rows).to_have_count(3)

    await action.fill("mail:send")  # a name: exactly that action
    await action.press("Enter")
    await expect(rows).to_have_count(1)
    await expect(dash.row(send.id)).to_be_visible()

    await action.fill("mail:se?d")  # ? is one character
    await action.press("Enter")
    await expect(rows).to_have_count(2)
    await expect(dash.row(sender.id)).to_have_count(0)

    await action.fill("")
    await page.get_by_test_id("filter-query").fill('{"tags.user": "ann"}')
    await page.get_by_test_id("filter-apply").click()
    await expect(rows).to_have_count(2)
    await expect(dash.row(send.id)).to_be_visible()
    await expect(dash.row(seed.id)).to_be_visible()


# -- the task view -------------------------------------------------------------------------------


async def test_a_task_opens_from_its_address_with_every_field(dash: Dash) -> None:
    task = await dash.app.add("job:steps", {"n": 1}, priority=2)
    await dash.open()
    page = dash.page
    await expect(dash.row(task.id).get_by_test_id("cell-status")).to_have_text("running")
    await page.goto(f"{dash.hub.url}/#/tasks/{task.id}")
    await expect(page.get_by_test_id("task-view")).to_be_visible()
    await expect(page.get_by_test_id("task-id")).to_have_text(task.id)
    await expect(page.get_by_test_id("task-action")).to_have_text("job:steps")
    await expect(page.get_by_test_id("task-status")).to_have_text("running")
    await expect(page.get_by_test_id("task-priority")).to_have_text("2")
    await expect(page.get_by_test_id("task-attempts")).to_have_text("1")
    running = await dash.app.get(task.id)
    assert running.worker
    await expect(page.get_by_test_id("task-worker")).to_have_text(running.worker)
    await expect(page.get_by_test_id("task-created")).not_to_be_empty()
    await expect(page.get_by_test_id("task-started")).not_to_be_empty()
    await expect(page.get_by_test_id("task-finished")).to_be_empty()
    # a running task can be aborted, not re-prioritised nor retried
    await expect(page.get_by_test_id("task-abort")).to_be_visible()
    await expect(page.get_by_test_id("task-prioritize-form")).to_be_hidden()
    await expect(page.get_by_test_id("task-retry")).to_be_hidden()

    dash.gates["one"].set()
    dash.gates["two"].set()
    await expect(page.get_by_test_id("task-status")).to_have_text("succeeded")
    await expect(page.get_by_test_id("task-finished")).not_to_be_empty()
    await expect(page.get_by_test_id("task-error")).to_be_hidden()
    await expect(page.get_by_test_id("task-prioritize-form")).to_be_hidden()
    await expect(page.get_by_test_id("task-retry")).to_be_hidden()
    await page.get_by_test_id("task-close").click()
    await expect(page.get_by_test_id("tasks-panel")).to_be_visible()
    assert "#/tasks/" not in page.url


async def test_abort_of_a_queued_task_and_the_log_followed_again_after_a_retry(
        dash: Dash) -> None:
    queued = await dash.app.add("mail:send", {"to": "ann"})
    hang = await dash.app.add("job:hang", max_attempts=1)
    await dash.open()
    page = dash.page
    await dash.row(queued.id).click()
    await expect(page.get_by_test_id("task-prioritize-form")).to_be_visible()
    await page.get_by_test_id("task-priority-input").fill("")
    await page.get_by_test_id("task-prioritize").click()
    await expect(page.get_by_test_id("task-action-error")).to_have_text(
        "the priority must be a number")
    await page.get_by_test_id("task-abort").click()
    await expect(page.get_by_test_id("task-status")).to_have_text("aborted")
    assert (await dash.app.get(queued.id)).status.value == "aborted"
    await expect(page.get_by_test_id("task-prioritize-form")).to_be_hidden()

    await page.get_by_test_id("task-close").click()
    await dash.row(hang.id).click()
    logs = page.get_by_test_id("log-message")
    await expect(logs).to_have_text(["hanging"])
    await dash.app.abort(hang.id)
    await expect(page.get_by_test_id("task-status")).to_have_text("aborted")
    await page.get_by_test_id("task-retry").click()
    # the second attempt's log line is followed live, after the first one's
    await expect(logs).to_have_text(["hanging", "hanging"])
    await expect(page.get_by_test_id("task-status")).to_have_text("running")
    await expect(page.get_by_test_id("task-attempts")).to_have_text("2 / 1")
    await page.get_by_test_id("task-abort").click()
    await expect(page.get_by_test_id("task-status")).to_have_text("aborted")


async def test_a_refused_action_shows_the_task_as_it_is_now(dash: Dash) -> None:
    """The task moved on after its view stopped following it (it had ended): the
    refusal (409) is shown, and so is the task as it is now."""
    task = await dash.app.add("mail:send", {"to": "ann"})
    await dash.app.abort(task.id)
    await dash.open()
    page = dash.page
    await dash.row(task.id).click()
    await expect(page.get_by_test_id("task-status")).to_have_text("aborted")
    await dash.app.retry(task.id)  # elsewhere: queued again
    await page.get_by_test_id("task-retry").click()
    await expect(page.get_by_test_id("task-action-error")).to_contain_text("retry:")
    await expect(page.get_by_test_id("task-status")).to_have_text("queued")
    await expect(page.get_by_test_id("task-retry")).to_be_hidden()
    await expect(page.get_by_test_id("task-abort")).to_be_visible()


# -- panels ------------------------------------------------------------------------------------


async def test_workers_panel_ids_and_a_worker_that_is_gone(dash: Dash) -> None:
    now = time.time()
    await dash.app.storage.register_worker(WorkerInfo(
        id="w-gone", host="far.example", pid=4242, actions=("mail:send",), concurrency=4,
        started_at=now - 4000, last_seen=now - 600, running=1))
    await dash.open()
    page = dash.page
    gone = page.locator('[data-testid="worker-row"][data-worker-id="w-gone"]')
    await expect(gone.get_by_test_id("worker-id")).to_have_text("w-gone")
    await expect(gone.get_by_test_id("worker-alive")).to_have_text("no")
    await expect(gone.get_by_test_id("worker-running")).to_have_text("1 / 4")
    await expect(gone.get_by_test_id("worker-last-seen")).to_have_text(
        re.compile(r"^(59\d|60\d) s ago$"))
    await expect(gone.get_by_test_id("worker-actions")).to_have_text("mail:send")
    await expect(page.get_by_test_id("worker-row")).to_have_count(2)
    await expect(page.get_by_test_id("throughput-rate")).to_have_text(re.compile(r"^\d+\.\d\d$"))


async def test_deleted_tasks_do_not_count_as_negative_throughput(dash: Dash) -> None:
    await dash.open()
    page = dash.page
    await expect(page.get_by_test_id("throughput-line")).to_have_attribute(
        "points", re.compile(r"^[\d.]+,[\d.]+"))  # the first sample: counted from here
    done = [await dash.app.add("job:quick", i) for i in range(3)]
    for task in done:
        await dash.app.wait(task.id, timeout=10)
    total = page.get_by_test_id("throughput-total")
    await expect(total).to_have_text("3")
    await dash.app.delete([t.id for t in done])
    await expect(page.locator('[data-testid="queue-row"][data-action="job:quick"]')
                 ).to_have_count(0)
    await expect(total).to_have_text("3")
    await expect(page.get_by_test_id("throughput-rate")).to_have_text(re.compile(r"^\d"))


async def test_tasks_deleted_before_the_next_sample_still_count(dash: Dash) -> None:
    """Throughput counts ended tasks from the hub's own count (/metrics), not from
    the stored ones: tasks that end and are deleted between two samples (pruning,
    ``retention=``) are counted. The samples are held back here while that happens."""
    await dash.open()
    page = dash.page
    total = page.get_by_test_id("throughput-total")
    await expect(total).to_have_text("0")
    # the first sample (the count it counts from) is taken
    await expect(page.get_by_test_id("throughput-line")).to_have_attribute(
        "points", re.compile(r"^[\d.]+,[\d.]+"))
    release = asyncio.Event()

    async def held(route: Any) -> None:
        await release.wait()
        await route.continue_()

    await page.route("**/api/v1/stats", held)
    await page.route("**/metrics", held)
    done = [await dash.app.add("job:quick", i) for i in range(3)]
    for task in done:
        await dash.app.wait(task.id, timeout=10)
    assert await dash.app.delete([t.id for t in done]) == [t.id for t in done]
    release.set()
    await page.unroute("**/api/v1/stats")
    await page.unroute("**/metrics")
    await expect(total).to_have_text("3")


async def test_every_call_carries_the_key_as_a_bearer_header(dash: Dash) -> None:
    calls: list[tuple[str, str | None]] = []
    sockets: list[str] = []
    dash.page.on("request", lambda r: calls.append((r.url, r.headers.get("authorization"))))
    dash.page.on("websocket", lambda ws: sockets.append(ws.url))
    task = await dash.app.add("mail:send", {"to": "ann"})
    await dash.open()
    await dash.row(task.id).click()
    await dash.page.get_by_test_id("task-priority-input").fill("3")
    await dash.page.get_by_test_id("task-prioritize").click()
    await expect(dash.page.get_by_test_id("task-priority")).to_have_text("3")
    api = [(url, auth) for url, auth in calls if "/api/v1/" in url]
    assert {url.split("/api/v1/")[1] for url, _ in api} >= {
        "stats", "workers", f"tasks/{task.id}/prioritize"}
    assert all(auth == f"Bearer {dash.admin}" for _, auth in api), api
    assert sockets == [dash.hub.ws_url + "/ws"]
    assert not any(dash.admin in url for url, _ in calls) and dash.admin not in sockets[0]


async def test_the_page_connects_again_after_the_hub_restarts(tmp_path: Path,
                                                              browser: Browser) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    _, key = store.add("ops", admin=True)
    db = f"sqlite:///{tmp_path / 'hub.db'}"
    config = HubConfig(port=free_port(), credentials_path=str(store.path))
    context = await browser.new_context()
    page = await context.new_page()
    try:
        async with running_hub(dashboard_app(db, Gates()), config, store) as hub:
            before = await hub.app.add("mail:send", {"to": "ann"})
            await page.goto(hub.url + "/")
            await sign_in(page, key)
            await expect(page.locator(f'[data-task-id="{before.id}"]')).to_be_visible()
            await expect(page.get_by_test_id("connection")).to_have_text("connected as ops")
        await expect(page.get_by_test_id("connection")).to_contain_text("reconnecting in 2 s")
        async with running_hub(Conveyor(db), config, store) as hub:
            await expect(page.get_by_test_id("connection")).to_have_text("connected as ops")
            after = await hub.app.add("mail:send", {"to": "bob"})
            await expect(page.locator(f'[data-task-id="{after.id}"]')).to_be_visible()
            await expect(page.locator(f'[data-task-id="{before.id}"]')).to_be_visible()
            await expect(page.get_by_test_id("key-form")).to_be_hidden()
    finally:
        await context.close()
