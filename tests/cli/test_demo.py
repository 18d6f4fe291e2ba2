"""``conveyor demo --duration``: runs the example handlers and leaves their tasks behind."""

from __future__ import annotations

from pathlib import Path

from ._support import cli, find


def test_demo_runs_every_example_action(tmp_path: Path) -> None:
    result = cli("demo", "--duration", "5", cwd=tmp_path, timeout=60)
    assert result.code == 0, result
    assert "Traceback" not in result.err, result
    assert "demo stopped" in result.out
    db = tmp_path / "conveyor-demo.db"  # the demo's default database
    assert db.exists()

    tasks = find(f"sqlite:///{db}", {"status": "succeeded"})
    by_action = {action: [t for t in tasks if t.action == action]
                 for action in ("demo:download", "demo:poll", "demo:flaky")}
    for action, done in by_action.items():
        assert done, f"no succeeded {action} task"

    download = by_action["demo:download"][0]
    assert download.result["bytes"] == download.payload["size"]
    assert download.progress is not None and download.progress.fraction == 1.0

    # flaky: failed its first attempt, succeeded on the retry
    flaky = by_action["demo:flaky"][0]
    assert flaky.attempts == 2
    assert [e.type for e in flaky.errors] == ["ConnectionError"]
    assert flaky.result == {"attempt": 2}

    # poll: rescheduled itself (attempt refunded each time) until its third look
    poll = by_action["demo:poll"][0]
    assert poll.result == {"polls": 3, "job": "done"}
    assert poll.attempts == 1 and not poll.errors

    # --db selects another database
    other = tmp_path / "other.db"
    again = cli("demo", "--duration", "1", "--every", "0.5", "--db", f"sqlite:///{other}",
                cwd=tmp_path, timeout=60)
    assert again.code == 0, again
    assert find(f"sqlite:///{other}")
