"""A worker script of a user's own (not `conveyor worker`), stopped as a deploy stops
it: ``_sigterm_script.py DB MODE`` where MODE is ``async`` (``asyncio.run(app.run())``),
``two-runs`` (two apps' ``run()`` in one loop), ``sync-run`` (``SyncConveyor.run()``)
or ``sync-exit`` (``SyncConveyor.start()``,
then the script ends, without ``close()``, once its task runs). Prints ``returned``
when the call returned."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from conveyor import Context, Conveyor, SyncConveyor

app = Conveyor(sys.argv[1], stop_timeout=0.5)


@app.handler("long")
async def long(ctx: Context[Any]) -> None:
    await asyncio.sleep(120)


mode = sys.argv[2]
if mode == "async":
    asyncio.run(app.run())
elif mode == "two-runs":  # two apps run in one program: SIGTERM stops both
    second = Conveyor(sys.argv[1], stop_timeout=0.5)
    second.register("long", long)

    async def both() -> None:
        await asyncio.gather(app.run(), second.run())

    asyncio.run(both())
elif mode == "sync-run":
    SyncConveyor(app).run()
else:
    face = SyncConveyor(app)
    face.start()
    deadline = time.monotonic() + 60
    while face.count({"status": "running"}) == 0:  # until its task runs here
        assert time.monotonic() < deadline
        time.sleep(0.01)
print("returned", flush=True)
sys.exit(0)
