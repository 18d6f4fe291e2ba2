"""One module-level function registered as a process handler by two apps (tenants),
each with its own environment, and by one app for two actions: a child must run it
with the options of the handler that claimed the task."""

from __future__ import annotations

from typing import Any

from conveyor import Context, Conveyor, SyncConveyor


def report(ctx: Context[Any]) -> dict[str, Any]:
    return {"env": ctx.env, "action": ctx.task.action}


tenant_a = Conveyor("memory://")
tenant_b = SyncConveyor("memory://")  # found through its .app as well
tenant_a.register("report", report, mode="process", environment={"tenant": "A"})
tenant_b.register("report", report, mode="process", environment={"tenant": "B"})

resizer = Conveyor("memory://")
resizer.register("resize:large", report, mode="process", environment={"width": 2000})
resizer.register("resize:small", report, mode="process", environment={"width": 100})
