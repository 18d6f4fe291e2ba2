"""Cron expressions: five fields, or six with seconds last, that every process reads
alike and that fire; anything else is refused when the schedule is declared."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conveyor import ConfigurationError, Context, Conveyor
from conveyor.schedule import Schedule

FIELDS_MESSAGE = (r"a cron expression has five \(minute hour day month weekday\), "
                  r"or six with seconds last")


@pytest.mark.parametrize(("cron", "message"), [
    ("* * * * * * *", r"it has 7 field\(s\); " + FIELDS_MESSAGE),
    ("0 0 1 1 * 0 2030", r"it has 7 field\(s\)"),  # croniter's year field
    ("* * * * * * * *", r"it has 8 field\(s\)"),
    ("* * * *", r"it has 4 field\(s\)"),
    ("@daily", r"it has 1 field\(s\)"),
    ("", r"it has 0 field\(s\)"),
    ("R * * * *", r"random and hashed fields \(R, H\) are not supported"),
    ("0 R(1-5) * * *", r"random and hashed fields"),
    ("H H * * *", r"random and hashed fields"),
    ("0 0 1,H * *", r"random and hashed fields"),
    ("0 0 30 2 *", r"'0 0 30 2 \*': it never fires"),
    ("0 0 31 4 * 0", r"it never fires"),
    ("61 * * * *", r"bad cron expression '61 \* \* \* \*'$"),
])
def test_bad_cron_expressions_are_refused(cron: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Schedule("x", cron=cron)
    app = Conveyor("memory://")
    with pytest.raises(ConfigurationError, match=message):
        app.schedule("x", cron)

    async def fn(ctx: Context[Any]) -> None: ...

    with pytest.raises(ConfigurationError, match=message):
        app.register("x", fn, schedule=cron)
    assert "x" not in app.registry and app.schedules == []


@pytest.mark.parametrize("cron", [
    "*/5 * * * *", "0 3 * * MON-FRI", "0 0 * MAR FRI", "0 0 29 2 *", "* * * * * */10",
    "  0 12 * * *  ",
])
def test_five_and_six_fields_are_accepted(cron: str) -> None:
    schedule = Schedule("x", cron=cron)
    now = time.time()
    assert schedule.next_after(now) > now


def test_a_cron_expression_must_be_a_string() -> None:
    with pytest.raises(ConfigurationError, match="a cron expression is a string, not 5"):
        Schedule("x", cron=5)  # type: ignore[arg-type]
