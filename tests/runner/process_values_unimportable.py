"""A module whose import fails in a handler's process (only there): its error names a
file whose name is not UTF-8 (tests/runner/test_process_values.py)."""

from __future__ import annotations

import os
import sys
from typing import Any

from conveyor import Context, Conveyor

app = Conveyor("memory://")

_main = getattr(sys.modules.get("__main__"), "__spec__", None)
if getattr(_main, "name", None) == "conveyor._child":
    _path = os.fsdecode(b"/etc/caf\xe9.cfg")
    raise RuntimeError(f"cannot read {_path}")


@app.handler("pv:unimportable", mode="process")
def unimportable(ctx: Context[Any]) -> str:
    return "never"
