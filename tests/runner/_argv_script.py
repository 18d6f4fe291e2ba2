"""A script that reads its options at import, with a ``mode="process"`` handler:
``python _argv_script.py --db URL --tag T`` adds one task, waits for it and prints
the ended task as JSON. The handler returns the ``sys.argv`` its process saw.
With ``EXIT_ON_IMPORT=1`` the module exits when the handler process imports it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from conveyor import Context, Conveyor

parser = argparse.ArgumentParser()
parser.add_argument("--db", required=True)
parser.add_argument("--tag", required=True)
args = parser.parse_args()
if __name__ != "__main__" and os.environ.get("EXIT_ON_IMPORT"):
    sys.exit(3)
app = Conveyor(args.db)


@app.handler("argv:show", mode="process", max_attempts=3)
def show(ctx: Context[Any]) -> list[str]:
    return sys.argv[1:]


async def main() -> None:
    async with app:
        task = await app.add("argv:show")
        ended = await app.wait_task(task.id, timeout=60)
        print(json.dumps({"status": ended.status.value, "result": ended.result,
                          "attempts": ended.attempts,
                          "error": None if ended.error is None
                          else [ended.error.type, ended.error.message]}))


if __name__ == "__main__":
    asyncio.run(main())
