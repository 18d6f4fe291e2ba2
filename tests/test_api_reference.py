"""docs/api.md lists every public name, and says what the code says."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import api_reference  # noqa: E402


def test_every_public_name_has_an_entry() -> None:
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    missing = []
    for modname in api_reference.public_modules():
        mod = importlib.import_module(modname)
        section = page.split(f"\n## {modname}\n", 1)[1].split("\n## ", 1)[0]
        for name in mod.__all__:
            described = f"### `{name}`" in page
            listed = re.search(rf"`{re.escape(name)}` \(\[", section) is not None
            if not (f"### `{name}`" in section or (described and listed)):
                missing.append(f"{modname}.{name}")
    assert missing == []


def test_the_page_is_up_to_date() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "api_reference.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_public_modules_skip_private_ones() -> None:
    mods = api_reference.public_modules()
    assert "conveyor" in mods and "conveyor.storage.postgres" in mods
    assert not [m for m in mods if any(p.startswith("_") for p in m.split("."))]
