"""The query language: Mongo-style filters, sorts and windows over tasks.

One parser validates a raw filter (a JSON object) into an immutable
:class:`Filter` tree; the tree is evaluated in Python (:func:`matches`, for
the memory backend and live queries) and compiled to parameterised SQL
(:func:`compile_sqlite`). Both give the same answers on every filter; the
property tests in ``tests/query`` compare them. The user reference is
``docs/query.md``.

Filters
    ``{field_or_path: condition, ...}`` is the AND of its entries; ``$and`` and
    ``$or`` take non-empty lists of filters, ``$not`` one filter. ``None`` and
    ``{}`` match every task.

Fields and paths
    Any name of :data:`conveyor.model.FIELDS`. The JSON fields (``payload``,
    ``tags``, ``result``, ``error``, ``progress``) may be followed by a dotted
    path of object keys: ``payload.user.id``. A digit segment is a key, not an
    index; stepping through anything but an object gives "missing". Segments
    may not be empty or hold ``"``, ``\\`` or control characters. The
    evaluator reads ``error`` and ``progress`` as their ``to_json()``, the
    other fields as stored (``status`` as its text, times as epoch floats).

Conditions
    A bare scalar means ``$eq``; otherwise an object of operators, all of which
    must hold: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $regex`` (with
    ``$options``, a subset of ``imsx``) and ``$not`` (an object of operators).

Missing is null
    A JSON null, a missing key and a NULL column are all "missing".
    ``$eq: null`` matches missing values, ``$exists: true`` present ones.

Types are strict
    Operands are JSON scalars (string, number, boolean, null). A value equals an
    operand only if both have the same JSON type and are equal; numbers compare
    by value (``1 == 1.0``) and booleans are not numbers. ``$gt``/``$gte``/
    ``$lt``/``$lte`` take a number or a string and are never satisfied by a
    value of another type or a missing one; strings compare by code point.
    ``$ne``, ``$nin`` and ``$not`` are exact negations, so they match missing
    values. ``$regex`` only matches strings (Python's syntax, as
    :func:`re.search`; a match that runs over a second fails the query).
    Text fields take string operands, number fields numbers, time fields
    numbers or ISO-8601 strings (naive means UTC), each also null where
    equality is meant; ``status`` operands must be statuses.

Sort, limit, skip
    Values sort as missing/null < false < true < numbers < strings < objects
    and arrays (which tie); descending reverses that; ties always end with
    ``id`` ascending. ``limit`` is None or an int >= 0, ``skip`` an int >= 0.

Errors
    Anything malformed raises :class:`conveyor.errors.QueryError` whose
    ``path`` says where (``filter.$or[1].priority.$gt``) and whose text says
    what and where.
"""

from __future__ import annotations

from ._evaluate import apply_query, matches, sort_tasks
from ._parse import parse_filter, parse_query, parse_sort
from ._postgres import compile_postgres, compile_sort_postgres
from ._sqlite import compile_sort_sqlite, compile_sqlite, register_sqlite_functions
from ._tree import Filter, Query, SortKey, all_of, comparisons, fields_of

__all__ = [
    "Filter",
    "Query",
    "SortKey",
    "all_of",
    "apply_query",
    "comparisons",
    "compile_postgres",
    "compile_sort_postgres",
    "compile_sort_sqlite",
    "compile_sqlite",
    "fields_of",
    "matches",
    "parse_filter",
    "parse_query",
    "parse_sort",
    "register_sqlite_functions",
    "sort_tasks",
]
