"""Claims of docs/dashboard.md that no other test checked: the keyless first
request, what the page sends on the WebSocket (the key in ``hello``, the live
query's sort and limit, a filter change ending one live query and starting
another, text that is not JSON refused by the page itself), how often it reads
the stats and the workers, and throughput counted from when the page was opened.

Not repeated here: what the other tests/dashboard/test_*.py already check.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.async_api import WebSocket, expect

from .conftest import Dash

COUNT_CALLS = """
(() => {
  window.__calls = {};
  const fetch = window.fetch.bind(window);
  window.fetch = (path, init) => {
    const name = new URL(String(path), location.href).pathname;  // relative to the page
    window.__calls[name] = (window.__calls[name] || 0) + 1;
    return fetch(path, init);
  };
})();
"""


def _frame(payload: str | bytes) -> Any:
    return json.loads(payload)


async def test_the_key_goes_in_hello_and_filters_restart_the_live_query(dash: Dash) -> None:
    sockets: list[WebSocket] = []
    sent: list[Any] = []

    def opened(ws: WebSocket) -> None:
        sockets.append(ws)
        ws.on("framesent", lambda payload: sent.append(_frame(payload)))

    dash.page.on("websocket", opened)
    probes: list[str | None] = []
    dash.page.on("request", lambda r: probes.append(r.headers.get("authorization"))
                 if r.url.endswith("/healthz") else None)
    task = await dash.app.add("mail:send", {"to": "ann"})
    # the page's first request goes without a key, and is no failed login: six loads
    # (more than the five failures that lock an address out) still let the key in
    for _ in range(6):
        await dash.page.goto(dash.hub.url + "/")
        await expect(dash.page.get_by_test_id("key-form")).to_be_visible()
    assert probes == [None] * 6
    await dash.open()
    await expect(dash.row(task.id)).to_be_visible()
    assert len(sockets) == 1
    ws = sockets[0]
    assert sent[0] == {"type": "hello", "id": "hello", "key": dash.admin}
    assert not any(dash.admin in json.dumps(frame) for frame in sent[1:])
    first = next(frame for frame in sent if frame["type"] == "live")
    assert first["filter"] == {}
    assert first["sort"] == ["-created_at", "-id"] and first["limit"] == 100

    # changing a filter ends the live query and starts another; filters combine with $and
    page = dash.page
    await page.get_by_test_id("filter-action").fill("mail:*")
    async with ws.expect_event("framesent",
                               lambda p: _frame(p)["type"] == "live") as second_frame:
        await page.get_by_test_id("filter-status").select_option("queued")
    second = _frame(await second_frame.value)
    assert (sent[-2]["type"], sent[-2]["live"]) == ("unlive", first["id"]), sent[-2]
    assert second["id"] != first["id"]
    assert second["filter"]["$and"][0] == {"status": "queued"}
    assert len(second["filter"]["$and"]) == 2
    assert second["sort"] == ["-created_at", "-id"] and second["limit"] == 100
    await expect(dash.row(task.id)).to_be_visible()

    # text that is not JSON is refused by the page: no live query is sent for it
    before = len(sent)
    query = page.get_by_test_id("filter-query")
    await query.fill('{"priority": ')
    await query.press("Enter")
    await expect(page.get_by_test_id("filter-error")).to_contain_text("not valid JSON")
    await query.fill('{"priority": {"$gte": 0}}')
    async with ws.expect_event("framesent",
                               lambda p: _frame(p)["type"] == "live") as third_frame:
        await query.press("Enter")
    third = _frame(await third_frame.value)
    assert third["filter"]["$and"][2] == {"priority": {"$gte": 0}}
    lives = [frame for frame in sent[before:] if frame["type"] == "live"]
    assert lives == [third], sent[before:]
    await expect(dash.row(task.id)).to_be_visible()


async def test_stats_every_2_seconds_and_workers_every_3(dash: Dash) -> None:
    page = dash.page
    start = datetime(2026, 1, 1, tzinfo=UTC)
    await page.clock.install(time=start)
    await page.clock.pause_at(start + timedelta(seconds=30))  # time moves only when told
    await page.add_init_script(COUNT_CALLS)
    await dash.open()

    async def calls() -> tuple[int, int]:
        seen = await page.evaluate("window.__calls")
        return seen.get("/api/v1/stats", 0), seen.get("/api/v1/workers", 0)

    stats, workers = await calls()
    assert stats >= 1 and workers >= 1  # read once when signed in
    await page.clock.run_for(6000)
    assert await calls() == (stats + 3, workers + 2)
    await page.clock.run_for(2000)
    assert await calls() == (stats + 4, workers + 2)


async def test_throughput_counts_from_when_the_page_was_opened(dash: Dash) -> None:
    before = [await dash.app.add("job:quick", i) for i in range(3)]
    for task in before:
        await dash.app.wait(task.id, timeout=10)
    await dash.open()
    page = dash.page
    quick = page.locator('[data-testid="queue-row"][data-action="job:quick"]')
    await expect(quick.get_by_test_id("queue-succeeded")).to_have_text("3")
    total = page.get_by_test_id("throughput-total")
    await expect(total).to_have_text("0")  # finished before the page was opened
    later = await dash.app.add("job:quick", 9)
    await dash.app.wait(later.id, timeout=10)
    await expect(quick.get_by_test_id("queue-succeeded")).to_have_text("4")
    await expect(total).to_have_text("1")


async def test_throughput_counts_nothing_for_an_interval_with_a_hub_restart(
        dash: Dash) -> None:
    """The hub's count starts again at 0 when it restarts: an interval with a restart
    in it counts nothing, also when more tasks ended after the restart than before it
    (the page took 30 - 5 = 25 there). /metrics is served by the test: a count of 5,
    then a restart (a later start, from conveyor_hub_uptime_seconds) and 30, then 32."""
    first_start = time.time() - 100
    second_start = time.time()
    samples = [(0, first_start), (5, first_start), (30, second_start), (32, second_start)]
    served = {"n": 0}

    async def metrics(route: Any) -> None:
        finished, started = samples[min(served["n"], len(samples) - 1)]
        served["n"] += 1
        body = ('conveyor_tasks_finished_total{action="job:quick",status="succeeded"} '
                f"{finished}.0\nconveyor_hub_uptime_seconds {time.time() - started:.3f}\n")
        await route.fulfill(status=200, body=body,
                            headers={"Content-Type": "text/plain; version=0.0.4"})

    page = dash.page
    await page.route("**/metrics", metrics)
    await dash.open()
    total = page.get_by_test_id("throughput-total")
    await expect(total).to_have_text("5")
    # 5 before the restart, 2 after it (the count read 30, then 32)
    await expect(total).to_have_text("7", timeout=15_000)
