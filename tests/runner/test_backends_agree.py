"""Small cases where the backends answered differently (found by a differential
run of the same calls on memory, SQLite and PostgreSQL)."""

from __future__ import annotations

import math

import pytest

from conveyor import Conveyor, ValidationError


async def test_a_priority_of_minus_zero_is_zero_everywhere(app: Conveyor) -> None:
    """memory kept ``-0.0``; SQLite and PostgreSQL stored ``0.0``."""
    added = await app.add("a", None, priority=-0.0)
    for task in (added, await app.get(added.id),
                 await app.prioritize(added.id, -0.0)):
        assert task.priority == 0.0 and math.copysign(1.0, task.priority) == 1.0


async def test_exists_of_an_id_that_is_not_valid_unicode_is_bad_input(app: Conveyor) -> None:
    """SQLite and PostgreSQL raised a raw ``UnicodeEncodeError`` (memory said False);
    ``get`` and the others already said ValidationError."""
    with pytest.raises(ValidationError, match="a task id holds text that is not valid Unicode"):
        await app.exists("ab\ud800")
    assert await app.exists("no-such-task") is False


REGEX_CASES = [  # the rare characters where Python's re and the regex engine part
    ({"$regex": "\\s"}, set()),  # U+001C: space to re, not to regex
    ({"$regex": "^\\d$"}, {"digit16"}),  # a Unicode 16 digit
    ({"$regex": "^i$", "$options": "i"}, {"i"}),  # the dotless i (U+0131): not to regex
    ({"$regex": "^ß$", "$options": "i"}, {"sharp", "sharp14"}),
    ({"$regex": "^\\w+$"}, {"i", "dotless", "digit16", "sharp", "sharp14", "combining"}),
    ({"$regex": "^\\B$"}, {"empty"}),  # \B in an empty string
]


@pytest.mark.parametrize(("condition", "expected"), REGEX_CASES)
async def test_regex_means_the_same_on_every_backend(
        app: Conveyor, condition: dict[str, str], expected: set[str]) -> None:
    """PostgreSQL followed Python's re where it parts from the regex engine that
    memory and SQLite run (the docs promised ASCII the same everywhere; U+001C
    was not): it now matches what the regex engine matches."""
    values = {"sep": "a\x1cb", "digit16": "\U00010d40", "i": "i", "dotless": "\u0131",
              "sharp": "\u00df", "sharp14": "\U0001df95", "combining": "e\u0301",
              "empty": ""}
    ids = {}
    for name, value in values.items():
        ids[(await app.add("rx", {"v": value})).id] = name
    found = await app.find({"action": "rx", "payload.v": condition})
    assert {ids[t.id] for t in found} == expected
