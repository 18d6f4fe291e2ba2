"""The hub's WebSocket side, measured: remote workers against in-process ones, and
live-query fan-out latency.

    .venv/bin/python bench/hub_bench.py            # N=20,000 tasks, 200 subscribers (~1 min)
    .venv/bin/python bench/hub_bench.py --quick    # N=5,000, shorter latency run

1. Throughput, no-op tasks on SQLite (the default ``synchronous=full``, or ``--sync
   normal``), side by side in one run:

   - in-process: one worker process (a Conveyor app, concurrency C) drains N tasks;
   - remote: a hub process (``create_hub``) and one remote-worker process
     (:class:`conveyor.client.HubClient`, ``work(concurrency=C)``) drain N tasks
     over the WebSocket.

   The rate is N / (last ``finished_at`` - first ``started_at``), read from the
   database afterwards. The target: remote >= half the in-process rate.

2. Live-query fan-out: a hub process, 200 subscribers of one live query (200
   connections from 4 processes), and a producer adding tasks at a steady rate and
   aborting each soon after (every change reaches every subscriber). Latency is
   the arrival time of a message minus the ``updated_at`` of the task state it
   carries (the commit of the change), so it includes the change feed (SQLite:
   polled every 2 ms), the hub's read, the fan-out and the client's parsing.
   These databases use ``synchronous=normal`` whatever ``--sync`` says: a
   commit's fsync happens before anyone can see the change and is not part of
   the fan-out (on a busy disk it would dominate the figure).
   Measured with 1 subscriber and with 200 at 10 tasks/s (20 changes/s, 4,000
   messages/s), then with 200 at 50 tasks/s (100 changes/s, 20,000 messages/s:
   about what one hub process can send on a small machine). The target: p99
   with 200 subscribers < 50 ms at the first rate.

Results go to ``bench/results/hub-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

CONCURRENCY = 100
SUBSCRIBER_PROCS = 4
"""Processes the subscribers are spread over (they are separate clients in real life)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SYNC = "full"


def db_url(path: Path) -> str:
    return f"sqlite:///{path}?synchronous={SYNC}"


# -- roles (run in child processes) ------------------------------------------------------


async def role_hub(db: str, port: int) -> None:
    import uvicorn

    from conveyor import Conveyor
    from conveyor.hub import HubConfig, create_hub

    config = HubConfig(port=port, insecure=True, max_rate=1_000_000, max_pending=1_000_000)
    asgi = create_hub(Conveyor(db), config)
    server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning", ws_max_size=config.ws_max_size))
    await server.serve()


async def role_remote(url: str, concurrency: int) -> None:
    from conveyor.client import HubClient

    client = HubClient(url)

    @client.handler("bench:noop")
    async def noop(ctx: Any) -> None:
        return None

    work = asyncio.create_task(client.work("bench", concurrency=concurrency))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, client.stop)
    await client.wait_working(30)
    print("ready", flush=True)
    await work
    await client.close()


async def role_local(db: str, concurrency: int) -> None:
    from conveyor import Conveyor

    app = Conveyor(db, concurrency=concurrency)

    @app.handler("bench:noop")
    async def noop(ctx: Any) -> None:
        return None

    await app.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def role_subscribers(url: str, count: int, out: str) -> None:
    from websockets.asyncio.client import connect

    ws_url = url.replace("http://", "ws://") + "/ws"
    latencies: list[float] = []
    gaps = 0
    ready = 0
    all_ready = asyncio.Event()
    want = [1 << 62]
    ended = [0]  # tasks seen aborted (their last state), over all subscribers
    arrived = asyncio.Event()

    async def one() -> None:
        nonlocal gaps, ready
        async with connect(ws_url, max_size=None, compression=None, ping_interval=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "live", "id": 1, "filter": {"action": "lat:x"},
                                      "fields": ["status", "updated_at"]}))
            expected = 1
            async for frame in ws:
                now = time.time()
                parsed = json.loads(frame)
                for msg in parsed if isinstance(parsed, list) else [parsed]:
                    if msg.get("seq") != expected:
                        gaps += 1
                    expected = msg.get("seq", expected) + 1
                    if msg["type"] == "snapshot":
                        ready += 1
                        if ready == count:
                            all_ready.set()
                    elif msg["type"] in ("added", "changed"):
                        latencies.append(now - msg["task"]["updated_at"])
                        if msg["task"]["status"] == "aborted":
                            ended[0] += 1
                        # a task read after its abort comes as one "added" of the
                        # aborted task (a live query never goes back to an older
                        # state): every task ended is as done as every message
                        if len(latencies) >= want[0] or ended[0] >= want[0] // 2:
                            arrived.set()

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await all_ready.wait()
    print("ready", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    # "stop N": wait (up to 60 s) until N messages per subscriber arrived, or each
    # subscriber saw all N / 2 tasks end
    want[0] = int(line.split()[1]) * count if len(line.split()) > 1 else 0
    if len(latencies) < want[0] and ended[0] < want[0] // 2:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), 60)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    write_json(out, {"latencies": latencies, "gaps": gaps})


# -- orchestration ---------------------------------------------------------------------


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data))


def spawn(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args],
                            env=env, stdout=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE if stdin else None)


def wait_line(proc: subprocess.Popen[str], timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line and time.monotonic() > deadline:
        raise TimeoutError("no output from a child process")
    return line.strip()


def stop(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


async def wait_hub(url: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=1.0) as http:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise TimeoutError("the hub did not start")


async def fill(db: str, n: int) -> None:
    from conveyor import Conveyor

    app = Conveyor(db)
    for start in range(0, n, 2000):
        await app.add_many([("bench:noop", None)] * min(2000, n - start))
    await app.close()


async def drained(db: str, n: int, timeout: float) -> dict[str, Any]:
    from conveyor import Conveyor

    app = Conveyor(db)
    deadline = time.monotonic() + timeout
    try:
        while await app.count({"status": "succeeded"}) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not drained within {timeout} s")
            await asyncio.sleep(0.1)
        tasks = await app.find({"status": "succeeded"})
        first = min(t.started_at or 0.0 for t in tasks)
        last = max(t.finished_at or 0.0 for t in tasks)
        return {"n": n, "seconds": last - first, "rate": n / (last - first)}
    finally:
        await app.close()


async def throughput(tmp: Path, n: int, concurrency: int) -> dict[str, Any]:
    local_db = db_url(tmp / "local.db")
    await fill(local_db, n)
    local = spawn("--role", "local", "--db", local_db, "--concurrency", str(concurrency))
    try:
        assert wait_line(local) == "ready"
        in_process = await drained(local_db, n, 300)
    finally:
        stop(local)

    remote_db = db_url(tmp / "remote.db")
    await fill(remote_db, n)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = spawn("--role", "hub", "--db", remote_db, "--port", str(port))
    worker = None
    try:
        await wait_hub(url)
        worker = spawn("--role", "remote", "--url", url, "--concurrency", str(concurrency))
        assert wait_line(worker) == "ready"
        remote = await drained(remote_db, n, 300)
    finally:
        stop(*([worker] if worker else []), hub)
    return {"in_process": in_process, "remote": remote,
            "ratio": remote["rate"] / in_process["rate"]}


async def latency(tmp: Path, subscribers: int, seconds: float, rate: float) -> dict[str, Any]:
    from conveyor import Conveyor

    # without fsync per commit: the disk's flush time is not part of the fan-out
    db = f"sqlite:///{tmp / f'latency-{subscribers}-{rate:g}.db'}?synchronous=normal"
    app = Conveyor(db)
    await app.open()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = spawn("--role", "hub", "--db", db, "--port", str(port))
    subs: list[subprocess.Popen[str]] = []
    out = tmp / f"latency-{subscribers}.json"
    try:
        await wait_hub(url)
        procs = min(SUBSCRIBER_PROCS, subscribers)
        shares = [subscribers // procs + (1 if i < subscribers % procs else 0)
                  for i in range(procs)]
        subs = [spawn("--role", "subscribers", "--url", url, "--count", str(share),
                      "--out", f"{out}.{i}", stdin=True) for i, share in enumerate(shares)]
        for proc in subs:
            assert wait_line(proc, 120) == "ready"
        pending: list[Any] = []
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < seconds:
            task = await app.add("lat:x", i)
            pending.append((time.monotonic(), task.id))
            i += 1
            while pending and time.monotonic() - pending[0][0] > 0.1:
                await app.abort(pending.pop(0)[1])
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        for _, task_id in pending:
            await app.abort(task_id)
        data: dict[str, Any] = {"latencies": [], "gaps": 0}
        for k, proc in enumerate(subs):
            assert proc.stdin is not None
            proc.stdin.write(f"stop {2 * i}\n")
            proc.stdin.flush()
            proc.wait(90)  # it gives up waiting for messages after 60 s
            part = read_json(f"{out}.{k}")
            data["latencies"] += part["latencies"]
            data["gaps"] += part["gaps"]
    finally:
        stop(*(subs or []), hub)
        await app.close()
    values = sorted(data["latencies"])
    expected = 2 * i * subscribers

    def pct(p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] * 1000 if values else 0.0

    return {"subscribers": subscribers, "changes": 2 * i, "messages": len(values),
            "expected_messages": expected, "gaps": data["gaps"], "p50_ms": pct(0.50),
            "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": values[-1] * 1000 if values else 0.0}


async def main(args: argparse.Namespace) -> int:
    n = args.n if args.n is not None else (5000 if args.quick else 20_000)
    seconds = 5.0 if args.quick else 10.0
    started = time.time()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hub-bench-", dir=args.tmp) as folder:
        tmp = Path(folder)
        tput = await throughput(tmp, n, args.concurrency)
        lat1 = await latency(tmp, 1, seconds, args.rate)
        lat200 = await latency(tmp, args.subscribers, seconds, args.rate)
        lat_high = await latency(tmp, args.subscribers, seconds, args.high_rate)
    load1 = os.getloadavg()[0]
    ok_ratio = tput["ratio"] >= 0.5
    ok_latency = lat200["p99_ms"] < 50 and lat200["gaps"] == 0 and lat_high["gaps"] == 0
    lines = [
        f"conveyor hub benchmark: N={n:,} no-op tasks, concurrency {args.concurrency}, "
        f"SQLite synchronous={SYNC}; {args.subscribers} live subscribers, "
        f"{args.rate:g} (then {args.high_rate:g}) adds/s for {seconds:g} s, each task aborted "
        "0.1 s later (2 changes per task)",
        f"machine: {os.cpu_count()} CPU, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average {load0:.2f} -> {load1:.2f}",
        "",
        "throughput (first started_at to last finished_at)",
        f"  in-process worker (1 process)           {tput['in_process']['rate']:8,.0f} tasks/s",
        f"  remote worker over WebSocket (1 process) {tput['remote']['rate']:8,.0f} tasks/s",
        f"  ratio remote / in-process                  {tput['ratio']:6.2f}x   "
        f"(target >= 0.50: {'met' if ok_ratio else 'NOT met'})",
        "",
        "live-query fan-out latency (change committed -> message parsed by a subscriber; "
        "SQLite synchronous=normal)",
        f"  {'subscribers':>11} {'changes/s':>9} {'messages':>10} {'gaps':>5} {'p50':>8} "
        f"{'p90':>8} {'p99':>8} {'max':>8}",
    ]
    for lat in (lat1, lat200, lat_high):
        lines.append(f"  {lat['subscribers']:>11} {lat['changes'] / seconds:>9.0f} "
                     f"{lat['messages']:>10,} {lat['gaps']:>5} "
                     f"{lat['p50_ms']:>6.1f}ms {lat['p90_ms']:>6.1f}ms {lat['p99_ms']:>6.1f}ms "
                     f"{lat['max_ms']:>6.1f}ms")
    lines += [
        f"  fan-out to {args.subscribers} adds {lat200['p99_ms'] - lat1['p99_ms']:.1f} ms at p99 "
        f"over 1 subscriber; p99 with {args.subscribers}: {lat200['p99_ms']:.1f} ms "
        f"(target < 50 ms: {'met' if ok_latency else 'NOT met'})",
        f"  messages expected {lat200['expected_messages']:,}, received {lat200['messages']:,}; "
        f"at {lat_high['changes'] / seconds:.0f} changes/s ({lat_high['expected_messages']:,} "
        f"messages) p99 is {lat_high['p99_ms']:.1f} ms",
        "",
        f"(total {time.time() - started:.0f} s)",
    ]
    print("\n".join(lines))
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(args.out) if args.out else results / f"hub-{stamp}.json"
    path.write_text(json.dumps({"throughput": tput, "latency": [lat1, lat200, lat_high],
                                "sync": SYNC, "rates": [args.rate, args.high_rate],
                                "n": n, "concurrency": args.concurrency,
                                "load": [load0, load1], "when": started}, indent=2))
    print(f"results in {path}")
    return 0 if ok_ratio and ok_latency else 1


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["hub", "remote", "local", "subscribers"])
    p.add_argument("--db")
    p.add_argument("--port", type=int)
    p.add_argument("--url")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--out")
    p.add_argument("--n", type=int, default=None,
                   help="tasks per drain (default 20000; 5000 with --quick)")
    p.add_argument("--concurrency", type=int, default=CONCURRENCY)
    p.add_argument("--subscribers", type=int, default=200)
    p.add_argument("--rate", type=float, default=10.0, help="tasks added per second")
    p.add_argument("--high-rate", type=float, default=50.0,
                   help="tasks added per second in the second, heavier latency run")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tmp", default=None)
    p.add_argument("--sync", choices=["full", "normal"], default="full",
                   help="SQLite synchronous setting of the databases (default full; "
                        "the fan-out's are always normal, as its docstring says)")
    args = p.parse_args()
    for name in ("count", "n", "concurrency", "subscribers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    for name in ("rate", "high_rate"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be more than 0")
    if args.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        p.error(f"--out {args.out!r}: its folder does not exist")
    return args


if __name__ == "__main__":
    args = parse()
    SYNC = args.sync
    if args.role == "hub":
        if os.environ.get("HUB_BENCH_LOOP") == "asyncio":
            asyncio.run(role_hub(args.db, args.port))
        else:  # the loop ``conveyor serve`` runs on: uvloop when installed
            from conveyor.cli._hub import run_loop

            run_loop(role_hub(args.db, args.port))
    elif args.role == "remote":
        asyncio.run(role_remote(args.url, args.concurrency))
    elif args.role == "local":
        asyncio.run(role_local(args.db, args.concurrency))
    elif args.role == "subscribers":
        asyncio.run(role_subscribers(args.url, args.count, args.out))
    else:
        sys.exit(asyncio.run(main(args)))
