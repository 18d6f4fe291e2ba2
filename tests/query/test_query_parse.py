"""The parser: valid filters, sorts and windows, and clear errors for malformed ones."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from conveyor.errors import QueryError, ValidationError
from conveyor.model import FIELDS, Status
from conveyor.query import (
    Filter,
    Query,
    SortKey,
    fields_of,
    parse_filter,
    parse_query,
    parse_sort,
)
from conveyor.query._tree import (
    And,
    Compare,
    Exists,
    In,
    Not,
    Or,
    Ref,
    Regex,
)

JSON = FIELDS["payload"]
TEXT = FIELDS["status"]
NUMBER = FIELDS["priority"]
TIME = FIELDS["run_at"]


def ref(name: str, *path: str) -> Ref:
    return Ref(name, path, FIELDS[name])


# ---------------------------------------------------------------------------
# valid filters


def test_none_and_empty_match_everything() -> None:
    assert parse_filter(None).matches_all
    assert parse_filter({}).matches_all
    assert parse_filter(None) == parse_filter({})
    assert not parse_filter({"status": "queued"}).matches_all


def test_a_filter_is_returned_unchanged() -> None:
    f = parse_filter({"status": "queued"})
    assert parse_filter(f) is f


def test_bare_value_is_eq() -> None:
    assert parse_filter({"status": "queued"}).root == Compare(ref("status"), "eq", "queued")
    assert parse_filter({"payload.user.id": 7}).root == Compare(
        ref("payload", "user", "id"), "eq", 7)
    assert parse_filter({"result": None}).root == Compare(ref("result"), "eq", None)


def test_entries_are_anded() -> None:
    root = parse_filter({"status": "queued", "priority": {"$gt": 1, "$lte": 5}}).root
    assert root == And((
        Compare(ref("status"), "eq", "queued"),
        Compare(ref("priority"), "gt", 1),
        Compare(ref("priority"), "lte", 5),
    ))


@pytest.mark.parametrize(("raw", "expected"), [
    ({"priority": {"$eq": 1}}, Compare(ref("priority"), "eq", 1)),
    ({"priority": {"$ne": 1}}, Not(Compare(ref("priority"), "eq", 1))),
    ({"priority": {"$gt": 1.5}}, Compare(ref("priority"), "gt", 1.5)),
    ({"priority": {"$gte": -1}}, Compare(ref("priority"), "gte", -1)),
    ({"action": {"$lt": "m"}}, Compare(ref("action"), "lt", "m")),
    ({"action": {"$lte": "m"}}, Compare(ref("action"), "lte", "m")),
    ({"status": {"$in": ["queued", "running"]}},
     In(ref("status"), ("queued", "running"))),
    ({"status": {"$nin": []}}, Not(In(ref("status"), ()))),
    ({"worker": {"$exists": True}}, Exists(ref("worker"))),
    ({"worker": {"$exists": False}}, Not(Exists(ref("worker")))),
    ({"tags.team": {"$in": ["a", 1, True, None, 2.5]}},
     In(ref("tags", "team"), ("a", 1, True, None, 2.5))),
    ({"priority": {"$not": {"$gt": 5}}}, Not(Compare(ref("priority"), "gt", 5))),
    ({"priority": {"$not": {"$not": {"$gt": 5}}}},
     Not(Not(Compare(ref("priority"), "gt", 5)))),
    ({"$and": [{"status": "queued"}, {"priority": 1}]},
     And((Compare(ref("status"), "eq", "queued"), Compare(ref("priority"), "eq", 1)))),
    ({"$or": [{"status": "queued"}]}, Or((Compare(ref("status"), "eq", "queued"),))),
    ({"$not": {"status": "queued"}}, Not(Compare(ref("status"), "eq", "queued"))),
    ({"$not": {}}, Not(And(()))),
    ({"$and": [{}]}, And(())),
    ({"error.type": "ValueError"}, Compare(ref("error", "type"), "eq", "ValueError")),
    ({"progress.current": {"$gte": 3}}, Compare(ref("progress", "current"), "gte", 3)),
    ({"payload.0": 1}, Compare(ref("payload", "0"), "eq", 1)),
    ({"payload.a b.$c": 1}, Compare(ref("payload", "a b", "$c"), "eq", 1)),
    ({"payload.'; DROP TABLE x; --": 1},
     Compare(ref("payload", "'; DROP TABLE x; --"), "eq", 1)),
    ({"payload.ключ": "значение"}, Compare(ref("payload", "ключ"), "eq", "значение")),
    ({"max_attempts": None}, Compare(ref("max_attempts"), "eq", None)),
    ({"worker": {"$in": [None]}}, In(ref("worker"), (None,))),
])
def test_valid_filters(raw: dict[str, Any], expected: Any) -> None:
    assert parse_filter(raw).root == expected


def test_regex_with_options() -> None:
    root = parse_filter({"payload.name": {"$regex": "^ab", "$options": "im"}}).root
    assert isinstance(root, Regex)
    assert root.ref == ref("payload", "name")
    assert root.pattern == "^ab"
    assert root.flags == re.IGNORECASE | re.MULTILINE
    assert type(root.flags) is int
    assert root.compiled.search("xx\nAB")


def test_regex_options_order_does_not_matter() -> None:
    a = parse_filter({"worker": {"$options": "x", "$regex": "a b"}}).root
    assert isinstance(a, Regex)
    assert a.flags == re.VERBOSE


def test_regex_beside_other_operators() -> None:
    root = parse_filter({"action": {"$regex": "^mail:", "$ne": "mail:spam"}}).root
    assert isinstance(root, And)
    assert isinstance(root.children[0], Regex)
    assert root.children[1] == Not(Compare(ref("action"), "eq", "mail:spam"))


def test_time_fields_take_iso_strings_numbers_and_datetimes() -> None:
    epoch = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
    for operand in ["2024-05-01T12:00:00Z", "2024-05-01T12:00:00", "2024-05-01 12:00:00+00:00",
                    "2024-05-01T14:00:00+02:00", " 2024-05-01T12:00:00Z ", epoch, int(epoch),
                    datetime(2024, 5, 1, 12, 0),
                    datetime(2024, 5, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))]:
        root = parse_filter({"run_at": {"$gte": operand}}).root
        assert root == Compare(ref("run_at"), "gte", epoch), operand
    assert parse_filter({"run_at": "2024-05-01"}).root == Compare(
        ref("run_at"), "eq", datetime(2024, 5, 1, tzinfo=UTC).timestamp())
    assert parse_filter({"finished_at": {"$in": [None, "1970-01-01T00:00:01Z"]}}).root == In(
        ref("finished_at"), (None, 1.0))


def test_status_accepts_every_status_and_enum_members() -> None:
    for status in Status:
        assert parse_filter({"status": status.value}).root == Compare(
            ref("status"), "eq", status.value)
        root = parse_filter({"status": status}).root
        assert isinstance(root, Compare)
        assert type(root.operand) is str
        assert root.operand == status.value


def test_numbers_normalised() -> None:
    root = parse_filter({"priority": {"$in": [1, 1.5, -0.0, 2**63 - 1, -(2**63)]}}).root
    assert root == In(ref("priority"), (1, 1.5, -0.0, 2**63 - 1, -(2**63)))


def test_tuples_are_lists() -> None:
    assert parse_filter({"status": {"$in": ("queued",)}}).root == In(ref("status"), ("queued",))
    assert parse_filter({"$or": ({"status": "queued"},)}).root == Or(
        (Compare(ref("status"), "eq", "queued"),))


def test_filters_are_immutable_and_hashable() -> None:
    f = parse_filter({"status": {"$in": ["queued"]}, "payload.a": {"$regex": "x"}})
    with pytest.raises(AttributeError):
        f.root = And(())  # type: ignore[misc]
    assert hash(f) == hash(parse_filter({"status": {"$in": ["queued"]},
                                         "payload.a": {"$regex": "x"}}))


def test_fields_of() -> None:
    f = parse_filter({
        "status": "queued",
        "$or": [{"payload.user.id": 1}, {"$not": {"tags.team": "a"}}],
        "priority": {"$not": {"$gt": 1}},
    })
    assert fields_of(f) == frozenset({"status", "payload", "tags", "priority"})
    assert fields_of(parse_filter(None)) == frozenset()


def test_where_names_the_filter_in_errors() -> None:
    with pytest.raises(QueryError) as info:
        parse_filter({"nope": 1}, where="concurrency[0].query")
    assert info.value.path == "concurrency[0].query.nope"


# ---------------------------------------------------------------------------
# malformed filters: each names the problem and the place

BAD: list[tuple[Any, str, str]] = [
    # (filter, expected path, words the message must contain)
    ([], "filter", "must be an object, not a list"),
    ("status", "filter", "must be an object, not a string"),
    ({"nope": 1}, "filter.nope", "unknown field 'nope'"),
    ({"user.id": 1}, "filter.user.id", "unknown field 'user' (in 'user.id')"),
    ({"": 1}, "filter.", "unknown field ''"),
    ({1: 2}, "filter", "keys must be strings, not a number"),
    ({"status.x": "queued"}, "filter.status.x", "'status' is a text field and has no sub"),
    ({"priority.x": 1}, "filter.priority.x", "number field"),
    ({"payload.": 1}, "filter.payload.", "empty segment"),
    ({"payload..a": 1}, "filter.payload..a", "empty segment"),
    ({'payload.a"b': 1}, 'filter.payload.a"b', "double quote"),
    ({"payload.a\\b": 1}, "filter.payload.a\\b", "backslash"),
    ({"payload.a\tb": 1}, "filter.payload.a\tb", "control character"),
    ({"priority": {"$gt": [1]}}, "filter.priority.$gt", "$gt needs a number (priority is a "
                                                         "number field), not a list"),
    ({"payload.a": {"$gt": [1]}}, "filter.payload.a.$gt",
     "$gt needs a number or a string, not a list"),
    ({"payload.a": {"$lt": {"b": 1}}}, "filter.payload.a.$lt", "not an object"),
    ({"payload.a": {"$gte": True}}, "filter.payload.a.$gte", "not a boolean (true)"),
    ({"payload.a": {"$lte": None}}, "filter.payload.a.$lte", "not null"),
    ({"payload.a": {"$eq": [1]}}, "filter.payload.a.$eq",
     "$eq needs a string, number, boolean or null, not a list"),
    ({"payload.a": {"$ne": {"b": 1}}}, "filter.payload.a.$ne", "not an object"),
    ({"payload.a": [1, 2]}, "filter.payload.a", "cannot be compared with a list; to match any"),
    ({"payload.a": {}}, "filter.payload.a", "empty condition"),
    ({"payload.a": {"b": 1}}, "filter.payload.a",
     "cannot be compared with an object: operands are strings, numbers, booleans or null; "
     "to test a key inside it, use a path such as 'payload.a.b'"),
    ({"status": {"x": 1}}, "filter.status", "cannot be compared with an object"),
    ({"payload.a": {"$gt": 1, "b": 2}}, "filter.payload.a",
     "mixes operators ($gt) with plain keys ('b')"),
    ({"payload.a": {"$foo": 1}}, "filter.payload.a.$foo", "unknown operator $foo; valid"),
    ({"payload.a": {"$and": [{}]}}, "filter.payload.a.$and", "goes at filter level"),
    ({"payload.a": {"$in": "abc"}}, "filter.payload.a.$in", "$in needs a list of values, "
                                                            "not a string ('abc')"),
    ({"payload.a": {"$nin": 3}}, "filter.payload.a.$nin", "$nin needs a list of values"),
    ({"payload.a": {"$in": [1, [2]]}}, "filter.payload.a.$in[1]",
     "each item of $in needs a string, number, boolean or null, not a list"),
    ({"status": {"$in": ["queued", "bogus"]}}, "filter.status.$in[1]",
     "'bogus' is not a status; expected one of queued, running, succeeded, failed, aborted"),
    ({"status": "done"}, "filter.status", "'done' is not a status"),
    ({"status": {"$gt": "zzz"}}, "filter.status.$gt", "'zzz' is not a status"),
    ({"worker": 5}, "filter.worker",
     "a condition on worker needs a string or null (worker is a text field), not a number (5)"),
    ({"worker": True}, "filter.worker", "not a boolean"),
    ({"worker": {"$gt": None}}, "filter.worker.$gt", "$gt needs a string (worker is a text "
                                                     "field), not null"),
    ({"priority": "high"}, "filter.priority", "priority is a number field), not a string"),
    ({"priority": True}, "filter.priority", "not a boolean"),
    ({"attempts": {"$in": [1, "2"]}}, "filter.attempts.$in[1]", "not a string ('2')"),
    ({"run_at": "yesterday"}, "filter.run_at", "'yesterday' is not an ISO-8601 time"),
    ({"run_at": {"$lt": "2024-13-01"}}, "filter.run_at.$lt", "is not an ISO-8601 time"),
    ({"run_at": {"$lt": True}}, "filter.run_at.$lt", "time field"),
    ({"payload.a": {"$exists": 1}}, "filter.payload.a.$exists",
     "$exists needs true or false, not a number (1)"),
    ({"payload.a": {"$exists": "yes"}}, "filter.payload.a.$exists", "$exists needs true"),
    ({"payload.a": {"$regex": "("}}, "filter.payload.a.$regex",
     "invalid regular expression '('"),
    ({"payload.a": {"$regex": 5}}, "filter.payload.a.$regex", "$regex needs a pattern string"),
    # a set Python flags as ambiguous: the regex engine (memory, SQLite) read
    # [[:alpha:]] as a POSIX class, Python's re and PostgreSQL as "[" or ":" ... then "]"
    ({"payload.a": {"$regex": "[[:alpha:]]"}}, "filter.payload.a.$regex",
     "is ambiguous (Possible nested set at position 1)"),
    ({"payload.a": {"$regex": "[a&&b]"}}, "filter.payload.a.$regex",
     "is ambiguous (Possible set intersection"),
    ({"payload.a": {"$regex": "a", "$options": "iq"}}, "filter.payload.a.$options",
     "unknown $options flag 'q'"),
    ({"payload.a": {"$regex": "a", "$options": 1}}, "filter.payload.a.$options",
     "$options needs a string"),
    ({"payload.a": {"$options": "i"}}, "filter.payload.a.$options",
     "$options only goes beside a $regex"),
    ({"priority": {"$regex": "1"}}, "filter.priority.$regex",
     "$regex matches text, but priority is a number field"),
    ({"run_at": {"$regex": "1"}}, "filter.run_at.$regex", "time field"),
    ({"payload.a": {"$not": 5}}, "filter.payload.a.$not", "$not needs an object of operators"),
    ({"payload.a": {"$not": {}}}, "filter.payload.a.$not", "$not needs an object of operators"),
    ({"payload.a": {"$not": {"b": 1}}}, "filter.payload.a.$not", "$not needs an object"),
    ({"payload.a": {"$not": {"$gt": []}}}, "filter.payload.a.$not.$gt", "not a list"),
    ({"$and": []}, "filter.$and", "$and needs at least one filter"),
    ({"$or": {"a": 1}}, "filter.$or", "$or needs a list of filters, not an object"),
    ({"$or": [{"status": "queued"}, 3]}, "filter.$or[1]", "must be an object, not a number"),
    ({"$and": [{"$or": [{"nope": 1}]}]}, "filter.$and[0].$or[0].nope", "unknown field"),
    ({"$not": [{"status": "queued"}]}, "filter.$not", "must be an object, not a list"),
    ({"$not": {"priority": {"$gt": "x"}}}, "filter.$not.priority.$gt", "not a string"),
    ({"$nor": []}, "filter.$nor", "unknown operator $nor"),
    ({"$where": "1"}, "filter.$where", "unknown operator $where"),
    ({"$gt": 1}, "filter.$gt", "$gt compares a field, so it goes inside a field's condition"),
    ({"payload.a": float("nan")}, "filter.payload.a", "needs a finite number, not nan"),
    ({"payload.a": float("-inf")}, "filter.payload.a", "needs a finite number, not -inf"),
    ({"payload.a": 2**63}, "filter.payload.a", "out of range"),
    ({"payload.a": -(2**63) - 1}, "filter.payload.a", "out of range"),
    ({"payload.a": 10**5000}, "filter.payload.a", "out of range"),
    ({"payload.a": b"x"}, "filter.payload.a", "not a Python bytes"),
    ({"payload.a": {1, 2}}, "filter.payload.a", "not a Python set"),
    ({"payload.a": datetime(2024, 1, 1)}, "filter.payload.a", "not a Python datetime"),
    ({"payload.a": "\ud800"}, "filter.payload.a", "not valid Unicode"),
    ({"payload.\udfff": 1}, "filter", "not valid Unicode"),
    ({"payload.a": {"$regex": "\ud800"}}, "filter.payload.a.$regex", "not valid Unicode"),
]


@pytest.mark.parametrize(("raw", "path", "words"), BAD,
                         ids=[str(i) for i in range(len(BAD))])
def test_malformed_filters(raw: Any, path: str, words: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_filter(raw)
    error = info.value
    assert error.path == path
    assert words in error.reason
    assert str(error) == f"{path}: {error.reason}"
    assert isinstance(error, ValidationError)
    assert isinstance(error, ValueError)


def test_unknown_field_lists_the_valid_fields() -> None:
    with pytest.raises(QueryError) as info:
        parse_filter({"prio": 1})
    for name in FIELDS:
        assert name in str(info.value)


def test_nesting_and_size_limits() -> None:
    deep: dict[str, Any] = {"status": "queued"}
    for _ in range(32):
        deep = {"$not": deep}
    parse_filter(deep)
    with pytest.raises(QueryError, match="nests more than 32 levels"):
        parse_filter({"$not": deep})
    nested: dict[str, Any] = {"$gt": 1}
    for _ in range(40):
        nested = {"$not": nested}
    with pytest.raises(QueryError, match="nests more than"):
        parse_filter({"priority": nested})
    parse_filter({"priority": {"$in": list(range(2000))}})  # the documented limit: 2000 items
    with pytest.raises(QueryError, match="too large") as info:
        parse_filter({"priority": {"$in": list(range(2001))}})
    assert info.value.path == "filter.priority.$in"
    with pytest.raises(QueryError, match="too large"):
        parse_filter({"$or": [{"priority": i} for i in range(2001)]})


# ---------------------------------------------------------------------------
# sorts


@pytest.mark.parametrize(("raw", "expected"), [
    (None, ()),
    ([], ()),
    ({}, ()),
    ("priority", (SortKey("priority"),)),
    ("-priority", (SortKey("priority", descending=True),)),
    ("+priority", (SortKey("priority"),)),
    ("payload.user.id", (SortKey("payload", ("user", "id")),)),
    ("-tags.team", (SortKey("tags", ("team",), descending=True),)),
    (["priority", "-created_at"],
     (SortKey("priority"), SortKey("created_at", descending=True))),
    (["priority", -1], (SortKey("priority", descending=True),)),
    (("priority", "desc"), (SortKey("priority", descending=True),)),
    ([["priority", 1], ["run_at", -1]],
     (SortKey("priority"), SortKey("run_at", descending=True))),
    ([("priority", "ASC"), ("run_at", "Descending")],
     (SortKey("priority"), SortKey("run_at", descending=True))),
    ({"priority": 1, "payload.a": -1},
     (SortKey("priority"), SortKey("payload", ("a",), descending=True))),
    ({"priority": "asc", "id": "desc"},
     (SortKey("priority"), SortKey("id", descending=True))),
    ([{"priority": -1}, "id"], (SortKey("priority", descending=True), SortKey("id"))),
    (SortKey("priority"), (SortKey("priority"),)),
    ([SortKey("priority"), "-id"], (SortKey("priority"), SortKey("id", descending=True))),
    (["priority", "status"], (SortKey("priority"), SortKey("status"))),
    ("-priority,created_at", (SortKey("priority", descending=True), SortKey("created_at"))),
    (" priority , -payload.a ", (SortKey("priority"), SortKey("payload", ("a",), True))),
    ([["payload.a,b", 1]], (SortKey("payload", ("a,b",)),)),
])
def test_valid_sorts(raw: Any, expected: tuple[SortKey, ...]) -> None:
    assert parse_sort(raw) == expected


def test_sort_key_properties() -> None:
    key = SortKey("payload", ["user", "id"], descending=True)  # type: ignore[arg-type]
    assert key.path == ("user", "id")
    assert key.dotted == "payload.user.id"
    assert str(key) == "-payload.user.id"
    assert str(SortKey("priority")) == "priority"


BAD_SORTS: list[tuple[Any, str, str]] = [
    (5, "sort", "sort must be a field name, a list or an object, not a number"),
    (True, "sort", "not a boolean"),
    ("", "sort", "a sort field name is empty"),
    ("-", "sort", "a sort field name is empty"),
    ("nope", "sort", "unknown field 'nope'"),
    ("priority,,id", "sort", "every field must be named (comma-separated"),
    ("priority,", "sort", "every field must be named"),
    ("priority,nope", "sort[1]", "unknown field 'nope'"),
    ("-status.x", "sort", "has no sub-fields"),
    ("payload..a", "sort", "empty segment"),
    (["priority", 2], "sort", "a sort direction is 1, -1, 'asc' or 'desc', not a number (2)"),
    (["priority", "sideways"], "sort[1]", "unknown field 'sideways'"),
    ([["priority", True]], "sort[0]", "not a boolean"),
    ([["priority", 1, 2]], "sort[0]", "a sort pair is [field, 1 or -1], not a list of 3"),
    ([[1, 1]], "sort[0]", "a sort field must be a string, not a number"),
    ([5], "sort[0]", "a sort item is a field name"),
    ([{"a": 1, "b": 1}], "sort[0]", "a sort item is a field name"),
    ({"priority": 0}, "sort.priority", "a sort direction is 1, -1"),
    ({"priority": None}, "sort.priority", "not null"),
    ({"nope": 1}, "sort.nope", "unknown field 'nope'"),
    ({1: 1}, "sort", "keys must be strings"),
    (["\ud800"], "sort[0]", "not valid Unicode"),
]


@pytest.mark.parametrize(("raw", "path", "words"), BAD_SORTS,
                         ids=[str(i) for i in range(len(BAD_SORTS))])
def test_malformed_sorts(raw: Any, path: str, words: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_sort(raw)
    assert info.value.path == path
    assert words in info.value.reason


@pytest.mark.parametrize("bad", [
    lambda: SortKey("nope"),
    lambda: SortKey("status", ("x",)),
    lambda: SortKey("payload", ("",)),
    lambda: SortKey("payload", "ab"),  # type: ignore[arg-type]
    lambda: SortKey("priority", descending=1),  # type: ignore[arg-type]
    lambda: SortKey(5),  # type: ignore[arg-type]
])
def test_sort_keys_check_themselves(bad: Any) -> None:
    with pytest.raises(QueryError):
        bad()


# ---------------------------------------------------------------------------
# whole queries


def test_parse_query() -> None:
    q = parse_query({"status": "queued"}, "-priority", 10, 5)
    assert q == Query(parse_filter({"status": "queued"}),
                      (SortKey("priority", descending=True),), 10, 5)
    assert parse_query() == Query()
    assert parse_query().filter.matches_all
    assert parse_query(skip=0).skip == 0
    assert parse_query(limit=0).limit == 0
    assert isinstance(parse_query().filter, Filter)


@pytest.mark.parametrize(("kwargs", "path", "words"), [
    ({"limit": -1}, "limit", "limit must be null or an integer >= 0, not -1"),
    ({"limit": True}, "limit", "not True"),
    ({"limit": 1.0}, "limit", "not 1.0"),
    ({"limit": "10"}, "limit", "not '10'"),
    ({"skip": -1}, "skip", "skip must be an integer >= 0, not -1"),
    ({"skip": False}, "skip", "not False"),
    ({"skip": 0.5}, "skip", "not 0.5"),
    ({"skip": None}, "skip", "skip must be an integer >= 0, not None"),
    ({"filter": {"nope": 1}}, "filter.nope", "unknown field"),
    ({"filter": "status"}, "filter", "must be an object"),
    ({"sort": "nope"}, "sort", "unknown field"),
])
def test_malformed_queries(kwargs: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_query(**kwargs)
    assert info.value.path == path
    assert words in info.value.reason


def test_query_checks_direct_construction() -> None:
    with pytest.raises(QueryError):
        Query(limit=-1)
    with pytest.raises(QueryError):
        Query(filter={"status": "queued"})  # type: ignore[arg-type]
    with pytest.raises(QueryError):
        Query(sort=("priority",))  # type: ignore[arg-type]
    assert Query(sort=[SortKey("id")]).sort == (SortKey("id"),)  # type: ignore[arg-type]
