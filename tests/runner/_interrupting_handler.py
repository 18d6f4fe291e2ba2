"""A worker script whose async handler raises KeyboardInterrupt (its own code, not a
Ctrl-C): the interrupt ends the process, as it may be the user's Ctrl-C."""

import asyncio
import sys

from conveyor import Context, Conveyor

app = Conveyor(sys.argv[1], lease=1.0, max_rescues=2)


@app.handler("x:interrupt", max_attempts=1)
async def interrupt(ctx: Context) -> None:
    raise KeyboardInterrupt


async def main() -> None:
    async with app:  # until the interrupt, or until the task ended (a sweep failed it)
        await app.wait_task(sys.argv[2], timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
