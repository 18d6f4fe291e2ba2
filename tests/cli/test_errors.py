"""Bad input: one clear line on stderr, the right exit code, no traceback, nothing written.

Every case runs the real CLI on its own copy of a seeded database; the cases run
concurrently (a module fixture) and each test checks the answer of one case.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from ._support import Result, add, assert_error, cli, find, run

MISSING_ID = "01a00000-0000-7000-8000-000000000000"


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int
    needles: tuple[str, ...]
    input: str | None = None
    db: str | None = None  # a URL with {tmp}; default: the case's copy of the seeded file


CASES: dict[str, Case] = {
    # JSON input
    "payload-malformed": Case(("add", "a:b", '{"to": '), 2, ("payload is not valid JSON",)),
    "payload-nan": Case(("add", "a:b", '{"x": NaN}'), 2, ("payload is not valid JSON", "NaN")),
    "payload-long-int": Case(("add", "a:b", "1" * 4301), 2,
                             ("payload holds an integer of more than 4300 digits",)),
    "filter-long-int": Case(("ls", '{"priority": ' + "1" * 4301 + "}"), 2,
                            ("filter holds an integer of more than 4300 digits",)),
    "payload-file-missing": Case(("add", "a:b", "@{tmp}/nope.json"), 2,
                                 ("cannot read payload file", "nope.json")),
    "filter-malformed": Case(("ls", '{"status": '), 2, ("filter is not valid JSON",)),
    "filter-unknown-operator": Case(("ls", '{"priority": {"$near": 1}}'), 2,
                                    ("filter.priority", "$near")),
    "filter-not-an-object": Case(("ls", "[1, 2]"), 2, ("filter: a filter must be an object, "
                                                       "not a list",)),
    "filter-a-number": Case(("ls", "3"), 2, ("a filter must be an object, not a number",)),
    "sort-unknown-field": Case(("ls", "--sort", "-colour"), 2, ("sort", "unknown field")),
    # priorities: >= 0 from the command line
    "priority-negative": Case(("add", "a:b", "--priority", "-1"), 2,
                              ("--priority", ">= 0", "'-1'")),
    "priority-not-a-number": Case(("add", "a:b", "--priority", "high"), 2,
                                  ("--priority", "must be a number", "'high'")),
    "priority-nan": Case(("add", "a:b", "--priority", "nan"), 2, ("--priority", "finite")),
    "prioritize-negative": Case(("prioritize", "{queued}", "-5"), 2, ("PRIORITY", ">= 0")),
    # other options
    "delay-negative": Case(("add", "a:b", "--delay", "-3"), 2, ("--delay", ">= 0")),
    "delay-unknown-unit": Case(("add", "a:b", "--delay", "5x"), 2, ("--delay", "30m", "'5x'")),
    "delay-two-units": Case(("add", "a:b", "--delay", "1h30m"), 2, ("--delay", "'1h30m'")),
    "timeout-zero": Case(("add", "a:b", "--timeout", "0s"), 2, ("--timeout", "> 0", "'0s'")),
    "tag-without-value": Case(("add", "a:b", "--tag", "team"), 2, ("--tag must be key=value",)),
    "tag-with-dot": Case(("add", "a:b", "--tag", "a.b=1"), 2, ("must not contain '.'",)),
    "action-invalid": Case(("add", "bad action!"), 2, ("invalid action name",)),
    "command-unknown": Case(("launch",), 2, ("No such command 'launch'",)),
    # unknown task ids
    "show-unknown-id": Case(("show", MISSING_ID), 2, (f"no task with id {MISSING_ID}",)),
    "tail-unknown-id": Case(("tail", MISSING_ID), 2, (f"no task with id {MISSING_ID}",)),
    "abort-unknown-id": Case(("abort", MISSING_ID), 2, (f"no task with id {MISSING_ID}",)),
    "prioritize-unknown-id": Case(("prioritize", MISSING_ID, "1"), 2,
                                  (f"no task with id {MISSING_ID}",)),
    "delete-unknown-id": Case(("delete", "{aborted}", MISSING_ID), 2,
                              (f"no task with id {MISSING_ID}",)),
    # an id with a space around it is quoted, else it reads as an id that exists
    "show-id-with-space": Case(("show", f" {MISSING_ID}"), 2,
                               (f"no task with id ' {MISSING_ID}'",)),
    "show-id-with-inner-space": Case(("show", "a b"), 2, ("no task with id 'a b'",)),
    "delete-ids-with-tab": Case(("delete", f"{MISSING_ID}\t", "x"), 2,
                                (f"no tasks with ids '{MISSING_ID}\\t', x",)),
    # storage that cannot be used
    "db-in-missing-directory": Case(("add", "a:b"), 1, ("does not exist", "missing"),
                                    db="sqlite:///{tmp}/missing/dir/tasks.db"),
    "db-missing-for-ls": Case(("ls",), 1, ("no database", "nothing.db"),
                              db="sqlite:///{tmp}/nothing.db"),
    "db-not-a-database": Case(("add", "a:b"), 1, ("file is not a database",),
                              db="sqlite:///{tmp}/garbage.db"),
    "db-unknown-scheme": Case(("add", "a:b"), 2, ("unknown storage URL",), db="mongo://x/y"),
    "db-unknown-scheme-hides-password": Case(
        ("ls",), 2, ("unknown storage URL", "'postgresql+psycopg://ann:***@db.example/x'"),
        db="postgresql+psycopg://ann:s3cret@db.example/x"),
    "serve-db-in-missing-directory": Case(("serve", "--port", "0", "--insecure"), 1,
                                          ("does not exist", "missing"),
                                          db="sqlite:///{tmp}/missing/dir/tasks.db"),
    "demo-refused-connection": Case(("demo", "--duration", "1"), 1,
                                    ("cannot connect to PostgreSQL", "***"),
                                    db="postgresql://ann:s3cret@127.0.0.1:1/x"),
}


@dataclass
class Outcome:
    case: Case
    result: Result
    url: str
    tmp: Path


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("errors")
    seed_url = f"sqlite:///{root / 'seed.db'}"
    queued = add(seed_url, "mail:send", {"to": "ann"})
    aborted = add(seed_url, "mail:send", {"to": "bob"})
    run(lambda app: app.abort(aborted.id), seed_url)
    ids = {"{queued}": queued.id, "{aborted}": aborted.id}

    def fill(text: str, tmp: Path) -> str:
        for key, value in {**ids, "{tmp}": str(tmp)}.items():
            text = text.replace(key, value)
        return text

    def one(name: str) -> Outcome:
        case = CASES[name]
        tmp = root / name
        tmp.mkdir()
        shutil.copy(root / "seed.db", tmp / "tasks.db")
        (tmp / "garbage.db").write_text("this is not a database\n")
        url = fill(case.db or "sqlite:///{tmp}/tasks.db", tmp)
        args = [fill(a, tmp) for a in case.args]
        result = cli(*args, "--db", url, input=case.input, cwd=tmp)
        return Outcome(case, result, url, tmp)

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(CASES, pool.map(one, CASES), strict=True))


@pytest.fixture(scope="module")
def seeded(outcomes: dict[str, Outcome]) -> list[tuple[str, int]]:
    """The (id, version) of every task of the seed database."""
    seed = next(iter(outcomes.values())).tmp.parent / "seed.db"
    return [(t.id, t.version) for t in find(f"sqlite:///{seed}")]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_with_one_line(name: str, outcomes: dict[str, Outcome],
                                            seeded: list[tuple[str, int]]) -> None:
    outcome = outcomes[name]
    case = outcome.case
    assert_error(outcome.result, case.code, *case.needles)
    assert outcome.result.out == "", outcome.result
    # nothing was written: the case's copy of the database is unchanged ...
    copy = outcome.tmp / "tasks.db"
    assert [(t.id, t.version) for t in find(f"sqlite:///{copy}")] == seeded
    # ... and no other database or folder was created
    assert not (outcome.tmp / "missing").exists()
    assert not (outcome.tmp / "nothing.db").exists()
    assert not (outcome.tmp / "conveyor.db").exists()
