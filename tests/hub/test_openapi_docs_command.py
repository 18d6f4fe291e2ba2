"""The schemathesis run of docs/http.md, as written there, finds no issues.

The ``schemathesis.toml`` and the command are read from the OpenAPI section of
the docs; only a small ``--max-examples``, a seed and no example database are
added to keep the run short and repeatable (test_openapi_schemathesis.py runs
more examples).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.hub import HubConfig
from conveyor.hub._credentials import CredentialStore

from .conftest import running_hub

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"


def documented() -> tuple[str, list[str]]:
    """The schemathesis.toml and the command (its words) of the OpenAPI section."""
    text = DOC.read_text()
    section = text[text.index("### OpenAPI"):]
    section = section[:section.index("\n## ")]
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    console = re.search(r"```console\n\$ (.*?)```", section, re.S)
    assert toml is not None and console is not None, section
    command = console[1].replace("\\\n", " ")
    return toml[1], shlex.split(command)


def test_the_documented_command_is_the_suites() -> None:
    from .test_openapi_schemathesis import CONFIG

    toml, words = documented()
    assert toml.strip() == CONFIG.strip()
    assert words[:2] == ["schemathesis", "run"]
    assert "--checks" in words and words[words.index("--checks") + 1] == "all"


@pytest.mark.timeout(200)
async def test_the_documented_run_finds_nothing(tmp_path: Path) -> None:
    """On SQLite only: the hub's input checks do not depend on the storage."""
    toml, words = documented()
    (tmp_path / "schemathesis.toml").write_text(toml)
    store = CredentialStore(tmp_path / "credentials.json")
    app = Conveyor(f"sqlite:///{tmp_path / 'hub.db'}")
    async with running_hub(app, HubConfig(port=0, credentials_path=str(store.path)),
                           store) as hub:
        _, key = store.add("fuzzer", admin=True)
        args = [w.replace("$HUB", hub.url).replace("$KEY", key) for w in words[2:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
        env["NO_COLOR"] = "1"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli", "run", *args,
            "--max-examples", "10", "--seed", "20261204", "--generation-database", "none",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 190)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-20000:]
    assert "No issues found" in text, text[-20000:]
    assert "Selected: 19/19" in text, text[-3000:]
