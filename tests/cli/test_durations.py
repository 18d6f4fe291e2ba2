"""The CLI's durations (docs/cli.md, "Durations from the command line"): decimal
numbers of seconds (digits 0-9), or with one lower-case unit; everything else is
refused with a message that names the value."""

from __future__ import annotations

import click
import pytest

from conveyor.cli._base import Duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("2.5", 2.5), (".5", 0.5), ("5.", 5.0), ("0", 0.0), ("90s", 90.0),
    ("1e3", 1000.0), ("+5", 5.0), ("2.5E2s", 250.0),
    ("-0", 0.0), ("-0.0s", 0.0), ("5m", 300.0), ("1.5h", 5400.0), ("7d", 604800.0),
    ("2w", 1209600.0), (" 30m ", 1800.0),
])
def test_accepted(text: str, seconds: float) -> None:
    got = Duration("seconds").convert(text, None, None)
    assert got == seconds and str(got) == str(seconds)  # -0 is 0


@pytest.mark.parametrize(("text", "says"), [
    ("5M", "with a unit"),   # months or minutes? units are lower-case
    ("5S", "with a unit"),
    ("1e", "with a unit"),
    ("e3", "with a unit"),
    ("1_000", "with a unit"),
    ("\u0665", "with a unit"),  # ARABIC-INDIC DIGIT FIVE: float() reads it as 5
    ("5 m", "with a unit"),
    ("1h30m", "with a unit"),
    ("5x", "with a unit"),
    ("", "with a unit"),
    ("-3", "finite duration >= 0"),
    ("-5m", "finite duration >= 0"),
    ("NaN", "finite duration >= 0"),
    ("inf", "finite duration >= 0"),
    ("-Infinity", "finite duration >= 0"),
])
def test_refused(text: str, says: str) -> None:
    with pytest.raises(click.BadParameter, match=says) as refused:
        Duration("seconds").convert(text, None, None)
    assert repr(text) in str(refused.value)
