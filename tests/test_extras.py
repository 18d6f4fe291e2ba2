"""A missing extra is named when its part of conveyor is imported (packaging audit):
``from conveyor.client import HubClient`` without ``[hub]`` said only "No module
named 'httpx'"."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conveyor._extras import HUB_MODULES, require_extra


def test_a_missing_module_of_an_extra_names_the_extra() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"needs the \[hub\] extra .*"
                                                  r"pip install 'conveyor\[hub\]'") as info:
        require_extra("hub", ("json", "no_such_module_for_conveyor"), "conveyor.client")
    assert info.value.name == "no_such_module_for_conveyor"  # the CLI's hint reads it
    require_extra("hub", HUB_MODULES, "conveyor.client")  # all here: nothing raised


@pytest.mark.parametrize("module", ["conveyor.client", "conveyor.hub"])
def test_the_hub_parts_look_for_the_extra_first(module: str) -> None:
    # a process where the extra's first module cannot be found (a finder that hides it)
    code = (
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] == {HUB_MODULES[0]!r}:\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        f"import {module}\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert "needs the [hub] extra" in done.stderr, done.stderr
