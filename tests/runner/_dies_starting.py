"""A process handler whose module kills the first child process that imports it (a
child killed by a signal as it starts: the OOM killer, a signal to the worker's
process group before the child has a session of its own), for tests."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from conveyor import Context, Conveyor

app = Conveyor("memory://", concurrency=1)

_MARKER = os.environ.get("CONVEYOR_TEST_DIE_MARKER")
_SPEC = getattr(sys.modules["__main__"], "__spec__", None)
if (_MARKER and _SPEC is not None and _SPEC.name == "conveyor._child"
        and not Path(_MARKER).exists()):
    Path(_MARKER).touch()
    os.kill(os.getpid(), signal.SIGKILL)


@app.handler("proc:after_a_death", mode="process")
def after_a_death(ctx: Context[Any]) -> int:
    return os.getpid()
