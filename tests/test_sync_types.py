"""src/conveyor/_blocking.py (the sync faces' signatures for type checkers) says
what the async classes say: ``scripts/sync_types.py --check``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_blocking_signatures_are_up_to_date() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_types.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_every_public_method_of_the_async_classes_is_declared() -> None:
    from conveyor import Conveyor
    from conveyor._blocking import __all__ as nothing_at_run_time
    from conveyor.client import HubClient

    assert nothing_at_run_time == []
    text = (ROOT / "src" / "conveyor" / "_blocking.py").read_text(encoding="utf-8")
    conveyor_part, hub_part = text.split("class BlockingHubClient:")
    for cls, part, own in ((Conveyor, conveyor_part, {"close", "run"}),
                           (HubClient, hub_part, {"close", "stop"})):
        public = {n for n in vars(cls) if not n.startswith("_")} - own
        missing = [n for n in public if f"def {n}(" not in part]
        assert missing == [], cls
